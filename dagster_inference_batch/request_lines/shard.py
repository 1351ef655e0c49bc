"""Request lines split into batches: by model, then under the count and byte limits."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from .encoded import EncodedRequests, Shard
from .validate import Problems, where
from .write import jsonl_sha256

DEFAULT_MAX_REQUESTS = 50_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024


Budget = tuple[np.ndarray, int]  # (cumulative weight from 0, the most one chunk may hold)


def _budget(weights: np.ndarray, cap: int) -> Budget:
    """A per-chunk limit on the sum of ``weights`` (bytes, embedding inputs)."""
    return np.concatenate(([0], np.cumsum(weights))), cap


def _greedy_cuts(n: int, max_requests: int, budgets: list[Budget]) -> list[int]:
    """End offsets of contiguous chunks filled greedily under every limit (fewest chunks)."""
    start, cuts = 0, []
    while start < n:
        end = min(start + max_requests, n)
        for cumulative, cap in budgets:
            end = min(end, int(np.searchsorted(cumulative, cumulative[start] + cap, "right")) - 1)
        cuts.append(end)
        start = end
    return cuts


def _balanced_cuts(
    sizes: np.ndarray, max_requests: int, max_bytes: int, inputs: Budget | None = None
) -> list[int]:
    """Fewest contiguous chunks under every limit, as even as the limits allow.

    Even by count when that fits the byte (and embedding input) limits; otherwise the
    smallest byte cap that still needs no more chunks (a binary search over greedy fills).
    """
    extra = [inputs] if inputs is not None else []
    bytes_budget = _budget(sizes, max_bytes)
    count = len(_greedy_cuts(len(sizes), max_requests, [bytes_budget, *extra]))
    n = len(sizes)
    cuts = [(n * (k + 1)) // count for k in range(count)]
    if all(np.diff(cum[[0, *cuts]]).max() <= cap for cum, cap in [bytes_budget, *extra]):
        return cuts
    cumulative = bytes_budget[0]
    low, high = max(int(math.ceil(cumulative[-1] / count)), int(sizes.max())), max_bytes
    while low < high:
        mid = (low + high) // 2
        if len(_greedy_cuts(n, max_requests, [(cumulative, mid), *extra])) <= count:
            high = mid
        else:
            low = mid + 1
    return _greedy_cuts(n, max_requests, [(cumulative, low), *extra])


def _refuse_oversized(
    encoded: EncodedRequests, values: np.ndarray, cap: int, over: Callable[[int], str]
) -> None:
    """Raise, naming each line and custom_id, for every line whose ``values`` entry alone
    is over ``cap``; ``over(value)`` says what the value is."""
    problems = Problems()
    problems.add_rows(
        np.flatnonzero(values > cap).tolist(),
        lambda i: f"{where(i + 1, encoded.custom_ids[i])}: {over(int(values[i]))}",
        range(1, len(values) + 1),
    )
    problems.raise_if_any()


def _model_groups(models: list[str]) -> tuple[list[object], list[np.ndarray]]:
    """The distinct models in order of first appearance, and each one's line positions."""
    codes, uniques = pd.factorize(pd.Series(models, dtype=object), sort=False)
    if len(uniques) == 1:
        return list(uniques), [np.arange(len(models))]
    return list(uniques), [np.flatnonzero(codes == k) for k in range(len(uniques))]


def _input_budget(encoded: EncodedRequests, cap: int | None) -> np.ndarray | None:
    """Each line's embedding inputs when ``cap`` applies (checked against it), else None."""
    if cap is None:
        return None
    if cap < 1:
        raise ValueError("max_embedding_inputs must be positive")
    counts = np.asarray(encoded.embedding_input_counts, dtype=np.int64)
    _refuse_oversized(
        encoded,
        counts,
        cap,
        lambda n: (
            f"{n} embedding inputs in one line, over the {cap}-input batch limit "
            "(max_embedding_inputs)"
        ),
    )
    return counts


def shard_requests(
    encoded: EncodedRequests,
    *,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_embedding_inputs: int | None = None,
) -> list[Shard]:
    """Split request lines into batches: by model first, then under every limit.

    Each model's lines (models in order of first appearance) go into the fewest shards
    under the limits, balanced, input order kept within a shard. Every line lands in
    exactly one shard.

    Args:
        encoded: The validated request lines.
        max_requests: The most lines in one shard.
        max_bytes: The largest shard, in JSONL bytes with newlines.
        max_embedding_inputs: The most embedding inputs in one shard (a list input
            counts each element; see ``EncodedRequests.embedding_input_counts``), or
            None for no such limit.

    Returns:
        The shards, ``index`` counting from 0.

    Raises:
        ValueError: If a limit is not positive.
        InvalidBatchInput: If a single line (with its newline) is over ``max_bytes``, or
            carries more than ``max_embedding_inputs`` inputs (naming its ``custom_id``).

    Example:
        >>> from dagster_inference_batch.request_lines import build_requests
        >>> df = pd.DataFrame({"custom_id": list("abcde"),
        ...                    "body": [{"model": m} for m in "mmmnm"]})
        >>> enc = build_requests(df, body_column="body")
        >>> [(s.model, s.positions) for s in shard_requests(enc, max_requests=2)]
        [('m', [0, 1]), ('m', [2, 4]), ('n', [3])]
        >>> bodies = [{"model": "e", "input": t} for t in (["a", "b"], "c", ["d", "e"])]
        >>> enc = build_requests(pd.DataFrame({"custom_id": list("xyz"), "body": bodies}),
        ...                      endpoint="/v1/embeddings", body_column="body")
        >>> [s.positions for s in shard_requests(enc, max_embedding_inputs=3)]
        [[0], [1, 2]]
    """
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("max_requests and max_bytes must be positive")
    sizes = np.fromiter(map(len, encoded.lines), dtype=np.int64, count=len(encoded)) + 1
    _refuse_oversized(
        encoded,
        sizes,
        max_bytes,
        lambda n: f"line is {n} bytes with its newline, over the {max_bytes}-byte batch limit",
    )
    counts = _input_budget(encoded, max_embedding_inputs)
    shards: list[Shard] = []
    for model, members in zip(*_model_groups(encoded.models), strict=True):
        inputs = None if counts is None else _budget(counts[members], max_embedding_inputs)
        start = 0
        for end in _balanced_cuts(sizes[members], max_requests, max_bytes, inputs):
            positions = members[start:end].tolist()
            shards.append(
                Shard(
                    index=len(shards),
                    model=str(model),
                    positions=positions,
                    request_count=len(positions),
                    nbytes=int(sizes[members[start:end]].sum()),
                    sha256=jsonl_sha256(encoded.lines, positions),
                )
            )
            start = end
    return shards
