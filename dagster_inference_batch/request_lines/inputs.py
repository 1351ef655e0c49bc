"""The ``input`` of embeddings, Responses and moderations bodies: checked and counted.

An embeddings ``input`` is a non-empty string, a list of non-empty strings, a token list
(a list of integers) or a list of token lists. Each string or token list is one input:
the unit a provider's ``max_embedding_inputs`` cap counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from dagster_inference_batch.providers import CHAT, COMPLETIONS, EMBEDDINGS

_EMBEDDINGS_RULE = (
    "embeddings input must be a non-empty string, a list of non-empty strings, "
    "a token list (integers) or a list of token lists"
)


def content_key(endpoint: str) -> str:
    """The body key a row's content goes in: ``messages``, ``prompt`` or ``input``.

    Args:
        endpoint: The url the lines post to.

    Returns:
        ``messages`` for chat, ``prompt`` for completions, ``input`` for the others
        (embeddings, Responses, moderations).

    Example:
        >>> content_key("/v1/chat/completions"), content_key("/v1/embeddings")
        ('messages', 'input')
    """
    return {CHAT: "messages", COMPLETIONS: "prompt"}.get(endpoint, "input")


def _is_token_list(value: Any) -> bool:
    """A non-empty list of integers (not booleans)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def embedding_input_count(value: Any) -> int | None:
    """How many inputs an embeddings ``input`` holds, or None if it is malformed.

    Args:
        value: The body's ``input``.

    Returns:
        1 for a string or one token list, the length for a list of strings or of token
        lists; None for anything else (empty, mixed, missing).

    Example:
        >>> [embedding_input_count(v) for v in ("hi", ["a", "b"], [1, 2], [[1], [2]], [], "")]
        [1, 2, 1, 2, None, None]
    """
    if isinstance(value, str):
        return 1 if value else None
    if not isinstance(value, list) or not value:
        return None
    if _is_token_list(value):
        return 1
    if all(isinstance(v, str) and v for v in value) or all(map(_is_token_list, value)):
        return len(value)
    return None


def body_input_problem(endpoint: str, body: Mapping[str, Any]) -> str | None:
    """What is wrong with a body's ``input`` for the endpoint, if anything.

    Args:
        endpoint: The url the line posts to.
        body: The request body.

    Returns:
        None for chat and completions and for a good ``input``; else the rule broken.

    Example:
        >>> body_input_problem("/v1/embeddings", {"model": "e", "input": ["a", ""]})
        'embeddings input must be a non-empty string, a list of non-empty strings, a token list (integers) or a list of token lists'
        >>> body_input_problem("/v1/responses", {"model": "m"})
        "body lacks 'input' (a string or a list of input items)"
    """
    if content_key(endpoint) != "input":
        return None
    value = body.get("input")
    if endpoint == EMBEDDINGS:
        return None if embedding_input_count(value) is not None else _EMBEDDINGS_RULE
    if value is None:
        return "body lacks 'input' (a string or a list of input items)"
    if not isinstance(value, (str, list)) or not value:
        return "'input' must be a non-empty string or a non-empty list of input items"
    return None


def line_input_counts(endpoint: str, lines: list[bytes]) -> list[int]:
    """Embedding inputs per encoded line (0 for every line off the embeddings endpoint).

    Args:
        endpoint: The url the lines post to.
        lines: Validated request lines.

    Returns:
        One count per line.

    Example:
        >>> line_input_counts("/v1/embeddings", [b'{"body":{"input":["a","b"]}}'])
        [2]
    """
    if endpoint != EMBEDDINGS:
        return [0] * len(lines)
    return [embedding_input_count(orjson.loads(line)["body"]["input"]) or 0 for line in lines]
