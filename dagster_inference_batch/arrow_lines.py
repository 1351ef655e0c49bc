"""Result lines read by Arrow's JSON reader: the fast path for the usual lines.

A block of result lines is parsed in C++ (one block per thread: ``results.py`` reads a
few blocks ahead) into only the fields the usual lines need, and the lines whose outcome
the columns alone settle are *claimed*:

- a chat or completions success (``error`` null, status code below 400, a first choice):
  content from ``message.content``, else ``text``;
- an error line whose ``error`` has a ``code`` (``batch_expired``, ``batch_cancelled``,
  or any other: failed);
- a failed request (``error`` null, status code 400 or more): code and message from the
  body's ``error`` (``code``, else ``type``, else ``http_<status>``).

Every other line (a failed request, an embeddings or Responses body, anything odd) is
left to ``results.py``'s line-by-line parse, which defines what each line means; a block
Arrow refuses (a line that is not JSON, or a field of another type, such as content
given as a list of parts) is parsed there whole. The claimed rows' values are exactly
what that parse gives them (``tests/test_results_arrow_lines.py`` checks the two agree):
a change to how one of these lines is classified goes in both places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

_TEXT = pa.large_string()
_CHOICE = pa.struct(
    [
        ("message", pa.struct([("content", _TEXT)])),
        ("text", _TEXT),
        ("finish_reason", _TEXT),
    ]
)
_USAGE = pa.struct(
    [(name, pa.int64()) for name in ("prompt_tokens", "completion_tokens", "total_tokens")]
)
_FAILURE = pa.struct([("code", _TEXT), ("type", _TEXT), ("message", _TEXT)])
_BODY = pa.struct(
    [("choices", pa.list_(_CHOICE)), ("usage", _USAGE), ("model", _TEXT), ("error", _FAILURE)]
)
_LINE = pa.schema(
    [
        ("custom_id", _TEXT),
        ("response", pa.struct([("status_code", pa.int64()), ("body", _BODY)])),
        ("error", pa.struct([("code", _TEXT), ("message", _TEXT)])),
    ]
)
_PARSE = pj.ParseOptions(explicit_schema=_LINE, unexpected_field_behavior="ignore")
_ERROR_STATUS = {"batch_expired": "expired", "batch_cancelled": "cancelled"}


@dataclass(frozen=True)
class ArrowLines:
    """A block's non-blank lines as columns, and which of them are settled.

    ``columns`` maps each result field from ``custom_id`` to ``status_code`` (as in
    ``results.RESULT_COLUMNS``, without ``batch_id`` and ``attempt``) to an array over
    all the block's non-blank lines; only the rows where ``claimed`` is true hold their
    final values.
    """

    columns: dict[str, pa.Array]
    claimed: np.ndarray


def read_block(data: bytes | memoryview) -> ArrowLines | None:
    """Parse a block of whole result lines; None when Arrow refuses any line of it.

    Example:
        >>> block = read_block(b'{"custom_id":"a","response":null,'
        ...     b'"error":{"code":"batch_expired","message":"late"}}\\n')
        >>> block.columns["status"].to_pylist(), block.claimed.tolist()
        (['expired'], [True])
    """
    try:
        # the block as one chunk, on this thread (read_block runs on several at once)
        read = pj.ReadOptions(use_threads=False, block_size=max(len(data), 1))
        table = pj.read_json(pa.BufferReader(data), read_options=read, parse_options=_PARSE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return _classify(*(table[name].combine_chunks() for name in _LINE.names))


def _mask(values: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, null as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _first_choices(choices: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """Each row's first choice's content and finish reason (null where it has none), and
    where it has one."""
    has = _mask(pc.greater(pc.list_value_length(choices), 0))
    starts = np.asarray(choices.offsets)[:-1]
    values = choices.values
    has &= _mask(values.is_valid().take(pa.array(starts, mask=~has)))
    content, reason = _content(values), pc.struct_field(values, "finish_reason")
    return _spread(content, starts, has), _spread(reason, starts, has), has


def _spread(values: pa.Array, positions: np.ndarray, rows: np.ndarray) -> pa.Array:
    """``values.take(positions)`` where ``rows`` is true, null elsewhere.

    When the rows take consecutive values (one choice each, the usual answer), the text
    is not copied: the result's offsets point into ``values``' own bytes.
    """
    taken = positions[rows]
    if not taken.size:
        return pa.nulls(len(rows), values.type)
    # (positions of rows with a choice only grow, so first and last tell)
    consecutive = taken[-1] - taken[0] == taken.size - 1
    if not consecutive or not pa.types.is_large_string(values.type):
        return values.take(pa.array(positions, mask=~rows))
    first = int(taken[0])
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset :]
    ends = offsets[first + np.cumsum(rows)]
    valid = rows.copy()
    if values.null_count:
        valid[rows] = _mask(values.is_valid())[first : first + taken.size]
    return pa.LargeStringArray.from_buffers(
        len(rows),
        pa.py_buffer(np.concatenate(([offsets[first]], ends))),
        values.buffers()[2],
        pa.py_buffer(np.packbits(valid, bitorder="little")),
    )


def _classify(custom_id: pa.Array, response: pa.Array, error: pa.Array) -> ArrowLines:
    status_code = pc.struct_field(response, "status_code")
    body = pc.struct_field(response, "body")
    content, finish_reason, has_choice = _first_choices(pc.struct_field(body, "choices"))
    error_code = pc.struct_field(error, "code")
    named = _mask(custom_id.is_valid())
    no_error = named & _mask(error.is_null())
    succeeded = no_error & _mask(pc.less(status_code, 400)) & has_choice
    refused = no_error & _mask(pc.greater_equal(status_code, 400))
    errored = named & _mask(error_code.is_valid())
    usage = pc.struct_field(body, "usage")
    answer = pa.array(succeeded)

    def answered(values: pa.Array) -> pa.Array:
        """``values`` where the line succeeded, else null (most often already so, and
        then not copied: ``content`` is most of a block's bytes)."""
        if not (_mask(values.is_valid()) & ~succeeded).any():
            return values
        return pc.if_else(answer, values, pa.scalar(None, values.type))

    columns = {
        "custom_id": custom_id,
        "status": pc.if_else(answer, pa.scalar("succeeded", _TEXT), _error_status(error_code)),
        "content": answered(content),
        "finish_reason": answered(finish_reason),
        "model": answered(pc.struct_field(body, "model")),
        **_failures(error, body, status_code, refused),
        **{name: answered(pc.struct_field(usage, name)) for name in _USAGE.names},
        "status_code": status_code,
    }
    return ArrowLines(columns, succeeded | errored | refused)


def _content(choice: pa.Array) -> pa.Array:
    """A choice's ``message.content``, else its ``text`` (a chat or a completions answer);
    a block of one kind only is not copied."""
    message, text = pc.struct_field(choice, "message"), pc.struct_field(choice, "text")
    if text.null_count == len(text):
        return pc.struct_field(message, "content")
    if message.null_count == len(message):
        return text
    return pc.if_else(message.is_null(), text, pc.struct_field(message, "content"))


def _failures(
    error: pa.Array, body: pa.Array, status_code: pa.Array, refused: np.ndarray
) -> dict[str, pa.Array]:
    """``error_code`` and ``error_message``: the error line's, or for a failed request
    (``refused``) the body's (worked out for those rows only)."""
    code, message = pc.struct_field(error, "code"), pc.struct_field(error, "message")
    if refused.any():
        rows = pa.array(refused)
        detail = pc.struct_field(body, "error").filter(rows)
        failure_code, failure_message = _failure(detail, status_code.filter(rows))
        code = pc.replace_with_mask(code, rows, failure_code)
        message = pc.replace_with_mask(message, rows, failure_message)
    return {"error_code": code, "error_message": message}


def _error_status(code: pa.Array) -> pa.Array:
    """``expired`` / ``cancelled`` for those codes, ``failed`` for any other."""
    status = pa.repeat(pa.scalar("failed", _TEXT), len(code))
    for error, name in _ERROR_STATUS.items():
        status = pc.if_else(_mask(pc.equal(code, error)), pa.scalar(name, _TEXT), status)
    return status


def _filled(values: pa.Array) -> np.ndarray:
    """Where a text value is there and not empty (what Python's ``or`` keeps)."""
    return _mask(pc.not_equal(values, ""))


def _failure(detail: pa.Array, status_code: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A failed request's error code (the body's ``error.code``, else its ``type``, else
    ``http_<status>``) and message (``error.message``, else ``HTTP <status>``)."""
    status = pc.cast(status_code, _TEXT)
    code, kind, message = (pc.struct_field(detail, name) for name in _FAILURE.names)
    nothing = pa.scalar("", _TEXT)
    by_status = pc.binary_join_element_wise(pa.scalar("http_", _TEXT), status, nothing)
    code = pc.if_else(_filled(code), code, pc.if_else(_filled(kind), kind, by_status))
    default = pc.binary_join_element_wise(pa.scalar("HTTP ", _TEXT), status, nothing)
    return code, pc.if_else(_filled(message), message, default)
