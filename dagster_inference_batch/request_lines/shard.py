"""Request lines split into batches: by model, then under the count and byte limits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .encoded import EncodedRequests, Shard
from .validate import Problems, where
from .write import jsonl_sha256

DEFAULT_MAX_REQUESTS = 50_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024


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


def _check_line_fits(encoded: EncodedRequests, sizes: np.ndarray, max_bytes: int) -> None:
    """Raise for every line that alone is over the batch byte limit."""
    problems = Problems()
    problems.add_rows(
        np.flatnonzero(sizes > max_bytes).tolist(),
        lambda i: (
            f"{where(i + 1, encoded.custom_ids[i])}: line is {sizes[i]} bytes with "
            f"its newline, over the {max_bytes}-byte batch limit"
        ),
        range(1, len(sizes) + 1),
    )
    problems.raise_if_any()


def _model_groups(models: list[str]) -> tuple[list[object], list[np.ndarray]]:
    """The distinct models in order of first appearance, and each one's line positions."""
    codes, uniques = pd.factorize(pd.Series(models, dtype=object), sort=False)
    if len(uniques) == 1:
        return list(uniques), [np.arange(len(models))]
    return list(uniques), [np.flatnonzero(codes == k) for k in range(len(uniques))]


def shard_requests(
    encoded: EncodedRequests,
    *,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Shard]:
    """Split request lines into batches: by model first, then under both limits.

    Each model's lines (models in order of first appearance) go into the fewest shards
    under both limits, balanced, input order kept within a shard. Every line lands in
    exactly one shard.

    Args:
        encoded: The validated request lines.
        max_requests: The most lines in one shard.
        max_bytes: The largest shard, in JSONL bytes with newlines.

    Returns:
        The shards, ``index`` counting from 0.

    Raises:
        ValueError: If a limit is not positive.
        InvalidBatchInput: If a single line (with its newline) is over ``max_bytes``.

    Example:
        >>> from dagster_inference_batch.request_lines import build_requests
        >>> df = pd.DataFrame({"custom_id": list("abcde"),
        ...                    "body": [{"model": m} for m in "mmmnm"]})
        >>> enc = build_requests(df, body_column="body")
        >>> [(s.model, s.positions) for s in shard_requests(enc, max_requests=2)]
        [('m', [0, 1]), ('m', [2, 4]), ('n', [3])]
    """
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("max_requests and max_bytes must be positive")
    sizes = np.fromiter(map(len, encoded.lines), dtype=np.int64, count=len(encoded)) + 1
    _check_line_fits(encoded, sizes, max_bytes)
    shards: list[Shard] = []
    for model, members in zip(*_model_groups(encoded.models), strict=True):
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
                    sha256=jsonl_sha256(encoded.lines, positions),
                )
            )
            start = end
    return shards
