"""What a provider would refuse at ``POST /batches``, checked before anything is uploaded.

A refusal at ``create`` comes after the input file is uploaded, so each rule the
providers apply to the create body is applied here first, naming the setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from .errors import InvalidBatchInput
from .providers import ProviderProfile

COMPLETION_WINDOWS = ("24h",)  # the only window OpenAI and Inference.net accept
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# Keys the client adds to every batch's metadata (see ``InferenceBatchClient``).
RESERVED_METADATA_KEYS = ("idempotency_key", "shard", "attempt")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# OpenAI's bounds on output_expires_after.seconds: one hour to 30 days.
OUTPUT_EXPIRY_SECONDS = (3600, 30 * 24 * 3600)


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine.

    Args:
        url: Any URL.

    Returns:
        True for ``127.0.0.1``, ``localhost`` and ``::1``.

    Example:
        >>> is_loopback(local_server_url), is_loopback("https://batch.inference.net/v1")
        (True, False)
    """
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


def check_create_options(
    metadata: Mapping[str, object],
    *,
    completion_window: str = "24h",
    webhook_url: str | None = None,
    base_url: str | None = None,
    profile: ProviderProfile | None = None,
    output_expires_after: Mapping[str, Any] | None = None,
) -> None:
    """Raise ``InvalidBatchInput`` for anything the provider would refuse at create.

    ``metadata`` is the caller's; the client's own keys count against the limit too.
    A plain-http ``webhook_url`` is accepted only on loopback, and only when the
    provider (``base_url``) is on loopback as well: a local server for tests. With a
    ``profile``, a ``webhook_url`` or ``output_expires_after`` the provider does not
    take is refused, naming the provider.

    Args:
        metadata: The caller's batch metadata.
        completion_window: The window the batches ask for.
        webhook_url: Where the provider should POST when a batch ends.
        base_url: The provider's base URL.
        profile: The provider's profile (None: no per-provider checks).
        output_expires_after: ``{"anchor": "created_at", "seconds": N}``.

    Raises:
        InvalidBatchInput: Naming every problem found.

    Example:
        >>> check_create_options({"team": "search"})
        >>> check_create_options({}, webhook_url="http://example.com/hook")
        Traceback (most recent call last):
        ...
        dagster_inference_batch.errors.InvalidBatchInput: invalid batch input (1 problem):
          - webhook_url 'http://example.com/hook' must be an https:// URL
        >>> from dagster_inference_batch.providers import provider_profile
        >>> check_create_options({}, webhook_url="https://example.com/hook",
        ...                      profile=provider_profile("openai"))
        Traceback (most recent call last):
        ...
        dagster_inference_batch.errors.InvalidBatchInput: invalid batch input (1 problem):
          - webhook_url is not accepted by provider 'openai'; drop it (provider 'inference.net' takes it)
    """
    webhook_refused = _refused(profile, "webhook_url", webhook_url)
    problems = [
        *_metadata_problems(metadata),
        *_window_problems(completion_window),
        *(webhook_refused or _webhook_problems(webhook_url, base_url)),
        *(
            _refused(profile, "output_expires_after", output_expires_after)
            or _expiry_problems(output_expires_after)
        ),
    ]
    if problems:
        raise InvalidBatchInput(problems)


def _metadata_problems(metadata: Mapping[str, object]) -> list[str]:
    problems = []
    clashing = sorted(set(metadata) & set(RESERVED_METADATA_KEYS))
    if clashing:
        problems.append(
            f"metadata keys {clashing} are set by the client itself (idempotency); rename them"
        )
    allowed = MAX_METADATA_KEYS - len(RESERVED_METADATA_KEYS)
    if len(metadata) > allowed:
        problems.append(
            f"metadata has {len(metadata)} keys; at most {allowed} are allowed (the "
            f"provider's {MAX_METADATA_KEYS} less {len(RESERVED_METADATA_KEYS)} used for "
            "idempotency)"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > MAX_METADATA_KEY_CHARS:
            problems.append(
                f"metadata key {key!r} has {len(str(key))} characters; at most "
                f"{MAX_METADATA_KEY_CHARS} are allowed"
            )
        if not isinstance(value, str):
            problems.append(
                f"metadata[{key!r}] is a {type(value).__name__}; providers take strings only"
            )
        elif len(value) > MAX_METADATA_VALUE_CHARS:
            problems.append(
                f"metadata[{key!r}] has {len(value)} characters; at most "
                f"{MAX_METADATA_VALUE_CHARS} are allowed"
            )
    return problems


def _window_problems(completion_window: str) -> list[str]:
    if completion_window in COMPLETION_WINDOWS:
        return []
    return [
        f"completion_window {completion_window!r} is not accepted; use one of "
        f"{list(COMPLETION_WINDOWS)}"
    ]


def _refused(profile: ProviderProfile | None, name: str, value: object) -> list[str]:
    """The option ``name`` set for a provider that does not take it."""
    if value is None or profile is None or getattr(profile, f"accepts_{name}"):
        return []
    taker = "inference.net" if name == "webhook_url" else "openai"
    return [
        f"{name} is not accepted by provider {profile.name!r}; drop it "
        f"(provider {taker!r} takes it)"
    ]


def _expiry_problems(output_expires_after: Mapping[str, Any] | None) -> list[str]:
    """An ``output_expires_after`` not shaped as OpenAI takes it."""
    if output_expires_after is None:
        return []
    low, high = OUTPUT_EXPIRY_SECONDS
    given = output_expires_after if isinstance(output_expires_after, Mapping) else {}
    seconds = given.get("seconds")
    if (
        set(given) == {"anchor", "seconds"}
        and given["anchor"] == "created_at"
        and isinstance(seconds, int)
        and not isinstance(seconds, bool)
        and low <= seconds <= high
    ):
        return []
    return [
        f"output_expires_after {output_expires_after!r} must be "
        f'{{"anchor": "created_at", "seconds": N}} with N from {low} to {high}'
    ]


def _webhook_problems(webhook_url: str | None, base_url: str | None) -> list[str]:
    if webhook_url is None:
        return []
    parsed = urlparse(webhook_url)
    if parsed.scheme == "https" and parsed.hostname:
        return []
    local_test = (
        parsed.scheme == "http"
        and is_loopback(webhook_url)
        and base_url is not None
        and is_loopback(base_url)
    )
    if local_test:
        return []
    return [f"webhook_url {webhook_url!r} must be an https:// URL"]
