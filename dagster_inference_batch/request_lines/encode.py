"""Ready request lines (dicts, a DataFrame or a JSONL file) checked and encoded.

This is the generic path: each line is checked on its own and encoded with orjson.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from dagster_inference_batch.errors import InvalidBatchInput

from .encoded import EncodedRequests
from .frame_terms import FrameTerms, in_frame_terms
from .inputs import body_input_problem, embedding_input_count
from .validate import (
    CHAT_ENDPOINT,
    DEFAULT_MAX_LINE_BYTES,
    EMBEDDINGS_ENDPOINT,
    ENDPOINTS,
    Problems,
    check_custom_ids,
    check_endpoint,
    column_ids,
    dumps_checked,
    where,
)

_LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})


class _OneUrl:
    """The one url a batch takes: the ``endpoint`` argument, or else the first line's url."""

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        self.first_line = 0

    def check(self, url: object, name: str, line: int, problems: Problems) -> bool:
        """Report a url that is not an endpoint or not the batch's one; True if fine."""
        if url not in ENDPOINTS:
            problems.add(f"{name}: unsupported url {url!r}: use one of {list(ENDPOINTS)}", line)
            return False
        if self.endpoint is None:
            self.endpoint, self.first_line = str(url), line
        elif url != self.endpoint:
            origin = f"line {self.first_line}" if self.first_line else "the endpoint argument"
            problems.add(
                f"{name}: url {url!r} differs from {self.endpoint!r} ({origin}); "
                "one batch job takes one url",
                line,
            )
            return False
        return True


def _check_line(
    req: Mapping[str, Any], name: str, line: int, one_url: _OneUrl, problems: Problems
) -> bool:
    """Check one line's keys, method, url and body; True if none is wrong."""
    ok = True
    extra = sorted(map(str, set(req) - _LINE_KEYS))
    if extra:
        problems.add(f"{name}: unexpected key(s) {extra}", line)
        ok = False
    method = req.get("method", "POST")
    if method != "POST":
        problems.add(f"{name}: method must be POST, got {method!r}", line)
        ok = False
    url = req.get("url", one_url.endpoint or CHAT_ENDPOINT)
    url_ok = one_url.check(url, name, line, problems)
    body = req.get("body")
    model = body.get("model") if isinstance(body, Mapping) else None
    if not isinstance(body, Mapping):
        problems.add(f"{name}: body must be a JSON object, got {type(body).__name__}", line)
        ok = False
    elif not isinstance(model, str) or not model:
        problems.add(f"{name}: body lacks a string model", line)
        ok = False
    elif url_ok and (problem := body_input_problem(str(url), body)):
        problems.add(f"{name}: {problem}", line)
        ok = False
    return ok and url_ok


def _objects_only(numbered: list[tuple[int, Any]], problems: Problems) -> list[tuple[int, Any]]:
    """The numbered lines that are JSON objects; the others are reported."""
    if not numbered:
        problems.add("no request lines: the input is empty")
    for line, req in numbered:
        if not isinstance(req, Mapping):
            problems.add(f"{where(line)}: request line is not a JSON object", line)
    return [(line, req) for line, req in numbered if isinstance(req, Mapping)]


def encode_numbered_lines(
    numbered: list[tuple[int, Any]], endpoint: str | None, max_line_bytes: int
) -> EncodedRequests:
    """Validate and encode request lines given with their line numbers.

    Args:
        numbered: ``(1-based line number, request dict)`` pairs.
        endpoint: The url every line posts to; None takes the first line's url.
        max_line_bytes: The largest encoded line allowed, newline excluded.

    Returns:
        The validated lines.

    Raises:
        InvalidBatchInput: Naming each bad line and the rule it breaks.
    """
    problems = Problems()
    numbered = _objects_only(numbered, problems)
    ids = [req.get("custom_id") for _, req in numbered]
    bad_ids = check_custom_ids(ids, problems, [line for line, _ in numbered])
    one_url = _OneUrl(endpoint)
    custom_ids: list[str] = []
    lines: list[bytes] = []
    models: list[str] = []
    counts: list[int] = []
    for pos, (line, req) in enumerate(numbered):
        custom_id = ids[pos]
        name = where(line, custom_id)
        if not _check_line(req, name, line, one_url, problems) or pos in bad_ids:
            continue
        data = dumps_checked(
            {
                "custom_id": custom_id,
                "method": "POST",
                "url": one_url.endpoint,
                "body": req["body"],
            },
            name,
            problems,
            line,
        )
        if data is None:
            continue
        if len(data) > max_line_bytes:
            problems.add(
                f"{name}: line is {len(data)} bytes, over the {max_line_bytes}-byte limit", line
            )
            continue
        custom_ids.append(custom_id)
        lines.append(data)
        models.append(req["body"]["model"])
        counts.append(embedding_input_count(req["body"].get("input")) or 0)
    problems.raise_if_any()
    endpoint = one_url.endpoint or CHAT_ENDPOINT
    counts_known = counts if endpoint == EMBEDDINGS_ENDPOINT else None
    return EncodedRequests(endpoint, custom_ids, lines, models, counts_known)


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """Parsed non-blank lines of a JSONL file with their 1-based numbers."""
    numbered: list[tuple[int, Any]] = []
    problems = Problems()
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                numbered.append((line, orjson.loads(raw)))
            except orjson.JSONDecodeError as exc:
                problems.add(f"{where(line)}: not valid JSON ({exc})", line)
    problems.raise_if_any()
    return numbered


def _read_frame(df: pd.DataFrame) -> list[tuple[int, dict[str, Any]]]:
    """One request dict per row from the ``custom_id``/``method``/``url``/``body`` columns."""
    missing = [c for c in ("custom_id", "body") if c not in df.columns]
    if missing:
        raise InvalidBatchInput(
            [f"missing column {c!r}; columns: {list(df.columns)}" for c in missing]
        )
    keys = [c for c in ("custom_id", "method", "url", "body") if c in df.columns]
    columns = [column_ids(df[c]) if c == "custom_id" else df[c].tolist() for c in keys]
    return [
        (i, dict(zip(keys, row, strict=True)))
        for i, row in enumerate(zip(*columns, strict=True), 1)
    ]


def encode_requests(
    requests: pd.DataFrame | Iterable[Mapping[str, Any]] | str | Path,
    *,
    endpoint: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> EncodedRequests:
    """Validate and encode ready request lines.

    ``method`` defaults to POST and ``url`` to ``endpoint``; with ``endpoint=None`` the
    lines' url is used (one and the same for all lines) or else the chat endpoint.

    Args:
        requests: A DataFrame with ``custom_id`` and ``body`` columns (optionally
            ``method`` and ``url``; an integer ``custom_id`` column becomes decimal
            strings), an iterable of request-line dicts, or a JSONL path.
        endpoint: The url every line posts to, one of ``ENDPOINTS``.
        max_line_bytes: The largest encoded line allowed, newline excluded.

    Returns:
        The validated lines, in input order.

    Raises:
        InvalidBatchInput: Naming each bad line (1-based number, ``custom_id``; a
            DataFrame's row by its index label) and the rule it breaks: a missing, empty or duplicate id, another method or url, a
            body without a string model, a missing or malformed ``input`` (embeddings,
            Responses, moderations), NaN or infinity, a line over the size limit.

    Example:
        >>> df = pd.DataFrame({"custom_id": [1, 2],
        ...                    "body": [{"model": "m", "prompt": "hi"}, {"model": "m"}]})
        >>> enc = encode_requests(df, endpoint="/v1/completions")
        >>> enc.custom_ids, enc.models, enc.endpoint
        (['1', '2'], ['m', 'm'], '/v1/completions')
        >>> try:
        ...     encode_requests([{"custom_id": "a", "method": "GET", "body": {"model": "m"}}])
        ... except InvalidBatchInput as err:
        ...     print(err.problems)
        ["line 1 (custom_id 'a'): method must be POST, got 'GET'"]
    """
    if endpoint is not None:
        check_endpoint(endpoint)
    if isinstance(requests, pd.DataFrame):
        terms = FrameTerms(labels=requests.index, id_column="custom_id", content="body")
        try:
            return encode_numbered_lines(_read_frame(requests), endpoint, max_line_bytes)
        except InvalidBatchInput as error:
            raise in_frame_terms(error, terms) from None
    if isinstance(requests, (str, Path)):
        numbered = _read_jsonl(Path(requests))
    else:
        numbered = list(enumerate(requests, 1))
    return encode_numbered_lines(numbered, endpoint, max_line_bytes)
