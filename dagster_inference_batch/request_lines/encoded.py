"""The records request lines travel in: all validated lines, and one batch's share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .fingerprint import line_fingerprints
from .inputs import line_input_counts
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
        input_counts: Each line's embedding inputs when known (see
            :attr:`embedding_input_counts`); None works them out from the lines.
        fingerprint_list: Each line's fingerprint when known (see :attr:`fingerprints`).
        fingerprinter: Else how to work them out from the lines when first asked for (the
            fast builder's template); None parses each line's body.

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
    input_counts: list[int] | None = field(default=None, repr=False, compare=False)
    fingerprint_list: list[str] | None = field(default=None, repr=False, compare=False)
    fingerprinter: Callable[[Sequence[bytes]], list[str]] | None = field(
        default=None, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.lines)

    @cached_property
    def nbytes(self) -> int:
        """Size of the JSONL file holding every line (each line plus its newline).

        Returns:
            The byte count :func:`write_jsonl` writes for all lines.
        """
        return sum(map(len, self.lines)) + len(self.lines)

    @cached_property
    def embedding_input_counts(self) -> list[int]:
        """Embedding inputs per line: a string or a token list is one, a list counts
        each element; 0 for every line off the embeddings endpoint.

        Returns:
            One count per line.

        Example:
            >>> from dagster_inference_batch import build_requests
            >>> bodies = [{"model": "e", "input": ["a", "b"]}, {"model": "e", "input": "c"}]
            >>> enc = build_requests(pd.DataFrame({"custom_id": ["x", "y"], "body": bodies}),
            ...                      endpoint="/v1/embeddings", body_column="body")
            >>> enc.embedding_input_counts, enc.embedding_inputs
            ([2, 1], 3)
        """
        if self.input_counts is not None:
            return self.input_counts
        return line_input_counts(self.endpoint, self.lines)

    @property
    def embedding_inputs(self) -> int:
        """Embedding inputs in all lines, the figure a provider's per-batch cap counts.

        Returns:
            The sum of :attr:`embedding_input_counts` (0 off the embeddings endpoint).
        """
        return sum(self.embedding_input_counts)

    @cached_property
    def fingerprints(self) -> list[str]:
        """Each line's request fingerprint: its endpoint and canonical body, model
        included, ``custom_id`` aside (see ``fingerprint.py``).

        Returns:
            One 32-hex-digit fingerprint per line.

        Example:
            >>> from dagster_inference_batch import build_requests
            >>> df = pd.DataFrame({"custom_id": ["a", "b", "c"], "prompt": ["Hi", "Yo", "Hi"]})
            >>> prints = build_requests(df, model="m", prompt_column="prompt").fingerprints
            >>> prints[0] == prints[2] != prints[1]
            True
        """
        if self.fingerprint_list is not None:
            return self.fingerprint_list
        if self.fingerprinter is not None:
            return self.fingerprinter(self.lines)
        return line_fingerprints(self.endpoint, self.lines)

    def subset(self, positions: list[int]) -> EncodedRequests:
        """The lines at ``positions``, in that order.

        Args:
            positions: Indexes into the lines.

        Returns:
            A new ``EncodedRequests`` holding those lines only.
        """
        counts = self.input_counts
        return EncodedRequests(
            self.endpoint,
            [self.custom_ids[i] for i in positions],
            [self.lines[i] for i in positions],
            [self.models[i] for i in positions],
            [counts[i] for i in positions] if counts is not None else None,
            fingerprint_list=[self.fingerprints[i] for i in positions],
        )

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
