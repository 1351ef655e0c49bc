"""Batch results: parse output and error files, classify each line, merge attempts, join.

Output lines look like ``{"id", "custom_id", "response": {"status_code", "request_id",
"body": {...}}, "error": null}`` and error-file lines like ``{"id", "custom_id",
"response": null, "error": {"code", "message"}}``. Files are read from disk in large
blocks and parsed line by line with orjson. This module knows nothing about Dagster or
the openai SDK.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

RESULT_COLUMNS = [
    "custom_id",
    "status",
    "content",
    "finish_reason",
    "model",
    "error_code",
    "error_message",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "batch_id",
    "attempt",
    "status_code",
]
STATUSES = ("succeeded", "failed", "expired", "cancelled", "missing")
RETRYABLE_STATUS_CODES = frozenset({408, 409, 429})
RETRYABLE_ERROR_CODES = frozenset(
    {"rate_limit_exceeded", "server_error", "internal_error", "timeout", "service_unavailable"}
)

_ERROR_STATUS = {"batch_expired": "expired", "batch_cancelled": "cancelled"}
_INT_COLUMNS = frozenset(
    {"prompt_tokens", "completion_tokens", "total_tokens", "attempt", "status_code"}
)
_LINE_FIELDS = RESULT_COLUMNS[:10] + ["status_code"]  # what one line yields, in this order
_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class ResultFile:
    """A downloaded output or error file of one batch attempt."""

    path: Path
    kind: Literal["output", "error"]
    batch_id: str
    attempt: int


def _fields(record: dict[str, Any]) -> tuple[Any, ...]:
    """One result line as a tuple in ``_LINE_FIELDS`` order.

    The usual line, a complete success, is read with plain subscripts (about twice as
    fast); anything else falls through to :func:`_any_fields`.
    """
    try:
        if record["error"] is None:
            response = record["response"]
            status_code = response["status_code"]
            if status_code < 400:
                body = response["body"]
                choice = body["choices"][0]
                message = choice.get("message")
                content = choice["text"] if message is None else message["content"]
                usage = body["usage"]
                return (record["custom_id"], "succeeded", content, choice["finish_reason"],
                        body["model"], None, None, usage["prompt_tokens"],
                        usage["completion_tokens"], usage["total_tokens"], status_code)  # fmt: skip
    except (KeyError, TypeError, IndexError):
        pass
    return _any_fields(record)


def _any_fields(record: dict[str, Any]) -> tuple[Any, ...]:
    """:func:`_fields` for any line, tolerating missing parts."""
    custom_id = record["custom_id"]
    error = record.get("error")
    response = record.get("response") or {}
    status_code = response.get("status_code")
    body = response.get("body")
    if not isinstance(body, dict):
        body = {}
    if error:
        code = error.get("code")
        status = _ERROR_STATUS.get(code, "failed")
        return (custom_id, status, None, None, None, code, error.get("message"),
                None, None, None, status_code)  # fmt: skip
    if not response:
        return (custom_id, "failed", None, None, None, "missing_response",
                "the result line has neither a response nor an error",
                None, None, None, None)  # fmt: skip
    if status_code is None or status_code >= 400:
        detail = body.get("error")
        detail = detail if isinstance(detail, dict) else {"message": detail}
        code = detail.get("code") or detail.get("type") or f"http_{status_code}"
        message = detail.get("message") or f"HTTP {status_code}"
        return (custom_id, "failed", None, None, None, str(code), message,
                None, None, None, status_code)  # fmt: skip
    choices = body.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else choice.get("text")
    usage = body.get("usage") or {}
    return (custom_id, "succeeded", content, choice.get("finish_reason"), body.get("model"),
            None, None, usage.get("prompt_tokens"), usage.get("completion_tokens"),
            usage.get("total_tokens"), status_code)  # fmt: skip


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: parsing allocates millions of acyclic objects, and the
    collections it would trigger cost about as much as the parsing itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _blocks(path: Path) -> Iterator[list[bytes]]:
    """The file's lines, a large block at a time (the last line may lack its newline)."""
    with open(path, "rb") as f:
        rest = b""
        while block := f.read(_BLOCK_BYTES):
            lines = block.split(b"\n")
            lines[0] = rest + lines[0]
            rest = lines.pop()
            yield lines
        if rest:
            yield [rest]


def _parse_file(path: Path) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    loads = orjson.loads
    for lines in _blocks(path):
        try:
            rows.extend([_fields(loads(line)) for line in lines if line and not line.isspace()])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            _raise_bad_line(path, len(rows), lines, exc)
    return rows


def _raise_bad_line(path: Path, parsed: int, lines: list[bytes], exc: Exception) -> None:
    """Name the first unreadable line of a block (slow path, only on error)."""
    for line in lines:
        if not line or line.isspace():
            continue
        try:
            _fields(orjson.loads(line))
        except Exception as bad:
            raise ValueError(
                f"{path}: result line {parsed + 1} is not a valid batch result ({bad!r}): "
                f"{line[:200]!r}"
            ) from exc
        parsed += 1
    raise exc


def _text_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. content as a list of parts: keep JSON
        return pa.array(
            [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values],
            pa.large_string(),
        )


def _parse_table(files: Sequence[ResultFile]) -> pa.Table:
    """Every line of every file, in file order, as an Arrow table of ``RESULT_COLUMNS``."""
    rows: list[tuple[Any, ...]] = []
    batch_ids: list[str] = []
    attempts: list[int] = []
    with _gc_paused():
        for file in files:
            parsed = _parse_file(Path(file.path))
            rows.extend(parsed)
            batch_ids.extend([file.batch_id] * len(parsed))
            attempts.extend([file.attempt] * len(parsed))
        values = zip(*rows, strict=True) if rows else [()] * len(_LINE_FIELDS)
        columns = dict(zip(_LINE_FIELDS, map(list, values), strict=True))
        del rows, values
    columns["custom_id"] = [str(c) for c in columns["custom_id"]]
    columns["batch_id"] = batch_ids
    columns["attempt"] = attempts
    return pa.table(
        {
            name: pa.array(columns[name], pa.int64())
            if name in _INT_COLUMNS
            else _text_array(columns[name])
            for name in RESULT_COLUMNS
        }
    )


def _frame(table: pa.Table) -> pd.DataFrame:
    """Arrow to pandas: text as pandas' ``str`` dtype, integers as nullable ``Int64``."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def _best_first(table: pa.Table) -> np.ndarray:
    """Row positions ordered so that each custom_id's best row comes first: a success,
    else the latest attempt, else the later row."""
    succeeded = pc.fill_null(pc.equal(table["status"], "succeeded"), False).to_numpy()
    attempt = pc.fill_null(table["attempt"], 0).to_numpy()
    return np.lexsort((-np.arange(table.num_rows), -attempt, ~succeeded))


def _lookup(keys: Any, wanted: pa.Array) -> pa.Array:
    """For each wanted id, the position of its first occurrence in ``keys`` (or null)."""
    value_set = pa.chunked_array(keys).combine_chunks() if not isinstance(keys, pa.Array) else keys
    return pc.index_in(wanted, value_set=value_set.cast(pa.large_string()))


def _winner_rows(table: pa.Table, wanted: pa.Array) -> pa.Array:
    """For each wanted id, the position of its best row (null when it has none)."""
    order = _best_first(table)
    return pa.array(order).take(_lookup(table["custom_id"].take(order), wanted))


def _joined(table: pa.Table, wanted: list[str]) -> pa.Table:
    """One row per wanted id, in order; status ``missing`` where there is no row."""
    ids = pa.array(wanted, pa.large_string())
    joined = table.take(_winner_rows(table, ids))
    joined = joined.set_column(joined.schema.get_field_index("custom_id"), "custom_id", ids)
    status = pc.fill_null(joined["status"].cast(pa.large_string()), "missing")
    return joined.set_column(joined.schema.get_field_index("status"), "status", status)


def _with_inputs(
    result: pd.DataFrame, wanted: list[str], inputs: pd.DataFrame | None, id_column: str
) -> pd.DataFrame:
    """Append the input columns, row for row (``_input`` suffix on clashing names)."""
    if inputs is None:
        return result
    keys = inputs[id_column].astype(str).tolist()
    if len(set(keys)) < len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise ValueError(f"inputs column {id_column!r} repeats the id {dup!r}")
    extra = inputs.drop(columns=["custom_id"]) if id_column == "custom_id" else inputs
    extra = extra.rename(columns={c: f"{c}_input" for c in extra.columns if c in result.columns})
    extra = extra.reset_index(drop=True)
    if keys != wanted:
        rows = _lookup(pa.array(keys, pa.large_string()), pa.array(wanted, pa.large_string()))
        extra = extra.reindex(rows.fill_null(-1).to_numpy()).reset_index(drop=True)
    return pd.concat([result, extra], axis=1)


def parse_result_files(files: Sequence[ResultFile]) -> pd.DataFrame:
    """Parse output and error files into one row per result line (``RESULT_COLUMNS``).

    ``status`` is ``succeeded`` (status code below 400, no error), ``expired``
    (``batch_expired``), ``cancelled`` (``batch_cancelled``) or ``failed`` (any other
    error, or ``error: null`` with a status code of 400 or more: the code and message
    then come from ``response.body.error``). No files gives an empty frame.

    Example:
        >>> import tempfile, os
        >>> path = Path(tempfile.mkdtemp()) / "errors.jsonl"
        >>> _ = path.write_bytes(b'{"id":"r1","custom_id":"a","response":null,'
        ...     b'"error":{"code":"batch_expired","message":"expired"}}\\n')
        >>> parse_result_files([ResultFile(path, "error", "batch_1", 1)])[
        ...     ["custom_id", "status", "error_code"]].values.tolist()
        [['a', 'expired', 'batch_expired']]
    """
    return _frame(_parse_table(files))


def merge_attempts(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ``custom_id``: a success beats anything, otherwise the latest attempt.

    Ties (the same id twice in one attempt) go to the later row. Rows keep the order in
    which they were parsed.

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["a", "a"], "status": ["expired", "succeeded"],
        ...                      "attempt": [1, 2]})
        >>> merge_attempts(rows).status.tolist()
        ['succeeded']
    """
    if frame["custom_id"].is_unique:
        return frame
    table = _table(frame)
    rows = _winner_rows(table, pc.unique(table["custom_id"]).cast(pa.large_string()))
    return frame.take(np.sort(rows.to_numpy())).reset_index(drop=True)


def join_results(
    frame: pd.DataFrame,
    custom_ids: Sequence[str],
    inputs: pd.DataFrame | None = None,
    id_column: str = "custom_id",
) -> pd.DataFrame:
    """Exactly one row per requested ``custom_id``, in that order.

    Attempts are merged as in :func:`merge_attempts`. Ids never answered get status
    ``missing``; ids not requested are dropped. With ``inputs`` their columns are
    appended, matched on ``inputs[id_column]`` cast to str (the id column itself is not
    repeated when it is ``custom_id``; a column named like a result column gets the
    suffix ``_input``).

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["b", "x"], "status": ["succeeded"] * 2,
        ...                      "attempt": [1, 1]})
        >>> join_results(rows, ["a", "b"]).status.tolist()
        ['missing', 'succeeded']
    """
    wanted = list(custom_ids)
    return _with_inputs(_frame(_joined(_table(frame), wanted)), wanted, inputs, id_column)


def collect_results(
    files: Sequence[ResultFile],
    custom_ids: Sequence[str],
    inputs: pd.DataFrame | None = None,
    id_column: str = "custom_id",
) -> pd.DataFrame:
    """Parse, merge attempts and join: ``join_results(parse_result_files(files), ...)``.

    Faster than the two calls: rows are picked in Arrow before any DataFrame is built.

    Example:
        >>> collect_results([], ["a"]).status.tolist()
        ['missing']
    """
    wanted = list(custom_ids)
    return _with_inputs(_frame(_joined(_parse_table(files), wanted)), wanted, inputs, id_column)


def leftover_custom_ids(
    frame: pd.DataFrame, custom_ids: Sequence[str], include_failed: bool = False
) -> list[str]:
    """Requested ids still to run: merged status expired, cancelled or missing.

    With ``include_failed`` retryable failures join them: status code 408, 409, 429 or
    5xx, or an error code such as ``rate_limit_exceeded`` or ``server_error``.

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "expired"],
        ...                      "attempt": [1, 1], "error_code": [None, "batch_expired"],
        ...                      "status_code": [200, None]})
        >>> leftover_custom_ids(rows, ["a", "b", "c"])
        ['b', 'c']
    """
    joined = join_results(frame, custom_ids)
    status = joined["status"]
    leftover = status.isin(["expired", "cancelled", "missing"])
    if include_failed:
        code = pd.to_numeric(joined["status_code"], errors="coerce")
        retryable = (
            code.isin(list(RETRYABLE_STATUS_CODES))
            | (code >= 500)
            | joined["error_code"].isin(list(RETRYABLE_ERROR_CODES))
        )
        leftover |= (status == "failed") & retryable
    return joined.loc[leftover, "custom_id"].tolist()


_ENDED_ERROR_CODES = {"expired": "batch_expired", "cancelled": "batch_cancelled"}


def mark_unanswered(
    frame: pd.DataFrame, owners: Mapping[str, tuple[str, str, int]]
) -> pd.DataFrame:
    """Give ``missing`` rows whose batch ended ``expired`` or ``cancelled`` that status.

    ``owners`` maps a custom_id to (status, batch_id, attempt) of the batch that held it.
    A batch stopped before it processed anything may write no error file at all; its
    requests were not lost, they were never run.

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "missing"],
        ...     "error_code": [None, None], "error_message": [None, None],
        ...     "batch_id": ["b1", None], "attempt": pd.array([1, None], dtype="Int64")})
        >>> mark_unanswered(rows, {"b": ("cancelled", "b1", 1)})["status"].tolist()
        ['succeeded', 'cancelled']
    """
    owned = frame["custom_id"].map(lambda custom_id: owners.get(custom_id))
    rows = (frame["status"] == "missing") & owned.notna()
    if not rows.any():
        return frame
    frame = frame.copy()
    status = owned[rows].map(lambda owner: owner[0])
    frame.loc[rows, "status"] = status
    frame.loc[rows, "error_code"] = status.map(_ENDED_ERROR_CODES)
    frame.loc[rows, "error_message"] = "not run: the batch ended " + status
    frame.loc[rows, "batch_id"] = owned[rows].map(lambda owner: owner[1])
    frame.loc[rows, "attempt"] = owned[rows].map(lambda owner: owner[2]).astype("Int64")
    return frame
