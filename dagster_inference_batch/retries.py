"""Retry policy for Batch API calls: backoff on 429 (honouring Retry-After), 5xx,
timeouts and dropped connections; every other error goes straight to the caller.
"""

from __future__ import annotations

import email.utils
import importlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import openai

from .errors import BatchAPIError

T = TypeVar("T")
DEFAULT_MAX_RETRIES = 6
DEFAULT_BACKOFF_SECONDS = 0.5


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's transport errors: a stream cut short while it is being read
    surfaces as one of these, not as an openai error (openai 1.x uses httpx, later
    releases httpx2)."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    return tuple(found)


_RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIConnectionError,  # includes APITimeoutError
    *_transport_errors(),
)
_CAUGHT = (openai.APIError, *_transport_errors())


def is_retryable(error: BaseException) -> bool:
    """True for errors worth another try: 429, 5xx, timeouts, resets and cut streams."""
    if isinstance(error, _RETRYABLE):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's hint in seconds (``retry-after-ms``, or ``Retry-After`` as seconds or
    an HTTP date), when it gave one."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Example:
        >>> policy = RetryPolicy(max_retries=3, backoff_seconds=0.0)
        >>> policy.call(lambda: 42, what="answer")
        42
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    max_backoff_seconds: float = 30.0
    max_retry_after_seconds: float = 300.0  # a server's own hint is honoured up to this

    def delay(self, attempt: int, error: BaseException) -> float:
        hinted = retry_after_seconds(error)
        if hinted is not None:
            return min(hinted, self.max_retry_after_seconds)
        exponential = self.backoff_seconds * (2**attempt)
        return min(exponential, self.max_backoff_seconds) * random.uniform(0.5, 1.0)

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        before_retry: Callable[[], T | None] | None = None,
        logger: logging.Logger | None = None,
        redact: Callable[[str], str] = str,
    ) -> T:
        """Run ``fn`` with retries.

        ``before_retry`` runs before each retry; when it returns a value, that value is
        the answer (used to find a batch that a failed-looking create did make).
        """
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except _CAUGHT as error:
                status = getattr(error, "status_code", None)
                if not is_retryable(error):
                    raise BatchAPIError(
                        f"{what} failed: {redact(describe(error))}", status_code=status
                    ) from None
                if attempt == self.max_retries:
                    raise BatchAPIError(
                        f"{what} failed after {self.max_retries + 1} tries: "
                        f"{redact(describe(error))}",
                        status_code=status,
                    ) from None
                pause = self.delay(attempt, error)
                if logger is not None:
                    logger.info("%s: %s; retrying in %.1fs", what, redact(describe(error)), pause)
                time.sleep(pause)
                if before_retry is not None:
                    found = before_retry()
                    if found is not None:
                        return found
        raise AssertionError("unreachable")  # pragma: no cover


def describe(error: BaseException) -> str:
    """A short, single-line description of an API error."""
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return f"HTTP {status}: {message}" if status else f"{type(error).__name__}: {message}"
