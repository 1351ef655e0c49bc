"""Batch results: parse output and error files and classify each line.

Merging attempts and joining to the requests live in ``result_join.py``; its public
functions are importable from here too (``collect_results`` does both in one pass).

Output lines look like ``{"id", "custom_id", "response": {"status_code", "request_id",
"body": {...}}, "error": null}`` and error-file lines like ``{"id", "custom_id",
"response": null, "error": {"code", "message"}}``. Files are read from disk in large
blocks; Arrow's JSON reader settles the usual lines of a block (``arrow_lines``) and
the rest are parsed line by line here (msgspec, then orjson), which defines what every
line means. This module knows nothing about Dagster or the openai SDK.
"""

from __future__ import annotations

import gc
import itertools
import operator
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import arrow_lines
from .result_bodies import (
    EMBEDDING_COLUMN,
    embedding_array,
    embedding_fields,
    is_embeddings_body,
    response_fields,
)
from .result_join import (
    RETRYABLE_ERROR_CODES,
    RETRYABLE_STATUS_CODES,
    id_array,
    join_results,
    join_table,
    leftover_custom_ids,
    mark_unanswered,
    merge_attempts,
    to_frame,
    with_inputs,
)
from .structured_output import StructuredOutput

__all__ = [
    "CHUNK_SCHEMA",
    "RESULT_COLUMNS",
    "RETRYABLE_ERROR_CODES",
    "RETRYABLE_STATUS_CODES",
    "STATUSES",
    "ResultFile",
    "collect_results",
    "join_results",
    "leftover_custom_ids",
    "mark_unanswered",
    "merge_attempts",
    "parse_chunks",
    "parse_result_files",
]

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
STATUSES = ("succeeded", "invalid_output", "failed", "expired", "cancelled", "missing")

_ERROR_STATUS = {"batch_expired": "expired", "batch_cancelled": "cancelled"}
_INT_COLUMNS = frozenset(
    {"prompt_tokens", "completion_tokens", "total_tokens", "attempt", "status_code"}
)
# What one line yields, in this order; ``embedding`` becomes a column only when present.
_LINE_FIELDS = [*RESULT_COLUMNS[:10], "status_code", EMBEDDING_COLUMN]
_BLOCK_BYTES = 8 << 20  # about 12,000 lines of chat answers: one chunk
_READERS = 4  # blocks Arrow reads at once (each holds its block and its columns)
# The Arrow form of every parsed chunk: RESULT_COLUMNS with embedding after content.
CHUNK_SCHEMA = pa.schema(
    [
        (name, pa.int64() if name in _INT_COLUMNS else pa.large_string())
        for name in RESULT_COLUMNS[:3]
    ]
    + [(EMBEDDING_COLUMN, pa.large_list(pa.large_list(pa.float32())))]
    + [
        (name, pa.int64() if name in _INT_COLUMNS else pa.large_string())
        for name in RESULT_COLUMNS[3:]
    ]
)
_ROW = "__parsed_row"  # a parsed line's position, carried through the join


@dataclass(frozen=True)
class ResultFile:
    """A downloaded output or error file of one batch attempt.

    Args:
        path: Where the file is on disk.
        kind: ``output`` or ``error``.
        batch_id: The batch that wrote it.
        attempt: The job's attempt the batch belongs to.
    """

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
                        usage["completion_tokens"], usage["total_tokens"], status_code,
                        None)  # fmt: skip
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
                None, None, None, status_code, None)  # fmt: skip
    if not response:
        return (custom_id, "failed", None, None, None, "missing_response",
                "the result line has neither a response nor an error",
                None, None, None, None, None)  # fmt: skip
    if status_code is None or status_code >= 400 or body.get("status") == "failed":
        detail = body.get("error")
        detail = detail if isinstance(detail, dict) else {"message": detail}
        code = detail.get("code") or detail.get("type") or f"http_{status_code}"
        message = detail.get("message") or f"HTTP {status_code}"
        return (custom_id, "failed", None, None, None, str(code), message,
                None, None, None, status_code, None)  # fmt: skip
    content, finish, model, prompt, completion, total, vectors = answer_fields(body)
    return (custom_id, "succeeded", content, finish, model, None, None, prompt,
            completion, total, status_code, vectors)  # fmt: skip


def answer_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    """``(content, finish_reason, model, prompt, completion, total tokens, vectors)`` of a
    successful body: chat, completions, embeddings or Responses."""
    if "choices" not in body:
        if is_embeddings_body(body):
            return embedding_fields(body)
        if body.get("object") == "response" or "output" in body:
            return response_fields(body)
    choices = body.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else choice.get("text")
    usage = body.get("usage") or {}
    return (content, choice.get("finish_reason"), body.get("model"), usage.get("prompt_tokens"),
            usage.get("completion_tokens"), usage.get("total_tokens"), None)  # fmt: skip


class _Message(msgspec.Struct, gc=False):
    content: Any = None


class _Choice(msgspec.Struct, gc=False):
    message: _Message | None = None
    text: Any = None
    finish_reason: Any = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class _Body(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    model: Any = None


class _Response(msgspec.Struct, gc=False):
    status_code: int | None = None
    body: _Body | None = None


class _Line(msgspec.Struct, gc=False):
    """The parts of a result line a chat or completions success needs; the decoder skips
    the rest without building it, and refuses a line of another shape."""

    custom_id: Any
    response: _Response | None = None
    error: Any = None


_SUCCESS = msgspec.json.Decoder(_Line)


_NO_USAGE = _Usage()


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


def _blocks(path: Path) -> Iterator[memoryview]:
    """The file a block of whole lines at a time (the last line may lack its newline);
    views of what was read, not copies."""
    with open(path, "rb") as f:
        while block := f.read(_BLOCK_BYTES):
            cut = block.rfind(b"\n") + 1
            while not cut and (more := f.read(_BLOCK_BYTES)):  # a line longer than a block
                block += more
                cut = block.rfind(b"\n") + 1
            cut = cut or len(block)
            f.seek(cut - len(block), 1)  # the part line is read again with the next block
            yield memoryview(block)[:cut]


def _parse_lines(lines: list[bytes]) -> list[tuple[Any, ...]]:
    """The non-blank lines of a block as ``_LINE_FIELDS`` tuples.

    The usual line, a complete chat or completions success, is decoded by ``_SUCCESS``
    (typed, every other field skipped) and read inline, the same fields as
    :func:`_fields`; any other line goes through orjson and :func:`_fields`.
    """
    rows: list[tuple[Any, ...]] = []
    append, decode, error = rows.append, _SUCCESS.decode, msgspec.MsgspecError
    for line in lines:
        try:
            record = decode(line)
            response = record.response
            if record.error is None and response is not None:
                status_code, body = response.status_code, response.body
                if (
                    status_code is not None
                    and status_code < 400
                    and body is not None
                    and body.choices
                ):
                    choice = body.choices[0]
                    message = choice.message
                    usage = body.usage or _NO_USAGE
                    append((record.custom_id, "succeeded",
                            choice.text if message is None else message.content,
                            choice.finish_reason, body.model, None, None, usage.prompt_tokens,
                            usage.completion_tokens, usage.total_tokens, status_code,
                            None))  # fmt: skip
                    continue
        except error:
            if not line or line.isspace():
                continue
        append(_fields(orjson.loads(line)))
    return rows


def _parse_file(file: ResultFile) -> Iterator[pa.Table]:
    """One file's lines, a block at a time, as ``_chunk`` tables.

    Blocks go through Arrow's reader first (``arrow_lines``, a few blocks ahead on other
    threads), the lines it leaves through :func:`_parse_lines`. After a block Arrow could
    not take (it refused a line, or settled under half of them, as with embeddings) the
    rest of the file is parsed line by line.
    """
    path, parsed, arrow = Path(file.path), 0, True
    # (the lambda reads ``arrow`` as it is when each read is due)
    for block, reading in _read_ahead(_blocks(path), lambda: arrow):  # noqa: B023
        try:
            chunk = _block_chunk(block, reading.result() if arrow else None, file)
            arrow = chunk is not None
            if chunk is None:
                chunk = _lines_chunk(bytes(block).split(b"\n"), file)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            _raise_bad_line(path, parsed, bytes(block).split(b"\n"), exc)
        parsed += chunk.num_rows
        if chunk.num_rows:
            yield chunk


def _read_ahead(
    blocks: Iterator[memoryview], wanted: Callable[[], bool]
) -> Iterator[tuple[memoryview, Future[arrow_lines.ArrowLines | None]]]:
    """Each block with Arrow's read of it, started a few blocks ahead on up to
    ``_READERS`` threads (no more than Arrow's CPU count); no read is started once
    ``wanted()`` is false (and those begun are cancelled when the blocks are not all
    read)."""
    workers = max(1, min(_READERS, pa.cpu_count()))
    ahead: deque[tuple[memoryview, Future[arrow_lines.ArrowLines | None]]] = deque()
    with ThreadPoolExecutor(workers) as pool:
        try:
            for block in blocks:
                reading: Future[arrow_lines.ArrowLines | None] = Future()
                if wanted():
                    reading = pool.submit(arrow_lines.read_block, block)
                ahead.append((block, reading))
                if len(ahead) > workers:
                    yield ahead.popleft()
            while ahead:
                yield ahead.popleft()
        finally:
            for _, reading in ahead:
                reading.cancel()


def _lines_chunk(lines: list[bytes], file: ResultFile) -> pa.Table:
    rows = _parse_lines(lines)
    return _chunk(rows, file.batch_id, file.attempt) if rows else CHUNK_SCHEMA.empty_table()


def _block_chunk(
    block: memoryview, fast: arrow_lines.ArrowLines | None, file: ResultFile
) -> pa.Table | None:
    """A block's lines as a ``_chunk`` table, the usual lines as Arrow read them
    (``fast``); None when Arrow is off, refused the block, or settled under half its
    lines."""
    if fast is None or 2 * fast.claimed.sum() < len(fast.claimed):
        return None
    count = len(fast.claimed)
    columns = {
        **fast.columns,
        EMBEDDING_COLUMN: pa.nulls(count, CHUNK_SCHEMA.field(EMBEDDING_COLUMN).type),
        "batch_id": pa.repeat(pa.scalar(file.batch_id, pa.large_string()), count),
        "attempt": pa.repeat(pa.scalar(file.attempt, pa.int64()), count),
    }
    table = pa.Table.from_arrays([columns[f.name] for f in CHUNK_SCHEMA], schema=CHUNK_SCHEMA)
    left = ~fast.claimed
    if not left.any():
        return table
    lines = _nonblank_lines(block, left, count)
    if lines is None:
        return None
    others = _lines_chunk(lines, file).combine_chunks()
    if others.num_rows != len(lines) or others[EMBEDDING_COLUMN].null_count < len(lines):
        return None  # (vectors among chat answers: the whole block line by line)
    mask = pa.array(left)
    return pa.Table.from_arrays(
        [
            column
            if name == EMBEDDING_COLUMN
            else pc.replace_with_mask(column, mask, others[name].chunk(0))
            for name, column in zip(table.column_names, table.columns, strict=True)
        ],
        schema=CHUNK_SCHEMA,
    )


def _nonblank_lines(block: memoryview, wanted: np.ndarray, count: int) -> list[bytes] | None:
    """The non-blank lines of ``block`` where ``wanted`` is true (one flag per non-blank
    line), or None when the block does not have ``count`` non-blank lines."""
    view = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(view == 10)
    if not ends.size or ends[-1] != len(block) - 1:
        ends = np.append(ends, len(block))
    starts = np.concatenate(([0], ends[:-1] + 1))
    filled = ends > starts
    if filled.sum() != count:  # a line of spaces, or a lone carriage return
        lines = [line for line in bytes(block).split(b"\n") if line and not line.isspace()]
        return [lines[i] for i in np.flatnonzero(wanted)] if len(lines) == count else None
    starts, ends = starts[filled][wanted], ends[filled][wanted]
    pairs = zip(starts.tolist(), ends.tolist(), strict=True)
    return [bytes(block[start:end]) for start, end in pairs]


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


def _text_array(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. content as a list of parts: keep JSON
        return pa.array(
            [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values],
            pa.large_string(),
        )


def _chunk(rows: list[tuple[Any, ...]], batch_id: str, attempt: int) -> pa.Table:
    """Parsed rows of one file as an Arrow table of ``CHUNK_SCHEMA``."""
    columns = dict(zip(_LINE_FIELDS, zip(*rows, strict=True), strict=True))
    ids = columns["custom_id"]
    if set(map(type, ids)) != {str}:
        columns["custom_id"] = [str(c) for c in ids]
    count = len(rows)
    columns["batch_id"] = pa.repeat(pa.scalar(batch_id, pa.large_string()), count)
    columns["attempt"] = pa.repeat(pa.scalar(attempt, pa.int64()), count)
    vectors = columns[EMBEDDING_COLUMN]
    columns[EMBEDDING_COLUMN] = (
        embedding_array(vectors)
        if any(map(operator.is_not, vectors, itertools.repeat(None)))
        else pa.nulls(count, CHUNK_SCHEMA.field(EMBEDDING_COLUMN).type)
    )
    arrays = [
        columns[field.name]
        if isinstance(columns[field.name], pa.Array)
        else pa.array(columns[field.name], pa.int64())
        if field.name in _INT_COLUMNS
        else _text_array(columns[field.name])
        for field in CHUNK_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=CHUNK_SCHEMA)


def parse_chunks(files: Sequence[ResultFile]) -> Iterator[pa.Table]:
    """Every line of every file, in file order, as Arrow tables of a few thousand rows.

    Each table has ``CHUNK_SCHEMA``: ``RESULT_COLUMNS`` with ``embedding`` after
    ``content`` (null where a line has no vectors). Only one block of a file is held as
    Python objects at a time, so memory follows the Arrow columns, not the file.

    Args:
        files: The downloaded files, read in this order.

    Yields:
        One table per block of lines (blank lines skipped).

    Raises:
        ValueError: A line is not a batch result (naming the file and line number).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "errors.jsonl"
        >>> _ = path.write_bytes(b'{"custom_id":"a","response":null,'
        ...     b'"error":{"code":"batch_cancelled","message":"no"}}\\n')
        >>> [t["status"].to_pylist() for t in parse_chunks([ResultFile(path, "error", "b", 1)])]
        [['cancelled']]
    """
    with _gc_paused():
        for file in files:
            yield from _parse_file(file)


def without_unused_embeddings(table: pa.Table) -> pa.Table:
    """``table`` without its ``embedding`` column when no row has vectors."""
    column = table[EMBEDDING_COLUMN]
    if column.null_count < len(column):
        return table
    return table.remove_column(table.schema.get_field_index(EMBEDDING_COLUMN))


def _parse_table(files: Sequence[ResultFile]) -> pa.Table:
    """Every line of every file, in file order, as one Arrow table of ``RESULT_COLUMNS``.

    The chunks are combined a column at a time, each column's pieces let go once it is
    one array: the peak is the chunks plus one column, not the chunks twice over."""
    pieces = {field.name: [] for field in CHUNK_SCHEMA}
    for chunk in parse_chunks(files):
        for name, column in zip(chunk.column_names, chunk.columns, strict=True):
            pieces[name].extend(column.chunks)
        del chunk, column
    columns = []
    for field in CHUNK_SCHEMA:
        columns.append(pa.concat_arrays(pieces.pop(field.name) or [pa.array([], field.type)]))
    table = pa.Table.from_arrays(columns, schema=CHUNK_SCHEMA)
    return without_unused_embeddings(table)


def _parsed(files: Sequence[ResultFile], structured: StructuredOutput | None) -> pa.Table:
    """``_parse_table``, then the answers that do not validate made ``invalid_output``."""
    table = _parse_table(files)
    return table if structured is None else structured.mark_invalid(table)[0]


def parse_result_files(
    files: Sequence[ResultFile], structured: StructuredOutput | None = None
) -> pd.DataFrame:
    """Parse output and error files into one row per result line (``RESULT_COLUMNS``).

    ``status`` is ``succeeded`` (status code below 400, no error), ``expired``
    (``batch_expired``), ``cancelled`` (``batch_cancelled``) or ``failed`` (any other
    error, or ``error: null`` with a status code of 400 or more: the code and message
    then come from ``response.body.error``). With ``structured``, a success whose
    content does not validate is ``invalid_output`` (see ``structured_output``). No files
    gives an empty frame.

    Args:
        files: The downloaded files, read in this order.
        structured: The answers' expected shape, if any.

    Returns:
        One row per line, ``RESULT_COLUMNS``, with each file's ``batch_id`` and ``attempt``.

    Raises:
        ValueError: A line is not a batch result (naming the file and line number).

    Example:
        >>> import tempfile, os
        >>> path = Path(tempfile.mkdtemp()) / "errors.jsonl"
        >>> _ = path.write_bytes(b'{"id":"r1","custom_id":"a","response":null,'
        ...     b'"error":{"code":"batch_expired","message":"expired"}}\\n')
        >>> parse_result_files([ResultFile(path, "error", "batch_1", 1)])[
        ...     ["custom_id", "status", "error_code"]].values.tolist()
        [['a', 'expired', 'batch_expired']]
    """
    return to_frame(_parsed(files, structured))


def collect_results(
    files: Sequence[ResultFile],
    custom_ids: Sequence[str] | pa.Array,
    inputs: pd.DataFrame | None = None,
    id_column: str = "custom_id",
    structured: StructuredOutput | None = None,
) -> pd.DataFrame:
    """Parse, merge attempts and join: ``join_results(parse_result_files(files), ...)``.

    Faster than the two calls: rows are picked in Arrow before any DataFrame is built.

    Args:
        files: The downloaded output and error files of every attempt.
        custom_ids: The requested ids; one row each, in this order (an Arrow string
            array is used as it is, without a Python string per id).
        inputs: Rows whose columns are appended, matched on ``inputs[id_column]``.
        id_column: The column of ``inputs`` holding the ids.
        structured: The answers' expected shape: answers are validated before the
            attempts are merged (a valid answer beats an invalid one) and the winners'
            fields become typed columns, before the input columns.

    Returns:
        One row per requested id (see ``join_results``).

    Raises:
        ValueError: An unreadable line, or ``inputs`` repeating an id it is matched by.

    Example:
        >>> collect_results([], ["a"]).status.tolist()
        ['missing']
    """
    wanted = id_array(custom_ids)
    table = _parse_table(files)
    if structured is None:
        return with_inputs(to_frame(join_table(table, wanted)), wanted, inputs, id_column)
    table, values = structured.mark_invalid(table)  # validated before the merge
    table = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
    joined = join_table(table, wanted)
    rows = joined[_ROW].to_pylist()
    frame = structured.add_columns(
        to_frame(joined.drop_columns([_ROW])),
        [None if row is None else values[row] for row in rows],
    )
    return with_inputs(frame, wanted, inputs, id_column)
