"""Run a function over items concurrently, starting no new item once time is up."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

_I = TypeVar("_I")
_R = TypeVar("_R")
GRACE_SECONDS = 10.0  # how long work started before the deadline may still finish
_NOT_REACHED = object()


def map_within_budget(
    fn: Callable[[_I], _R],
    items: Sequence[_I],
    *,
    budget_seconds: float,
    concurrency: int = 8,
) -> tuple[list[tuple[_I, _R | BaseException]], list[_I]]:
    """``(done, not_reached)``: each done item with its result or exception, in order.

    The first item always runs, so a tiny budget still makes progress. No item starts
    after ``budget_seconds``; items still running ``GRACE_SECONDS`` later are given up
    (and counted as not reached).

    Example:
        >>> map_within_budget(lambda x: x * 2, [1, 2], budget_seconds=5)
        ([(1, 2), (2, 4)], [])
    """
    deadline = time.monotonic() + budget_seconds

    def run(position: int, item: _I) -> object:
        if position > 0 and time.monotonic() >= deadline:
            return _NOT_REACHED
        return fn(item)

    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items))))
    try:
        futures = [pool.submit(run, i, item) for i, item in enumerate(items)]
        wait(futures, timeout=max(0.0, deadline - time.monotonic()) + GRACE_SECONDS)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    done: list[tuple[_I, _R | BaseException]] = []
    not_reached: list[_I] = []
    for item, future in zip(items, futures, strict=True):
        if not future.done() or future.cancelled():
            not_reached.append(item)
        elif future.exception() is not None:
            done.append((item, future.exception()))  # type: ignore[arg-type]
        elif future.result() is _NOT_REACHED:
            not_reached.append(item)
        else:
            done.append((item, future.result()))  # type: ignore[arg-type]
    return done, not_reached
