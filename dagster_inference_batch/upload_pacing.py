"""Upload pacing: file uploads spaced to the provider's upload limit, across processes.

Inference.net takes one batch file per minute per key. Before each upload the pacer reads
the provider's own file list (one page of ``GET /files``, in whatever order the provider
gives it) and takes the newest ``purpose=batch`` file's ``created_at``, so that every
process using the key queues behind the last upload, whoever made it; uploads of one client are taken one at a time. A 429 on upload with a
``Retry-After`` is a wait too. All waits of one upload together are bounded by
``max_upload_wait``; past it the upload fails with a ``BatchAPIError`` that says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import BatchAPIError

DEFAULT_MAX_UPLOAD_WAIT_SECONDS = 1800.0
UploadWaitHook = Callable[[float, str], None]
"""Called with (seconds, reason) before each wait for the upload limit."""


class UploadPacer:
    """Spaces one client's uploads ``interval`` seconds after the provider's latest.

    Args:
        interval: The least time between two uploads (0: no pacing, no listing).
        max_wait: The most seconds one upload may wait in all.
        latest_upload: The provider's newest batch file ``created_at`` (Unix seconds),
            or None when it lists none.
        log: Where each wait is logged.
        on_wait: Also told of each wait, as (seconds, reason).

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
    ) -> None:
        self.interval = max(0.0, interval)
        self.max_wait = max_wait
        self._latest_upload = latest_upload
        self._log = log
        self._on_wait = on_wait
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
            due = min(self._next_slot() - time.time(), self.interval)  # clock skew
            if due > 0:
                self.wait(due, "the provider's upload limit")
            try:
                yield
            finally:
                self._last_upload = time.time()

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
        """The earliest wall-clock time the next upload may start."""
        latest = [t for t in (self._last_upload, self._latest_upload()) if t is not None]
        return max(latest) + self.interval if latest else 0.0
