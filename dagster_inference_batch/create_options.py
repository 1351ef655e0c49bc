"""What a provider would refuse at ``POST /batches``, checked before anything is uploaded.

A refusal at ``create`` comes after the input file is uploaded, so each rule the
providers apply to the create body is applied here first, naming the setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlparse

from .errors import InvalidBatchInput

COMPLETION_WINDOWS = ("24h",)  # the only window OpenAI and Inference.net accept
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# Keys the client adds to every batch's metadata (see ``InferenceBatchClient``).
RESERVED_METADATA_KEYS = ("idempotency_key", "shard", "attempt")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


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
) -> None:
    """Raise ``InvalidBatchInput`` for anything the provider would refuse at create.

    ``metadata`` is the caller's; the client's own keys count against the limit too.
    A plain-http ``webhook_url`` is accepted only on loopback, and only when the
    provider (``base_url``) is on loopback as well: a local server for tests.

    Args:
        metadata: The caller's batch metadata.
        completion_window: The window the batches ask for.
        webhook_url: Where the provider should POST when a batch ends.
        base_url: The provider's base URL.

    Raises:
        InvalidBatchInput: Naming every problem found.

    Example:
        >>> check_create_options({"team": "search"})
        >>> check_create_options({}, webhook_url="http://example.com/hook")
        Traceback (most recent call last):
        ...
        dagster_inference_batch.errors.InvalidBatchInput: invalid batch input (1 problem):
          - webhook_url 'http://example.com/hook' must be an https:// URL
    """
    problems = [
        *_metadata_problems(metadata),
        *_window_problems(completion_window),
        *_webhook_problems(webhook_url, base_url),
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
