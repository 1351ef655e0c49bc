"""Checks on a ``POST /v1/batches`` body, answered with the 400 a real provider gives."""

from __future__ import annotations

from typing import Any

from .objects import APIError
from .provider_rules import ServerRules
from .webhooks import webhook_url_problem


def check_create_body(
    body: dict[str, Any], rules: ServerRules, *, allow_insecure_webhooks: bool
) -> None:
    """Refuse a create body the server (or the provider it plays) would not accept.

    The input file itself is looked up by the caller.

    Args:
        body: The JSON body.
        rules: What the server accepts (endpoints, ``webhook_url``, ...).
        allow_insecure_webhooks: Whether a plain-http loopback ``webhook_url`` is allowed.

    Raises:
        APIError: 400 with ``param`` naming the offending field.

    Example:
        >>> from pathlib import Path
        >>> from .config import ServerConfig
        >>> rules = ServerRules.from_config(ServerConfig(data_dir=Path("d"), profile="openai"))
        >>> body = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
        ...         "completion_window": "24h", "webhook_url": "https://example.com/hook"}
        >>> try:
        ...     check_create_body(body, rules, allow_insecure_webhooks=False)
        ... except APIError as refused:
        ...     refused.status, refused.body["error"]["code"]
        (400, 'unknown_parameter')
    """
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise APIError(400, f"Missing required parameter: '{name}'.", param=name)
    if body["completion_window"] != "24h":
        raise APIError(
            400,
            "completion_window must be '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    rules.check_create_options(body)
    _check_metadata(body.get("metadata"))
    if body.get("webhook_url") is not None:
        problem = webhook_url_problem(body["webhook_url"], allow_insecure=allow_insecure_webhooks)
        if problem:
            raise APIError(400, problem, param="webhook_url", code="invalid_value")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise APIError(400, "metadata must be an object.", param="metadata", code="invalid_value")
    if len(metadata) > 16:
        raise APIError(
            400, "metadata may have at most 16 keys.", param="metadata", code="invalid_value"
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise APIError(
                400, f"metadata key {key[:20]!r}... is longer than 64 characters.", param="metadata"
            )
        if not isinstance(value, str) or len(value) > 512:
            raise APIError(
                400,
                f"metadata[{key!r}] must be a string of at most 512 characters.",
                param="metadata",
            )
