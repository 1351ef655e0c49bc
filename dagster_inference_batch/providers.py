"""What each Batch API provider accepts: limits per batch, endpoints, create options and
upload pacing, as a ``ProviderProfile`` per provider.

The client and the resource take ``provider="inference.net"`` (the default),
``"openai"`` or ``"compatible"``; explicit settings override the profile. The local
server plays a profile with ``--profile``. Plain data, no imports from the package, so
every layer may read it.

Example:
    >>> profile = provider_profile("openai")
    >>> profile.max_requests, profile.accepts_webhook_url
    (50000, False)
    >>> provider_profile("inference.net").base_url
    'https://batch.inference.net/v1'
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MODERATIONS = "/v1/moderations"
MB = 1024 * 1024


@dataclass(frozen=True)
class ProviderProfile:
    """One provider's Batch API facts (see README "Provider profiles" for the sources).

    Attributes:
        name: ``inference.net``, ``openai`` or ``compatible``.
        base_url: the default base URL (None: the user must give one).
        max_requests: request lines per batch file.
        max_bytes: bytes per batch file.
        max_embedding_inputs: embedding inputs (strings, token lists) per batch, or None.
        endpoints: the endpoints a batch may name.
        accepts_webhook_url: whether ``webhook_url`` may go in the create body.
        accepts_output_expires_after: whether ``output_expires_after`` may.
        upload_interval_seconds: the least time between two file uploads per key (0: none).
        dashboard_url: the provider's web page of a batch, ``{batch_id}`` standing for its
            id (None: the provider documents none).
        structured_output: how a ``response_model`` is asked for: ``json_schema`` (the
            schema in ``response_format``) or ``json_object`` (JSON mode, the schema in a
            system message).
        strict_json_schema: whether ``json_schema`` may carry ``strict: true``.
    """

    name: str
    base_url: str | None
    max_requests: int
    max_bytes: int
    max_embedding_inputs: int | None
    endpoints: tuple[str, ...]
    accepts_webhook_url: bool
    accepts_output_expires_after: bool
    upload_interval_seconds: float
    dashboard_url: str | None = None
    structured_output: str = "json_schema"
    strict_json_schema: bool = True

    def dashboard_link(self, batch_id: str) -> str | None:
        """The provider's web page of one batch, if it has one.

        Args:
            batch_id: The provider's batch id.

        Returns:
            The URL, or None.

        Example:
            >>> provider_profile("openai").dashboard_link("batch_1")
            'https://platform.openai.com/batches/batch_1'
            >>> provider_profile("compatible").dashboard_link("batch_1") is None
            True
        """
        return self.dashboard_url.format(batch_id=batch_id) if self.dashboard_url else None


PROFILES: dict[str, ProviderProfile] = {
    "inference.net": ProviderProfile(
        name="inference.net",
        base_url="https://batch.inference.net/v1",
        max_requests=1_000_000,
        max_bytes=1024 * MB,  # not published; see README
        max_embedding_inputs=None,
        endpoints=(CHAT, COMPLETIONS, EMBEDDINGS),
        accepts_webhook_url=True,
        accepts_output_expires_after=False,
        upload_interval_seconds=60.0,
    ),
    "openai": ProviderProfile(
        name="openai",
        base_url="https://api.openai.com/v1",
        max_requests=50_000,
        max_bytes=200 * MB,
        max_embedding_inputs=50_000,
        endpoints=(CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MODERATIONS),
        accepts_webhook_url=False,
        accepts_output_expires_after=True,
        upload_interval_seconds=0.0,
        dashboard_url="https://platform.openai.com/batches/{batch_id}",
    ),
    "compatible": ProviderProfile(
        name="compatible",
        base_url=None,
        max_requests=50_000,
        max_bytes=100 * MB,
        max_embedding_inputs=50_000,
        endpoints=(CHAT, COMPLETIONS, EMBEDDINGS),
        accepts_webhook_url=False,
        accepts_output_expires_after=False,
        upload_interval_seconds=0.0,
        strict_json_schema=False,  # not every OpenAI-compatible server takes strict
    ),
}
DEFAULT_PROVIDER = "inference.net"


def provider_profile(name: str) -> ProviderProfile:
    """The profile called ``name``.

    Args:
        name: ``inference.net``, ``openai`` or ``compatible``.

    Returns:
        That provider's ``ProviderProfile``.

    Raises:
        ValueError: ``name`` is not a known provider (the message lists them).

    Example:
        >>> provider_profile("compatible").upload_interval_seconds
        0.0
    """
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(repr(n) for n in PROFILES)
        raise ValueError(f"unknown provider {name!r}: use one of {known}") from None
