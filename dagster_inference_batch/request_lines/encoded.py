"""The records request lines travel in: all validated lines, and one batch's share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .write import jsonl_sha256


@dataclass(frozen=True)
class EncodedRequests:
    """Validated request lines, ready to shard and write.

    Made by :func:`build_requests` or :func:`encode_requests`; the lists run in
    parallel, one entry per line.

    Attributes:
        endpoint: The url every line posts to.
        custom_ids: Each line's ``custom_id``.
        lines: Each line as compact JSON, without a newline.
        models: Each line's ``body.model``.

    Example:
        >>> from dagster_inference_batch import build_requests
        >>> enc = build_requests(pd.DataFrame({"custom_id": ["a"], "prompt": ["Hi"]}),
        ...                      model="m", prompt_column="prompt")
        >>> enc.lines[0]
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"Hi"}]}}'
        >>> len(enc), enc.nbytes, enc.models
        (1, 128, ['m'])
    """

    endpoint: str
    custom_ids: list[str]
    lines: list[bytes]
    models: list[str]

    def __len__(self) -> int:
        return len(self.lines)

    @cached_property
    def nbytes(self) -> int:
        """Size of the JSONL file holding every line (each line plus its newline).

        Returns:
            The byte count :func:`write_jsonl` writes for all lines.
        """
        return sum(map(len, self.lines)) + len(self.lines)

    def sha256(self) -> str:
        """Hex sha256 of the JSONL bytes :func:`write_jsonl` writes for all lines.

        Returns:
            The hex digest.
        """
        return jsonl_sha256(self.lines, None)


@dataclass(frozen=True)
class Shard:
    """One batch worth of request lines, made by :func:`shard_requests`.

    Attributes:
        index: Its place among the shards, from 0.
        model: The ``body.model`` all its lines share.
        positions: Indexes into ``EncodedRequests.lines``, in input order.
        request_count: How many lines it holds.
        nbytes: Its JSONL size, newlines included.
        sha256: Hex sha256 of its JSONL bytes.
    """

    index: int
    model: str | None
    positions: list[int]
    request_count: int
    nbytes: int
    sha256: str
