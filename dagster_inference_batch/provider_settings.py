"""The client's provider settings: a ``ProviderProfile`` with the caller's overrides, and
the endpoint check made against it before anything is uploaded.

The figures come from ``providers.py`` only; this module applies them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .errors import InvalidBatchInput
from .providers import ProviderProfile, provider_profile


def resolve_profile(provider: str, **overrides: Any) -> ProviderProfile:
    """The profile of ``provider`` with every override that is not None applied.

    Args:
        provider: ``inference.net``, ``openai`` or ``compatible``.
        **overrides: ``ProviderProfile`` fields; None keeps the profile's value.

    Returns:
        The effective profile.

    Raises:
        ValueError: An unknown provider.

    Example:
        >>> resolve_profile("openai", max_requests=10, base_url=None).max_requests
        10
        >>> resolve_profile("openai", base_url=None).base_url
        'https://api.openai.com/v1'
    """
    profile = provider_profile(provider)
    return replace(profile, **{k: v for k, v in overrides.items() if v is not None})


def require_base_url(profile: ProviderProfile) -> str:
    """The profile's base URL, or a ValueError naming the setting to give.

    Args:
        profile: The effective profile.

    Returns:
        Its base URL.

    Raises:
        ValueError: The provider has no default base URL (``compatible``) and none was given.

    Example:
        >>> require_base_url(provider_profile("compatible"))
        Traceback (most recent call last):
        ...
        ValueError: provider 'compatible' has no default base URL: set base_url (or INFERENCE_BASE_URL) to your server's OpenAI-compatible /v1 URL
    """
    if profile.base_url:
        return profile.base_url
    raise ValueError(
        f"provider {profile.name!r} has no default base URL: set base_url (or "
        "INFERENCE_BASE_URL) to your server's OpenAI-compatible /v1 URL"
    )


def check_endpoint_offered(profile: ProviderProfile, endpoint: str) -> None:
    """Refuse an endpoint the provider does not take batches for.

    Args:
        profile: The effective profile.
        endpoint: The batch's endpoint.

    Raises:
        InvalidBatchInput: Naming the provider and the endpoints it offers.

    Example:
        >>> check_endpoint_offered(provider_profile("inference.net"), "/v1/responses")
        Traceback (most recent call last):
        ...
        dagster_inference_batch.errors.InvalidBatchInput: invalid batch input (1 problem):
          - provider 'inference.net' offers no batches for '/v1/responses': use one of ['/v1/chat/completions', '/v1/completions', '/v1/embeddings']
    """
    if endpoint not in profile.endpoints:
        raise InvalidBatchInput(
            [
                f"provider {profile.name!r} offers no batches for {endpoint!r}: use one of "
                f"{list(profile.endpoints)}"
            ]
        )
