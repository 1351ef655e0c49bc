"""Offline ``/v1/moderations`` answers (``--profile openai`` offers the endpoint): nothing is
flagged, and each category gets a small score derived from the input.

Example:
    >>> reply = moderations({"model": "omni-moderation-latest", "input": ["hi", "there"]})
    >>> [r["flagged"] for r in reply.body["results"]], len(reply.body["results"][0]["categories"])
    ([False, False], 13)
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from .responders import Reply, error_body

CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def moderations(body: dict[str, Any]) -> Reply:
    """Answer one moderations request body with a ``ModerationCreateResponse``.

    Args:
        body: ``{"model"?, "input"}``; ``input`` a string or a list of strings.

    Returns:
        200 and the response (one result per input, none flagged), or 400 and an
        OpenAI-style error body.
    """
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        message = "'input' must be a string or a non-empty list of strings."
        return Reply(400, error_body(400, message, "invalid_value"))
    digest = hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=12)
    model = body.get("model") if isinstance(body.get("model"), str) else "omni-moderation-latest"
    results = [_result(text) for text in inputs]
    return Reply(200, {"id": "modr-" + digest.hexdigest(), "model": model, "results": results})


def _result(text: str) -> dict[str, Any]:
    scores = hashlib.blake2b(text.encode(), digest_size=len(CATEGORIES)).digest()
    return {
        "flagged": False,
        "categories": dict.fromkeys(CATEGORIES, False),
        "category_scores": {c: s / 255 * 1e-3 for c, s in zip(CATEGORIES, scores, strict=True)},
        "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
    }
