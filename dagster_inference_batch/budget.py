"""Run a function over items concurrently, starting no new item once time is up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

_I = TypeVar("_I")
_R = TypeVar("_R")
GRACE_SECONDS = 5.0  # how long work started before the deadline may still finish
_NOT_REACHED = object()


def map_within_budget(
    fn: Callable[[_I], _R],
    items: Sequence[_I],
    *,
    budget_seconds: float,
    concurrency: int = 8,
    then: Callable[[], None] | None = None,
) -> tuple[list[tuple[_I, _R | BaseException]], list[_I]]:
    """Run ``fn`` over ``items`` on a thread pool, starting no item once time is up.

    The first item always runs, so a tiny budget still makes progress. No item starts
    after ``budget_seconds``; this returns at the latest ``GRACE_SECONDS`` later, and
    items still running then are given up (counted as not reached).

    Args:
        fn: The work for one item; an exception it raises is returned as its result.
        items: The items, in the order they should start.
        budget_seconds: Time after which no item starts.
        concurrency: Items run at once, at most.
        then: Runs exactly once, after every item that started has returned (closing
            the client ``fn`` uses, say): before this returns when none is still
            running, else in the thread of the last one to finish. So an item given up
            never finds its client closed under it, and the caller never waits for it.

    Returns:
        ``(done, not_reached)``: each done item with its result or exception, in order,
        and the items not started or given up.

    Example:
        >>> map_within_budget(lambda x: x * 2, [1, 2], budget_seconds=5)
        ([(1, 2), (2, 4)], [])
    """
    deadline = time.monotonic() + budget_seconds
    stopped = threading.Event()

    def run(position: int, item: _I) -> object:
        if stopped.is_set() or (position > 0 and time.monotonic() >= deadline):
            return _NOT_REACHED
        return fn(item)

    futures: list[Future[object]] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items))))
    try:
        futures = [pool.submit(run, i, item) for i, item in enumerate(items)]
        wait(futures, timeout=max(0.0, deadline - time.monotonic()) + GRACE_SECONDS)
    finally:
        stopped.set()  # nothing starts from here on
        pool.shutdown(wait=False, cancel_futures=True)
        _when_all_done(futures, then)
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


def _when_all_done(futures: list[Future[object]], then: Callable[[], None] | None) -> None:
    """Call ``then`` once every future is done (at once if they all are)."""
    if then is None:
        return
    pending = [f for f in futures if not f.done()]
    if not pending:
        then()
        return
    lock = threading.Lock()
    left = [len(pending)]

    def one_done(_: Future[object]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    for future in pending:
        future.add_done_callback(one_done)  # runs at once if it finished meanwhile
