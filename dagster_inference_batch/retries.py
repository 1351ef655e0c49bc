"""Retry policy for Batch API calls: backoff on 429 (honouring Retry-After), 5xx,
timeouts and dropped connections; every other error goes straight to the caller.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import openai

from .errors import BatchAPIError

T = TypeVar("T")

_RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIConnectionError,  # includes APITimeoutError
    openai.ConflictError,
)


def is_retryable(error: BaseException) -> bool:
    """True for errors worth another try: 429, 409, 5xx, timeouts and resets."""
    if isinstance(error, _RETRYABLE):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's ``Retry-After`` hint in seconds, when it gave one."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Example:
        >>> policy = RetryPolicy(max_retries=3, backoff_seconds=0.0)
        >>> policy.call(lambda: 42, what="answer")
        42
    """

    max_retries: int = 6
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0

    def delay(self, attempt: int, error: BaseException) -> float:
        hinted = retry_after_seconds(error)
        if hinted is not None:
            return min(hinted, self.max_backoff_seconds)
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
            except openai.APIError as error:
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
