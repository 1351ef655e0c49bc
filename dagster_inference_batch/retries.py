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
from types import ModuleType
from typing import TypeVar

import openai

from .errors import BatchAPIError

T = TypeVar("T")
DEFAULT_MAX_RETRIES = 6
DEFAULT_BACKOFF_SECONDS = 0.5


def sdk_http_library() -> ModuleType:
    """The HTTP library the openai SDK is built on (``httpx`` in openai 1.x, ``httpx2`` later).

    Found through the SDK's public ``openai.DefaultHttpxClient``: the package of the first
    class in its hierarchy that is not the SDK's own.

    Returns:
        The library's top-level module.

    Raises:
        ImportError: The SDK's default HTTP client is built on no other package.

    Example:
        >>> issubclass(openai.DefaultHttpxClient, sdk_http_library().Client)
        True
    """
    for cls in openai.DefaultHttpxClient.__mro__:
        package = cls.__module__.partition(".")[0]
        if package not in ("openai", "builtins"):
            return importlib.import_module(package)
    raise ImportError("openai.DefaultHttpxClient is built on no HTTP library")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The SDK's HTTP library's transport errors: a stream cut short while it is read
    surfaces as one of these, not as an openai error. Empty if the library has none
    (``tests/test_retries.py`` fails loudly then)."""
    try:
        error = getattr(sdk_http_library(), "TransportError", None)
    except (AttributeError, ImportError):  # an SDK without DefaultHttpxClient
        return ()
    return (error,) if isinstance(error, type) and issubclass(error, Exception) else ()


TRANSPORT_ERRORS = _transport_errors()
_RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIConnectionError,  # includes APITimeoutError
    *TRANSPORT_ERRORS,
)
_CAUGHT = (openai.APIError, *TRANSPORT_ERRORS)


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is worth another try: 429, 5xx, timeouts, resets, cut streams.

    Args:
        error: An exception raised by an openai SDK call.

    Returns:
        True for a retryable error.

    Example:
        >>> is_retryable(sdk_http_library().ReadError("connection reset"))
        True
        >>> is_retryable(ValueError("a bug"))
        False
    """
    if isinstance(error, _RETRYABLE):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's hint, when it gave one.

    Args:
        error: An exception that may carry an HTTP ``response``.

    Returns:
        Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP
        date; None without a (readable) hint.

    Example:
        >>> library = sdk_http_library()
        >>> response = library.Response(429, headers={"Retry-After": "7"},
        ...                             request=library.Request("GET", "http://x"))
        >>> retry_after_seconds(openai.RateLimitError("slow down", response=response, body=None))
        7.0
    """
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

    Args:
        max_retries: Tries after the first.
        backoff_seconds: The first pause; it doubles per retry, with jitter.
        max_backoff_seconds: The longest pause of the backoff.
        max_retry_after_seconds: The longest pause a server's ``Retry-After`` gets.

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
        """Seconds to pause before retry number ``attempt + 1`` after ``error``.

        Args:
            attempt: Retries made so far (0 before the first).
            error: The error that is retried; its ``Retry-After`` wins.

        Returns:
            The server's hint (capped), else jittered exponential backoff.

        Example:
            >>> 0.5 <= RetryPolicy(backoff_seconds=1.0).delay(0, ValueError()) <= 1.0
            True
        """
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

        Args:
            fn: The call.
            what: Names the call in messages.
            before_retry: Runs before each retry; a value it returns is the answer (it
                finds a batch that a failed-looking create did make).
            logger: Where each retry is logged.
            redact: Applied to every message (removes the API key).

        Returns:
            What ``fn`` (or ``before_retry``) returned.

        Raises:
            BatchAPIError: ``fn`` failed with an error not worth retrying, or every try
                failed; it carries the HTTP status.

        Example:
            >>> calls = []
            >>> def flaky():
            ...     calls.append(1)
            ...     if len(calls) < 3:
            ...         raise sdk_http_library().ReadError("connection reset")
            ...     return "done"
            >>> RetryPolicy(max_retries=3, backoff_seconds=0.0).call(flaky, what="flaky"), len(calls)
            ('done', 3)
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
    """A short, single-line description of an API error.

    Args:
        error: The exception.

    Returns:
        ``HTTP <status>: <message>``, or ``<type>: <message>`` without a status.

    Example:
        >>> describe(TimeoutError("read timed out"))
        'TimeoutError: read timed out'
    """
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return f"HTTP {status}: {message}" if status else f"{type(error).__name__}: {message}"
