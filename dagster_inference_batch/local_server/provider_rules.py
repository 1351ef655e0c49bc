"""What the server accepts, from ``--profile`` (``providers.provider_profile``) or, with no
profile, today's permissive defaults; and the upload pacing a profile imposes.

Example:
    >>> from pathlib import Path
    >>> from .config import ServerConfig
    >>> rules = ServerRules.from_config(ServerConfig(data_dir=Path("d"), profile="openai"))
    >>> rules.accepts_webhook_url, rules.max_requests
    (False, 50000)
    >>> ServerRules.from_config(ServerConfig(data_dir=Path("d"))).upload_interval
    0.0
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..providers import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES, provider_profile
from .objects import APIError

if TYPE_CHECKING:
    from .config import ServerConfig

PERMISSIVE_ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MODERATIONS)
PERMISSIVE_MAX_REQUESTS = 50_000


@dataclass(frozen=True)
class ServerRules:
    """The limits and options the server enforces.

    Attributes:
        profile: The provider played (``inference.net``, ``openai``, ``compatible``), or None.
        endpoints: The endpoints a batch may name.
        max_requests: Request lines per batch file.
        max_bytes: Bytes per batch file, or None (no check).
        max_embedding_inputs: Embedding inputs per batch, or None (no check).
        accepts_webhook_url: Whether ``webhook_url`` may go in the create body.
        accepts_output_expires_after: Whether ``output_expires_after`` may (None: ignored).
        upload_interval: Least seconds between two accepted file uploads per key.
    """

    profile: str | None
    endpoints: tuple[str, ...]
    max_requests: int
    max_bytes: int | None
    max_embedding_inputs: int | None
    accepts_webhook_url: bool
    accepts_output_expires_after: bool | None
    upload_interval: float

    @classmethod
    def from_config(cls, config: ServerConfig) -> ServerRules:
        """The rules of a server; explicit flags override the profile's figures.

        Args:
            config: The server's options (``profile``, ``max_requests_per_batch``,
                ``upload_interval``).

        Returns:
            The rules.
        """
        if config.profile is None:
            return cls(
                profile=None,
                endpoints=PERMISSIVE_ENDPOINTS,
                max_requests=config.max_requests_per_batch or PERMISSIVE_MAX_REQUESTS,
                max_bytes=None,
                max_embedding_inputs=None,
                accepts_webhook_url=True,
                accepts_output_expires_after=None,
                upload_interval=config.upload_interval or 0.0,
            )
        profile = provider_profile(config.profile)
        interval = config.upload_interval
        return cls(
            profile=profile.name,
            endpoints=profile.endpoints,
            max_requests=config.max_requests_per_batch or profile.max_requests,
            max_bytes=profile.max_bytes,
            max_embedding_inputs=profile.max_embedding_inputs,
            accepts_webhook_url=profile.accepts_webhook_url,
            accepts_output_expires_after=profile.accepts_output_expires_after,
            upload_interval=profile.upload_interval_seconds if interval is None else interval,
        )

    def check_create_options(self, body: dict) -> None:
        """Refuse a create body naming an endpoint or option the provider does not offer.

        Args:
            body: The ``POST /v1/batches`` body (``endpoint`` already checked to be a string).

        Raises:
            APIError: 400, OpenAI-style: ``invalid_value`` on ``endpoint``, or
                ``unknown_parameter`` on ``webhook_url`` / ``output_expires_after``.
        """
        if body["endpoint"] not in self.endpoints:
            offered = ", ".join(repr(e) for e in self.endpoints)
            where = f" (the {self.profile} Batch API)" if self.profile else ""
            raise APIError(
                400,
                f"Invalid value: {body['endpoint']!r}. Supported values are: {offered}{where}.",
                param="endpoint",
                code="invalid_value",
            )
        refused = []
        if body.get("webhook_url") is not None and not self.accepts_webhook_url:
            refused.append("webhook_url")
        if (
            body.get("output_expires_after") is not None
            and self.accepts_output_expires_after is False
        ):
            refused.append("output_expires_after")
        if refused:
            raise APIError(
                400,
                f"Unknown parameter: {refused[0]!r}.",
                param=refused[0],
                code="unknown_parameter",
            )


class UploadPacer:
    """One accepted ``POST /v1/files`` per key every `interval` seconds, like Inference.net's
    one-batch-file-a-minute limit; the next one early gets 429 with ``Retry-After``.

    Single event loop: `reserve` and `release` run without awaiting, so they are atomic.

    Args:
        interval: Least seconds between two accepted uploads of one key (0: no pacing).

    Example:
        >>> pacer = UploadPacer(60.0)
        >>> token = pacer.reserve("key", now=100.0)
        >>> try:
        ...     pacer.reserve("key", now=117.5)
        ... except APIError as refused:
        ...     refused.status, refused.headers["retry-after"]
        (429, '43')
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def reserve(self, key: str, now: float | None = None) -> float | None:
        """Take the upload slot of `key`, or refuse the upload.

        Args:
            key: Who uploads (the bearer token).
            now: The monotonic time (default: ``time.monotonic()``).

        Returns:
            The previous slot time, to hand to `release` if the upload then fails.

        Raises:
            APIError: 429 ``rate_limit_exceeded``, with ``retry-after`` (whole seconds,
                rounded up), ``retry-after-ms`` and ``x-ratelimit-*`` headers.
        """
        if not self.interval:
            return None
        now = time.monotonic() if now is None else now
        previous = self._last.get(key)
        if previous is not None and now - previous < self.interval:
            raise _rate_limited(self.interval, previous + self.interval - now)
        self._last[key] = now
        return previous

    def release(self, key: str, previous: float | None) -> None:
        """Give back a slot taken by `reserve` for an upload that was then refused.

        Args:
            key: Who uploaded.
            previous: What `reserve` returned.
        """
        if not self.interval:
            return
        if previous is None:
            self._last.pop(key, None)
        else:
            self._last[key] = previous


def _rate_limited(interval: float, wait: float) -> APIError:
    seconds = max(1, math.ceil(wait))
    limit = f"Limit 1 per {interval:g} s"
    return APIError(
        429,
        f"Rate limit reached for file uploads: {limit}. Please try again in {wait:.1f}s.",
        type="requests",
        code="rate_limit_exceeded",
        headers={
            "retry-after": str(seconds),
            "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
            "x-ratelimit-limit-requests": "1",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{wait:.3f}s",
        },
    )
