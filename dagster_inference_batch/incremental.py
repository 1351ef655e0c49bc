"""Incremental jobs: send each distinct request once, and answer the rest from before.

Before upload, ``plan_sending`` splits a job's rows by fingerprint: rows whose request
has an answer in the store (``answer_store.py``) are not sent, and of the rows that ask
the same thing only the first is sent. A manifest (``job_manifest.py``) records every
row. When the job's results are read, ``answers_for_unsent`` turns the rows not sent into
result files like the provider's: a duplicate takes the answer of the row sent for it
(``source`` ``batch``), a row answered before takes the stored line (``source`` ``store``,
with the original ``batch_id``). The successful answers of the batches are stored for the
next run; a failed answer never is.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson

from .answer_store import AnswerStore, StoredAnswer, answer_problem, status_problem
from .job_manifest import Manifest
from .request_lines import EncodedRequests
from .results import ResultFile, answer_fields
from .structured_output import StructuredOutput

REUSED_ATTEMPT = 0
"""The attempt number of rows answered without a batch of this job."""


@dataclass(frozen=True)
class SendPlan:
    """Which rows of a job go to the provider.

    Attributes:
        send: The lines to upload: each fingerprint without a stored answer, once.
        manifest: Every row, with whether it is sent.
        from_store: Rows answered by the store.
        duplicates: Rows not sent because an identical row is.
        tokens_saved: ``input_tokens`` and ``output_tokens`` the stored answers cost
            when they were first run.
    """

    send: EncodedRequests
    manifest: Manifest
    from_store: int
    duplicates: int
    tokens_saved: dict[str, int]

    @property
    def reused(self) -> int:
        """Rows answered without being sent."""
        return self.from_store + self.duplicates


def plan_sending(
    encoded: EncodedRequests,
    store: AnswerStore,
    *,
    max_age: float | None = None,
    refresh: bool = False,
) -> SendPlan:
    """Split ``encoded`` into the lines to send and the rows answered already.

    Args:
        encoded: Every row's request line.
        store: The answers kept so far.
        max_age: Ignore stored answers older than this many seconds.
        refresh: Ignore the store (duplicates are still sent once).

    Returns:
        The plan.

    Example:
        >>> import tempfile
        >>> from dagster_inference_batch import build_requests
        >>> store = AnswerStore(tempfile.mkdtemp(), namespace="demo")
        >>> rows = pd.DataFrame({"custom_id": ["a", "b", "c"], "prompt": ["Hi", "Yo", "Hi"]})
        >>> plan = plan_sending(build_requests(rows, model="m", prompt_column="prompt"), store)
        >>> plan.send.custom_ids, plan.duplicates, plan.manifest.sent
        (['a', 'b'], 1, [True, True, False])
    """
    prints = encoded.fingerprints
    stored = {} if refresh else store.lookup(set(prints), max_age=max_age)
    first: dict[str, int] = {}
    sent = [False] * len(prints)
    for position, fingerprint in enumerate(prints):
        if fingerprint not in stored and fingerprint not in first:
            first[fingerprint] = position
            sent[position] = True
    reused = [stored[f] for f in prints if f in stored]
    tokens_saved = {
        "input_tokens": sum(a.input_tokens or 0 for a in reused),
        "output_tokens": sum(a.output_tokens or 0 for a in reused),
    }
    return SendPlan(
        send=encoded.subset(list(first.values())),
        manifest=Manifest(list(encoded.custom_ids), list(prints), sent),
        from_store=len(reused),
        duplicates=len(prints) - len(first) - len(reused),
        tokens_saved=tokens_saved,
    )


def answers_for_unsent(
    manifest: Manifest,
    files: list[ResultFile],
    store: AnswerStore,
    folder: Path,
    structured: StructuredOutput | None = None,
) -> tuple[list[ResultFile], list[str]]:
    """Result files answering the rows not sent; the batches' new answers stored.

    Args:
        manifest: The job's rows.
        files: The job's downloaded output and error files.
        store: The answer store.
        folder: Where to write the files made.
        structured: The answers' expected shape: an answer that does not validate is not
            stored, so the next run asks again instead of reusing it.

    Returns:
        The files (one per original batch, attempt ``REUSED_ATTEMPT``) and the
        custom_ids answered from the store.
    """
    by_id = dict(zip(manifest.custom_ids, manifest.fingerprints, strict=True))
    fresh = dict(_successful_answers(files, by_id, structured))
    unsent = manifest.unsent()
    known = store.lookup({f for _, _, f in unsent if f not in fresh} | set(fresh))
    store.put((answer for f, answer in fresh.items() if f not in known), checked=True)
    lines: dict[str, list[bytes]] = defaultdict(list)
    from_store: list[str] = []
    for _, custom_id, fingerprint in unsent:
        answer = fresh.get(fingerprint) or known.get(fingerprint)
        if answer is None:
            continue  # stays missing: the store lost it (see the results' status)
        if fingerprint not in fresh:
            from_store.append(custom_id)
        line = orjson.loads(answer.line)
        line["custom_id"] = custom_id
        lines[answer.batch_id].append(orjson.dumps(line))
    made = []
    for number, (batch_id, batch_lines) in enumerate(lines.items()):
        path = folder / f"reused-{number}.jsonl"
        path.write_bytes(b"\n".join(batch_lines) + b"\n")
        made.append(ResultFile(path, "output", batch_id, REUSED_ATTEMPT))
    return made, from_store


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: Any = msgspec.UNSET
    completion_tokens: Any = msgspec.UNSET
    input_tokens: Any = None
    output_tokens: Any = None


class _Body(msgspec.Struct, gc=False):
    usage: _Usage | None = None


class _Response(msgspec.Struct, gc=False):
    status_code: Any = None
    body: _Body | None = None


class _Line(msgspec.Struct, gc=False):
    """What storing a line needs of it; the answer itself is skipped, not built."""

    custom_id: Any = None
    response: _Response | None = None
    error: Any = None


_DECODE_LINE = msgspec.json.Decoder(_Line).decode


def _tokens(usage: _Usage | None) -> tuple[Any, Any]:
    """(input, output) tokens: ``prompt_tokens`` / ``completion_tokens``, else the
    Responses API's ``input_tokens`` / ``output_tokens``."""
    if usage is None:
        return None, None
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    return (
        usage.input_tokens if prompt is msgspec.UNSET else prompt,
        usage.output_tokens if completion is msgspec.UNSET else completion,
    )


def _storable(line: bytes, structured: StructuredOutput | None) -> tuple[Any, Any, Any] | None:
    """``(custom_id, input tokens, output tokens)`` of a line worth storing, or None.

    Without ``structured`` the line is decoded into only the fields that decide it
    (``answer_store.status_problem``); with it, or for a line of another shape, it is
    parsed whole."""
    if structured is None:
        try:
            record = _DECODE_LINE(line)
        except msgspec.MsgspecError:
            pass
        else:
            status = None if record.response is None else record.response.status_code
            if status_problem(status, record.error) is not None:
                return None
            body = record.response.body
            return (record.custom_id, *_tokens(None if body is None else body.usage))
    parsed = orjson.loads(line)
    if answer_problem(parsed, line) is not None:
        return None
    body = parsed["response"].get("body") or {}
    if structured is not None and structured.check(answer_fields(body)[0]):
        return None  # invalid_output: not worth keeping
    usage = body.get("usage") or {}
    return (
        parsed.get("custom_id"),
        usage.get("prompt_tokens", usage.get("input_tokens")),
        usage.get("completion_tokens", usage.get("output_tokens")),
    )


def _successful_answers(
    files: list[ResultFile], fingerprints: dict[str, str], structured: StructuredOutput | None
) -> Iterator[tuple[str, StoredAnswer]]:
    """(fingerprint, answer) for each successful (and, with ``structured``, valid) line of
    the output files."""
    now = time.time()
    for file in files:
        if file.kind != "output":
            continue
        with file.path.open("rb") as handle:
            for raw in handle:
                line = raw.rstrip(b"\r\n")
                if not line:
                    continue
                facts = _storable(line, structured)
                fingerprint = None if facts is None else fingerprints.get(str(facts[0]))
                if fingerprint is None:
                    continue
                yield (
                    fingerprint,
                    StoredAnswer(
                        fingerprint=fingerprint,
                        line=line,
                        batch_id=file.batch_id,
                        stored_at=now,
                        input_tokens=facts[1],
                        output_tokens=facts[2],
                    ),
                )
