"""Successful answers other than chat and completions: embeddings and Responses bodies.

``results.py`` reads each line; a body without ``choices`` comes here. Embeddings become
float32 vectors (``encoding_format`` ``float`` or ``base64``, little-endian float32), held
in Arrow as a list of vectors per row until the results frame is built, where a row
holds one 1-D array (one input) or a 2-D array, one row per input (a list input).
Responses bodies give their ``output_text`` as ``content``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

EMBEDDING_COLUMN = "embedding"


def _vector(value: Any) -> np.ndarray:
    """One embedding: a base64 string of little-endian float32, or a list of numbers."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def embedding_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    """``(content, finish_reason, model, prompt, completion, total tokens, vectors)`` of a
    ``CreateEmbeddingResponse``; ``vectors`` is 2-D float32, one row per input by index.

    Args:
        body: The response body (``object: list`` with ``data`` of embeddings).

    Returns:
        The fields; content and finish_reason are None, completion tokens 0.

    Raises:
        ValueError: The vectors of one answer differ in length.
    """
    data = sorted(body["data"], key=lambda item: item.get("index", 0))
    vectors = np.stack([_vector(item["embedding"]) for item in data])
    usage = body.get("usage") or {}
    prompt = usage.get("prompt_tokens")
    total = usage.get("total_tokens", prompt)
    return (None, None, body.get("model"), prompt, 0, total, vectors)


def response_fields(body: dict[str, Any]) -> tuple[Any, ...]:
    """``(content, finish_reason, model, input, output, total tokens, None)`` of a
    Responses API ``response`` object.

    ``content`` joins the ``output_text`` parts of every output message (None if there
    are none); ``finish_reason`` is ``stop`` for a completed response, ``length`` when
    it stopped at ``max_output_tokens``, otherwise the reason or status given.

    Args:
        body: The response body (``object: response``).

    Returns:
        The fields.
    """
    texts = [
        part.get("text") or ""
        for item in body.get("output") or []
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    status = body.get("status")
    reason = (body.get("incomplete_details") or {}).get("reason")
    finish = "stop" if status == "completed" else reason or status
    finish = "length" if finish == "max_output_tokens" else finish
    usage = body.get("usage") or {}
    tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
    total = usage.get("total_tokens")
    if total is None and tokens_in is not None and tokens_out is not None:
        total = tokens_in + tokens_out
    content = "".join(texts) if texts else None
    return (content, finish, body.get("model"), tokens_in, tokens_out, total, None)


def is_embeddings_body(body: dict[str, Any]) -> bool:
    """Whether a body is a ``CreateEmbeddingResponse`` (``object: list`` with ``data``)."""
    return body.get("object") == "list" and isinstance(body.get("data"), list)


def embedding_array(values: Sequence[np.ndarray | None]) -> pa.Array:
    """Arrow ``large_list<large_list<float32>>`` of per-row vectors (None stays null).

    Args:
        values: Per row: a 1-D vector or a 2-D array of vectors (a list or an
            ndarray); anything else (None, NaN) is null.

    Returns:
        One list of vectors per row, built from offsets (no per-number conversion).
    """
    rows = [
        np.atleast_2d(np.asarray(v, dtype=np.float32))
        if isinstance(v, (np.ndarray, list))
        else None
        for v in values
    ]
    present = [r for r in rows if r is not None]
    outer = np.zeros(len(rows) + 1, dtype=np.int64)
    outer[1:] = np.cumsum([0 if r is None else len(r) for r in rows])
    widths = [r.shape[1] for r in present for _ in range(len(r))]
    inner = np.concatenate(([0], np.cumsum(widths, dtype=np.int64))).astype(np.int64)
    flat = np.concatenate([r.ravel() for r in present]) if present else np.zeros(0, np.float32)
    vectors = pa.LargeListArray.from_arrays(pa.array(inner), pa.array(flat, pa.float32()))
    mask = pa.array([r is None for r in rows])
    return pa.LargeListArray.from_arrays(pa.array(outer), vectors, mask=mask)


def embedding_series(column: pa.ChunkedArray | pa.Array) -> pd.Series:
    """The results frame's ``embedding`` column from its Arrow form (zero-copy views).

    Args:
        column: Lists of vectors as made by :func:`embedding_array`.

    Returns:
        Per row: None, a 1-D float32 array (one input) or a 2-D one (several inputs).
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray | None] = []
    for chunk in chunks:
        outer = chunk.offsets.to_numpy()
        inner = chunk.values.offsets.to_numpy()
        flat = chunk.values.values.to_numpy(zero_copy_only=False)
        nulls = chunk.is_null().to_numpy(zero_copy_only=False)
        for i, null in enumerate(nulls):
            count = int(outer[i + 1] - outer[i])
            if null or count == 0:
                out.append(None)
                continue
            start, end = inner[outer[i]], inner[outer[i + 1]]
            block = flat[start:end].reshape(count, -1)
            out.append(block[0] if count == 1 else block)
    return pd.Series(out, dtype=object, name=EMBEDDING_COLUMN)


def embedding_dimension(frame: pd.DataFrame) -> int | None:
    """The vector length of a results frame's embeddings, for the results metadata.

    Args:
        frame: A results frame.

    Returns:
        The length of the first vector in ``embedding``, or None without embeddings.

    Example:
        >>> frame = pd.DataFrame({"embedding": [None, np.zeros(256, np.float32)]})
        >>> embedding_dimension(frame), embedding_dimension(pd.DataFrame({"content": ["hi"]}))
        (256, None)
    """
    if EMBEDDING_COLUMN not in frame.columns:
        return None
    for value in frame[EMBEDDING_COLUMN]:
        if value is not None:
            return int(np.shape(value)[-1])
    return None
