"""Upload pacing: file uploads spaced to the provider's upload limit, across processes.

Inference.net takes one batch file per minute per key. Before each upload the pacer reads
the provider's own file list (one page of ``GET /files``, in whatever order the provider
gives it) and takes the newest ``purpose=batch`` file's ``created_at``, so that every
process using the key queues behind the last upload, whoever made it; uploads of one
client are taken one at a time. When several wait at once, an ``UploadQueue`` shared by
them (in Dagster, the event log: ``upload_queue.py``) orders them: the one at place n
aims at the n-th free slot, and each wait is logged with its place. A 429 on upload
with a ``Retry-After`` is a wait too. All waits of one upload together are bounded by
``max_upload_wait``; past it the upload fails with a ``BatchAPIError`` that says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from .errors import BatchAPIError

DEFAULT_MAX_UPLOAD_WAIT_SECONDS = 1800.0
UploadWaitHook = Callable[[float, str], None]
"""Called with (seconds, reason) before each wait for the upload limit."""


class UploadQueue(Protocol):
    """Places in line for the upload limit, shared by every process using the key."""

    def join(self) -> str:
        """Take a place at the end; returns its ticket."""
        ...

    def leave(self, ticket: str) -> None:
        """Give up the place ``ticket``."""
        ...

    def waiting(self) -> list[tuple[str, float]]:
        """The places held, first in line first, as ``(ticket, joined at)``."""
        ...


class UploadPacer:
    """Spaces one client's uploads ``interval`` seconds after the provider's latest.

    Args:
        interval: The least time between two uploads (0: no pacing, no listing).
        max_wait: The most seconds one upload may wait in all.
        latest_upload: The provider's newest batch file ``created_at`` (Unix seconds),
            or None when it lists none.
        log: Where each wait is logged.
        on_wait: Also told of each wait, as (seconds, reason).
        queue: Orders the uploads that wait, across processes (None: this client's
            uploads are ordered, others' are met by the provider's 429s).

    Example:
        >>> import logging
        >>> pacer = UploadPacer(0.2, 5.0, lambda: None, logging.getLogger("demo"))
        >>> with pacer.turn():
        ...     pass
        >>> started = time.monotonic()
        >>> with pacer.turn():
        ...     time.monotonic() - started >= 0.15
        True
    """

    def __init__(
        self,
        interval: float,
        max_wait: float,
        latest_upload: Callable[[], float | None],
        log: logging.Logger,
        on_wait: UploadWaitHook | None = None,
        queue: UploadQueue | None = None,
    ) -> None:
        self.interval = max(0.0, interval)
        self.max_wait = max_wait
        self._latest_upload = latest_upload
        self._log = log
        self._on_wait = on_wait
        self._queue = queue
        self._lock = threading.Lock()
        self._last_upload: float | None = None  # this client's, wall clock
        self._per_upload = threading.local()  # seconds waited by the upload in this thread

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this upload's turn, then hold it while the upload runs.

        Raises:
            BatchAPIError: The wait would pass ``max_wait``.
        """
        self._per_upload.waited = 0.0
        if self.interval <= 0:
            yield
            return
        with self._lock:
            ticket = self._queue.join() if self._queue is not None else None
            try:
                while True:
                    ahead, length = self._standing(ticket)
                    slot_due = min(self._next_slot() - time.time(), self.interval + 1.0)  # skew
                    if ahead == 0 and slot_due <= 0:
                        break
                    self._wait_in_line(max(slot_due, 0.0) + ahead * self.interval, ahead, length)
                yield
            finally:
                self._last_upload = time.time()
                if ticket is not None:
                    self._queue.leave(ticket)

    def _standing(self, ticket: str | None) -> tuple[int, int]:
        """(places ahead of ``ticket``, places in all, counting it); a ticket no longer
        listed (gone stale) counts as last."""
        waiting = [t for t, _ in self._queue.waiting()] if self._queue is not None else []
        if ticket in waiting:
            return waiting.index(ticket), len(waiting)
        return len(waiting), len(waiting) + 1

    def _wait_in_line(self, due: float, ahead: int, length: int) -> None:
        """Sleep until this upload's slot (``due`` s away); with places ahead, at most one
        interval, after which the queue has moved. Logs the place when others wait too."""
        waited = getattr(self._per_upload, "waited", 0.0)
        place = f"; place {ahead + 1} of {length} in the upload queue" if length > 1 else ""
        if waited + due > self.max_wait:
            raise BatchAPIError(
                f"upload given up: its turn is {due:.0f} s away{place}, which would pass "
                f"max_upload_wait ({self.max_wait:.0f} s; {waited:.0f} s waited already)"
            )
        self.wait(
            due if ahead == 0 else min(due, self.interval), "the provider's upload limit" + place
        )

    def wait(self, seconds: float, reason: str) -> None:
        """Sleep ``seconds`` for ``reason``, logged; counted against ``max_wait``.

        Args:
            seconds: The wait.
            reason: Why, as in "waiting 43 s for <reason>".

        Raises:
            BatchAPIError: This upload's waits would pass ``max_wait``.
        """
        waited = getattr(self._per_upload, "waited", 0.0)
        if waited + seconds > self.max_wait:
            raise BatchAPIError(
                f"upload given up: waiting {seconds:.0f} s more for {reason} would pass "
                f"max_upload_wait ({self.max_wait:.0f} s; {waited:.0f} s waited already)"
            )
        self._log.info("waiting %.0f s for %s", seconds, reason)
        if self._on_wait is not None:
            self._on_wait(seconds, reason)
        time.sleep(seconds)
        self._per_upload.waited = waited + seconds

    def _next_slot(self) -> float:
        """The earliest wall-clock time the next upload may start.

        The provider's ``created_at`` is whole seconds: a newer file than this client's
        last upload may have come up to a second later, so its slot starts a second late.
        """
        latest = self._last_upload
        provider_latest = self._latest_upload()
        if provider_latest is not None and (latest is None or provider_latest > latest):
            latest = provider_latest + 1.0
        return latest + self.interval if latest is not None else 0.0
