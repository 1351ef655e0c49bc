"""Writing request lines as JSONL, and hashing exactly the bytes written."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .encoded import EncodedRequests

CHUNK_LINES = 8_192  # lines per encode / write / hash step


def jsonl_chunks(lines: list[bytes], positions: Sequence[int] | None) -> Iterator[bytes]:
    """The JSONL bytes of ``lines`` in chunks, each line ending in a newline.

    Args:
        lines: Encoded lines, without newlines.
        positions: The subset to take, in this order; None for all lines.

    Yields:
        Consecutive pieces of the file.
    """
    chosen = lines if positions is None else [lines[i] for i in positions]
    for start in range(0, len(chosen), CHUNK_LINES):
        chunk = chosen[start : start + CHUNK_LINES]
        chunk.append(b"")  # a final newline without copying the joined chunk again
        yield b"\n".join(chunk)


def jsonl_sha256(lines: list[bytes], positions: Sequence[int] | None) -> str:
    """Hex sha256 of the JSONL file :func:`jsonl_chunks` gives.

    Args:
        lines: Encoded lines, without newlines.
        positions: The subset to take, in this order; None for all lines.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for chunk in jsonl_chunks(lines, positions):
        digest.update(chunk)
    return digest.hexdigest()


def write_jsonl(
    encoded: EncodedRequests, path: str | Path, positions: Sequence[int] | None = None
) -> None:
    """Write the lines (or the subset at ``positions``, in that order) as JSONL.

    Args:
        encoded: The validated request lines.
        path: The file to create or overwrite.
        positions: Indexes into ``encoded.lines`` to write, e.g. a
            :class:`Shard`'s ``positions``; None writes every line.

    Example:
        >>> from dagster_inference_batch.request_lines import build_requests
        >>> enc = build_requests(pd.DataFrame({"custom_id": ["a", "b"], "p": ["x", "y"]}),
        ...                      model="m", prompt_column="p")
        >>> write_jsonl(enc, "batch.jsonl", positions=[1])
        >>> open("batch.jsonl", "rb").read()
        b'{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"y"}]}}\\n'
    """
    with open(path, "wb") as f:
        for chunk in jsonl_chunks(encoded.lines, positions):
            f.write(chunk)
