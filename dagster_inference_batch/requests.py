"""Request lines for OpenAI-compatible Batch APIs: build, validate, encode, shard, write.

A request line is one compact JSON document
``{"custom_id", "method": "POST", "url": <endpoint>, "body": {...}}``. Everything here is
checked before anything is uploaded: bad input raises :class:`InvalidBatchInput` naming
the 1-based line number and/or ``custom_id`` and the rule broken (up to 20 problems at
once). This module knows nothing about Dagster or the openai SDK.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from dagster_inference_batch.errors import MAX_REPORTED_PROBLEMS, InvalidBatchInput

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
CHAT_ENDPOINT, COMPLETIONS_ENDPOINT = ENDPOINTS
DEFAULT_MAX_LINE_BYTES = 1_000_000
DEFAULT_MAX_REQUESTS = 50_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})
_CHUNK_LINES = 8_192  # lines per encode / write / hash step

_MISSING_ID = "missing custom_id"
_EMPTY_ID = "empty custom_id"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class EncodedRequests:
    """Validated request lines, ready to shard and write.

    Example:
        >>> enc = encode_requests([{"custom_id": "a", "body": {"model": "m"}}])
        >>> enc.lines[0]
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}'
        >>> len(enc), enc.nbytes
        (1, 84)
    """

    endpoint: str
    custom_ids: list[str]
    lines: list[bytes]
    models: list[str]

    def __len__(self) -> int:
        return len(self.lines)

    @cached_property
    def nbytes(self) -> int:
        """Size of the JSONL file holding every line (each line plus its newline)."""
        return sum(map(len, self.lines)) + len(self.lines)

    def sha256(self) -> str:
        """Hex sha256 of the JSONL bytes :func:`write_jsonl` writes for all lines."""
        return _sha256(self.lines, None)


@dataclass(frozen=True)
class Shard:
    """One batch worth of request lines: ``positions`` index into ``EncodedRequests.lines``."""

    index: int
    model: str | None
    positions: list[int]
    request_count: int
    nbytes: int
    sha256: str


# --------------------------------------------------------------------------- problems


class _Problems:
    """Counts every problem and keeps the first ``MAX_REPORTED_PROBLEMS`` by line number.

    Line 0 is for problems not tied to a line (a missing column, a bad argument).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self.total = 0

    def add(self, message: str, line: int = 0) -> None:
        self.total += 1
        item = (-line, -next(self._seq), message)  # heap root = latest, highest line
        if len(self._heap) < MAX_REPORTED_PROBLEMS:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def add_rows(
        self, positions: Sequence[int], describe: Callable[[int], str], lines: Sequence[int]
    ) -> None:
        """Add one problem per position (``lines[pos]`` is its line); describe the first few."""
        for pos in positions[:MAX_REPORTED_PROBLEMS]:
            self.add(describe(pos), lines[pos])
        self.total += max(0, len(positions) - MAX_REPORTED_PROBLEMS)

    def raise_if_any(self) -> None:
        if self.total:
            ordered = sorted(self._heap, reverse=True)
            raise InvalidBatchInput([message for _, _, message in ordered], total=self.total)


def _where(line: int, custom_id: object = None) -> str:
    if isinstance(custom_id, str) and custom_id:
        shown = custom_id if len(custom_id) <= 60 else custom_id[:57] + "..."
        return f"line {line} (custom_id {shown!r})"
    return f"line {line}"


def _custom_id_problem(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return _MISSING_ID
    if not isinstance(value, str):
        return f"custom_id must be a string, got {type(value).__name__}"
    if not value:
        return _EMPTY_ID
    return None


def _invalid_text(values: list[Any] | pd.Series) -> list[int]:
    """Positions of values that are missing, not a str, or empty (vectorised for str columns)."""
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.StringDtype):
            return np.flatnonzero((values.isna() | (values.str.len() == 0)).to_numpy()).tolist()
        values = values.tolist()
    return [i for i, v in enumerate(values) if not isinstance(v, str) or not v]


def _check_custom_ids(
    ids: list[Any], problems: _Problems, lines: Sequence[int], bad: list[int] | None = None
) -> set[int]:
    """Report missing, non-string, empty and duplicate ids; return their positions.

    ``bad`` may hold the precomputed :func:`_invalid_text` positions of ``ids``.
    """
    bad = _invalid_text(ids) if bad is None else bad
    problems.add_rows(bad, lambda i: f"{_where(lines[i])}: {_custom_id_problem(ids[i])}", lines)
    bad_set = set(bad)
    if bad or len(set(ids)) < len(ids):  # (bad ids may be unhashable) the set: fast check
        first: dict[str, int] = {}
        dups = []
        for i, v in enumerate(ids):
            if i not in bad_set and first.setdefault(v, i) != i:
                dups.append(i)
        problems.add_rows(
            dups,
            lambda i: (
                f"{_where(lines[i], ids[i])}: duplicate custom_id "
                f"(first on line {lines[first[ids[i]]]})"
            ),
            lines,
        )
        bad_set.update(dups)
    return bad_set


def _column_ids(column: pd.Series) -> list[Any]:
    """Ids from a DataFrame column; integer columns become decimal strings."""
    if pd.api.types.is_integer_dtype(column.dtype):
        return [None if pd.isna(v) else str(v) for v in column.tolist()]
    return column.tolist()


def _non_finite_path(value: Any, path: str) -> str | None:
    """Path of the first NaN / infinity inside ``value`` (which orjson writes as null)."""
    if isinstance(value, (float, np.floating)):
        return None if math.isfinite(value) else path or "value"
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        if not np.isfinite(value).all():
            return path or "value"
    return None


def _dumps_checked(value: Any, where: str, problems: _Problems, line: int) -> bytes | None:
    """orjson-encode ``value``, reporting what JSON cannot carry instead of raising."""
    try:
        data = orjson.dumps(value, option=_DUMPS_OPTIONS)
    except orjson.JSONEncodeError as exc:
        problems.add(f"{where}: value JSON cannot carry ({exc})", line)
        return None
    if b"null" in data:  # orjson turns NaN and infinity into null; look closer only then
        bad = _non_finite_path(value, "")
        if bad:
            problems.add(f"{where}: {bad} is NaN or infinity, which JSON cannot carry", line)
            return None
    return data


def _check_line_sizes(
    lines: list[bytes], start: int, ids: list[str], max_line_bytes: int, problems: _Problems
) -> None:
    """Report lines over the limit; ``lines`` is ``ids[start:]``'s run, line numbers 1-based."""
    if max(map(len, lines), default=0) <= max_line_bytes:  # the usual case: one C-level pass
        return
    for i, line in enumerate(lines, start):
        if len(line) > max_line_bytes:
            problems.add(
                f"{_where(i + 1, ids[i])}: line is {len(line)} bytes, "
                f"over the {max_line_bytes}-byte limit",
                i + 1,
            )


def _check_endpoint(endpoint: str) -> None:
    if endpoint not in ENDPOINTS:
        raise InvalidBatchInput([f"unsupported url {endpoint!r}: use one of {list(ENDPOINTS)}"])


# --------------------------------------------------------------------------- encoding


def _encode_lines(
    numbered: list[tuple[int, Any]], endpoint: str | None, max_line_bytes: int
) -> EncodedRequests:
    """Validate and encode ``(line number, request dict)`` pairs: the generic path."""
    problems = _Problems()
    if not numbered:
        problems.add("no request lines: the input is empty")
    for line, req in numbered:
        if not isinstance(req, Mapping):
            problems.add(f"{_where(line)}: request line is not a JSON object", line)
    numbered = [(line, req) for line, req in numbered if isinstance(req, Mapping)]
    line_numbers = [line for line, _ in numbered]
    ids = [req.get("custom_id") for _, req in numbered]
    bad_ids = _check_custom_ids(ids, problems, line_numbers)
    first_url_line = 0
    custom_ids: list[str] = []
    lines: list[bytes] = []
    models: list[str] = []
    for pos, (line, req) in enumerate(numbered):
        custom_id = ids[pos]
        where = _where(line, custom_id)
        ok = pos not in bad_ids
        extra = sorted(map(str, set(req) - _LINE_KEYS))
        if extra:
            problems.add(f"{where}: unexpected key(s) {extra}", line)
            ok = False
        method = req.get("method", "POST")
        if method != "POST":
            problems.add(f"{where}: method must be POST, got {method!r}", line)
            ok = False
        url = req.get("url", endpoint or CHAT_ENDPOINT)
        if url not in ENDPOINTS:
            problems.add(f"{where}: unsupported url {url!r}: use one of {list(ENDPOINTS)}", line)
            ok = False
        elif endpoint is None:
            endpoint, first_url_line = url, line
        elif url != endpoint:
            origin = f"line {first_url_line}" if first_url_line else "the endpoint argument"
            problems.add(
                f"{where}: url {url!r} differs from {endpoint!r} ({origin}); "
                "one batch job takes one url",
                line,
            )
            ok = False
        body = req.get("body")
        model = body.get("model") if isinstance(body, Mapping) else None
        if not isinstance(body, Mapping):
            problems.add(f"{where}: body must be a JSON object, got {type(body).__name__}", line)
            ok = False
        elif not isinstance(model, str) or not model:
            problems.add(f"{where}: body lacks a string model", line)
            ok = False
        if not ok:
            continue
        data = _dumps_checked(
            {"custom_id": custom_id, "method": "POST", "url": url, "body": body},
            where,
            problems,
            line,
        )
        if data is None:
            continue
        if len(data) > max_line_bytes:
            problems.add(
                f"{where}: line is {len(data)} bytes, over the {max_line_bytes}-byte limit", line
            )
            continue
        custom_ids.append(custom_id)
        lines.append(data)
        models.append(model)
    problems.raise_if_any()
    return EncodedRequests(endpoint or CHAT_ENDPOINT, custom_ids, lines, models)


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    numbered: list[tuple[int, Any]] = []
    problems = _Problems()
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                numbered.append((line, orjson.loads(raw)))
            except orjson.JSONDecodeError as exc:
                problems.add(f"{_where(line)}: not valid JSON ({exc})", line)
    problems.raise_if_any()
    return numbered


def encode_requests(
    requests: pd.DataFrame | Iterable[Mapping[str, Any]] | str | Path,
    *,
    endpoint: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> EncodedRequests:
    """Validate and encode ready request lines.

    ``requests`` is a DataFrame with ``custom_id`` and ``body`` columns (optionally
    ``method`` and ``url``), an iterable of request-line dicts, or a JSONL path. ``method``
    defaults to POST and ``url`` to ``endpoint``; with ``endpoint=None`` the lines' url is
    used (one and the same for all lines) or else the chat endpoint. Integer ``custom_id``
    columns of a DataFrame become strings.

    Example:
        >>> enc = encode_requests(
        ...     [{"custom_id": "q1", "body": {"model": "m", "prompt": "hi"}}],
        ...     endpoint="/v1/completions",
        ... )
        >>> enc.custom_ids, enc.models, enc.endpoint
        (['q1'], ['m'], '/v1/completions')
    """
    if endpoint is not None:
        _check_endpoint(endpoint)
    if isinstance(requests, pd.DataFrame):
        missing = [c for c in ("custom_id", "body") if c not in requests.columns]
        if missing:
            raise InvalidBatchInput(
                [f"missing column {c!r}; columns: {list(requests.columns)}" for c in missing]
            )
        keys = [c for c in ("custom_id", "method", "url", "body") if c in requests.columns]
        columns = [
            _column_ids(requests[c]) if c == "custom_id" else requests[c].tolist() for c in keys
        ]
        numbered = [
            (i, dict(zip(keys, row, strict=True)))
            for i, row in enumerate(zip(*columns, strict=True), 1)
        ]
    elif isinstance(requests, (str, Path)):
        numbered = _read_jsonl(Path(requests))
    else:
        numbered = list(enumerate(requests, 1))
    return _encode_lines(numbered, endpoint, max_line_bytes)


# --------------------------------------------------------------------------- building


def _check_prompts(prompts: pd.Series, ids: list[Any], problems: _Problems) -> None:
    def describe(i: int) -> str:
        value = prompts.iloc[i]
        if isinstance(value, str):
            rule = "empty prompt"
        elif _custom_id_problem(value) == _MISSING_ID:  # None, NaN or pd.NA
            rule = "empty prompt (missing value)"
        else:
            rule = f"prompt must be a string, got {type(value).__name__}"
        return f"{_where(i + 1, ids[i])}: {rule}"

    problems.add_rows(_invalid_text(prompts), describe, range(1, len(prompts) + 1))


def _placeholder() -> str:
    return f"@@{uuid.uuid4().hex}@@"


def _json_strings(
    values: list[str], start: int, ids: list[str], problems: _Problems
) -> list[bytes]:
    """JSON-escaped contents (no quotes) of non-empty strings, from one orjson call.

    In compact JSON a list of strings splits exactly at ``","``: inside a string every
    quote is escaped, so ``"`` preceded by ``,`` only opens the next element.
    """
    try:
        return orjson.dumps(values)[2:-2].split(b'","')
    except orjson.JSONEncodeError:  # lone surrogates: report each one
        return [
            (_dumps_checked(v, f"{_where(i + 1, ids[i])}: text", problems, i + 1) or b"")[1:-1]
            for i, v in enumerate(values, start)
        ]


def _prompt_lines(
    ids: list[str],
    prompts: pd.Series,
    endpoint: str,
    body: dict[str, Any],
    system_prompt: str | None,
    max_line_bytes: int,
    problems: _Problems,
) -> list[bytes]:
    """The fast path: the line encoded once as a template, per-row JSON spliced in as bytes.

    Works in chunks so the intermediate objects (prompts as Python str, their JSON) stay
    few and their memory is reused: fresh memory is what costs most here.
    """
    id_mark, prompt_mark = _placeholder(), _placeholder()
    params = {k: v for k, v in body.items() if k != "model"}
    if endpoint == CHAT_ENDPOINT:
        messages = [{"role": "user", "content": prompt_mark}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        body = {"model": body["model"], "messages": messages, **params}
    else:
        body = {"model": body["model"], "prompt": prompt_mark, **params}
    template = _dumps_checked(
        {"custom_id": id_mark, "method": "POST", "url": endpoint, "body": body},
        "body_params",
        problems,
        0,
    )
    if template is None:
        return []
    head, rest = template.split(id_mark.encode())
    middle, tail = rest.split(prompt_mark.encode())
    lines: list[bytes] = []
    for start in range(0, len(ids), _CHUNK_LINES):
        chunk = slice(start, start + _CHUNK_LINES)
        id_json = _json_strings(ids[chunk], start, ids, problems)
        prompt_json = _json_strings(prompts.iloc[chunk].tolist(), start, ids, problems)
        new = [head + i + middle + p + tail for i, p in zip(id_json, prompt_json, strict=True)]
        _check_line_sizes(new, start, ids, max_line_bytes, problems)  # while the chunk is hot
        lines += new
    return lines


def build_requests(
    df: pd.DataFrame,
    *,
    id_column: str = "custom_id",
    endpoint: str = CHAT_ENDPOINT,
    model: str | None = None,
    prompt_column: str | None = None,
    messages: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    body_column: str | None = None,
    system_prompt: str | None = None,
    body_params: Mapping[str, Any] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> EncodedRequests:
    """Build validated request lines from a DataFrame, one per row.

    Give exactly one source of content: ``prompt_column`` (a string column: the user
    message for chat, the ``prompt`` for completions; ``system_prompt`` adds a system
    message for chat), ``messages`` (a function of the row as a dict returning the chat
    messages) or ``body_column`` (ready body dicts). ``model`` and ``body_params``
    (``max_tokens``, ``temperature``, ``response_format``, ...) go into every body; a
    ready body's own keys win over them. Ids come from ``id_column`` (strings, or an
    integer column whose values become decimal strings).

    Example:
        >>> df = pd.DataFrame({"custom_id": ["a", "b"], "prompt": ["Hi", "Bye"]})
        >>> enc = build_requests(df, model="m", prompt_column="prompt",
        ...                      body_params={"max_tokens": 8})
        >>> enc.lines[1]
        b'{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"Bye"}],"max_tokens":8}}'
    """
    if sum(x is not None for x in (prompt_column, messages, body_column)) != 1:
        raise ValueError("pass exactly one of prompt_column, messages or body_column")
    _check_endpoint(endpoint)
    if messages is not None and endpoint != CHAT_ENDPOINT:
        raise ValueError(f"messages= builds chat requests; the endpoint is {endpoint!r}")
    if system_prompt is not None and (prompt_column is None or endpoint != CHAT_ENDPOINT):
        raise ValueError("system_prompt goes with prompt_column on the chat endpoint")
    params = dict(body_params or {})
    content_key = "messages" if endpoint == CHAT_ENDPOINT else "prompt"
    if body_column is None and content_key in params:
        raise ValueError(f"body_params may not set {content_key!r}: it is built per row")
    if model is not None:
        params["model"] = model
    problems = _Problems()
    for column, role in ((id_column, "id"), (prompt_column or body_column, "content")):
        if column is not None and column not in df.columns:
            problems.add(f"missing {role} column {column!r}; columns: {list(df.columns)}")
    if body_column is None and not (isinstance(params.get("model"), str) and params["model"]):
        problems.add("body lacks a string model: pass model=... or body_params={'model': ...}")
    if len(df) == 0:
        problems.add("no request lines: the DataFrame is empty")
    problems.raise_if_any()

    ids = _column_ids(df[id_column])
    if body_column is not None:
        bodies = [
            {**params, **body} if isinstance(body, Mapping) else body
            for body in df[body_column].tolist()
        ]
    elif messages is not None:
        bodies = []
        for line, row in enumerate(df.to_dict("records"), 1):
            built = messages(row)
            if not isinstance(built, list) or not built:
                problems.add(
                    f"{_where(line, ids[line - 1])}: messages function returned "
                    f"{type(built).__name__}, not a non-empty list",
                    line,
                )
            bodies.append({**params, "messages": built})
    else:
        id_col = df[id_column]
        bad = _invalid_text(id_col) if isinstance(id_col.dtype, pd.StringDtype) else None
        _check_custom_ids(ids, problems, range(1, len(ids) + 1), bad)
        prompts = df[prompt_column]
        _check_prompts(prompts, ids, problems)
        problems.raise_if_any()  # from here on every id and prompt is a non-empty str
        lines = _prompt_lines(
            ids, prompts, endpoint, params, system_prompt, max_line_bytes, problems
        )
        problems.raise_if_any()
        return EncodedRequests(endpoint, ids, lines, [params["model"]] * len(lines))
    problems.raise_if_any()
    requests = [{"custom_id": i, "body": body} for i, body in zip(ids, bodies, strict=True)]
    return _encode_lines(list(enumerate(requests, 1)), endpoint, max_line_bytes)


# --------------------------------------------------------------------------- sharding


def _greedy_cuts(sizes: np.ndarray, max_requests: int, max_bytes: int) -> list[int]:
    """End offsets of contiguous chunks filled greedily under both limits (fewest chunks)."""
    cumulative = np.concatenate(([0], np.cumsum(sizes)))
    n, start, cuts = len(sizes), 0, []
    while start < n:
        by_bytes = int(np.searchsorted(cumulative, cumulative[start] + max_bytes, "right")) - 1
        end = min(start + max_requests, by_bytes, n)
        cuts.append(end)
        start = end
    return cuts


def _balanced_cuts(sizes: np.ndarray, max_requests: int, max_bytes: int) -> list[int]:
    """Fewest contiguous chunks under both limits, as even as the limits allow.

    Even by count when that fits the byte limit; otherwise the smallest byte cap that
    still needs no more chunks (a binary search over greedy fills).
    """
    count = len(_greedy_cuts(sizes, max_requests, max_bytes))
    n = len(sizes)
    cuts = [(n * (k + 1)) // count for k in range(count)]
    cumulative = np.concatenate(([0], np.cumsum(sizes)))
    if np.diff(cumulative[[0, *cuts]]).max() <= max_bytes:
        return cuts
    low, high = max(int(math.ceil(cumulative[-1] / count)), int(sizes.max())), max_bytes
    while low < high:
        mid = (low + high) // 2
        if len(_greedy_cuts(sizes, max_requests, mid)) <= count:
            high = mid
        else:
            low = mid + 1
    return _greedy_cuts(sizes, max_requests, low)


def shard_requests(
    encoded: EncodedRequests,
    *,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Shard]:
    """Split request lines into batches: by model first, then under both limits.

    Each model's lines (in order of first appearance) go into the fewest shards that
    keep ``request_count <= max_requests`` and ``nbytes <= max_bytes`` (bytes as written,
    newlines included), balanced, input order kept within a shard. Every request lands
    in exactly one shard. A single line over ``max_bytes`` raises ``InvalidBatchInput``.

    Example:
        >>> enc = encode_requests(
        ...     [{"custom_id": str(i), "body": {"model": "m"}} for i in range(5)])
        >>> [s.positions for s in shard_requests(enc, max_requests=2)]
        [[0], [1, 2], [3, 4]]
    """
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("max_requests and max_bytes must be positive")
    sizes = np.fromiter(map(len, encoded.lines), dtype=np.int64, count=len(encoded)) + 1
    problems = _Problems()
    problems.add_rows(
        np.flatnonzero(sizes > max_bytes).tolist(),
        lambda i: (
            f"{_where(i + 1, encoded.custom_ids[i])}: line is {sizes[i]} bytes with "
            f"its newline, over the {max_bytes}-byte batch limit"
        ),
        range(1, len(sizes) + 1),
    )
    problems.raise_if_any()

    codes, uniques = pd.factorize(pd.Series(encoded.models, dtype=object), sort=False)
    groups = (
        [np.arange(len(encoded))]
        if len(uniques) == 1
        else [np.flatnonzero(codes == k) for k in range(len(uniques))]
    )
    shards: list[Shard] = []
    for model, members in zip(uniques, groups, strict=True):
        start = 0
        for end in _balanced_cuts(sizes[members], max_requests, max_bytes):
            positions = members[start:end].tolist()
            shards.append(
                Shard(
                    index=len(shards),
                    model=str(model),
                    positions=positions,
                    request_count=len(positions),
                    nbytes=int(sizes[members[start:end]].sum()),
                    sha256=_sha256(encoded.lines, positions),
                )
            )
            start = end
    return shards


# --------------------------------------------------------------------------- writing


def _jsonl_chunks(lines: list[bytes], positions: Sequence[int] | None) -> Iterator[bytes]:
    chosen = lines if positions is None else [lines[i] for i in positions]
    for start in range(0, len(chosen), _CHUNK_LINES):
        chunk = chosen[start : start + _CHUNK_LINES]
        chunk.append(b"")  # a final newline without copying the joined chunk again
        yield b"\n".join(chunk)


def _sha256(lines: list[bytes], positions: Sequence[int] | None) -> str:
    digest = hashlib.sha256()
    for chunk in _jsonl_chunks(lines, positions):
        digest.update(chunk)
    return digest.hexdigest()


def write_jsonl(
    encoded: EncodedRequests, path: str | Path, positions: Sequence[int] | None = None
) -> None:
    """Write the lines (or the subset at ``positions``, in that order) as JSONL.

    Example:
        >>> import tempfile, os
        >>> enc = encode_requests([{"custom_id": "a", "body": {"model": "m"}}])
        >>> path = os.path.join(tempfile.mkdtemp(), "batch.jsonl")
        >>> write_jsonl(enc, path)
        >>> open(path, "rb").read().count(b"\\n")
        1
    """
    with open(path, "wb") as f:
        for chunk in _jsonl_chunks(encoded.lines, positions):
            f.write(chunk)
