"""Offline ``/v1/responses`` answers: a Responses API object echoing the last user text.

Example:
    >>> reply = responses({"model": "gpt-4o-mini", "input": "Say hi"})
    >>> reply.body["status"], reply.body["output"][0]["content"][0]["text"]
    ('completed', 'Answer: Say hi')
    >>> reply.body["usage"]["input_tokens"], reply.body["usage"]["output_tokens"]
    (2, 4)
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from .responders import Reply, count_tokens, error_body, excerpt, message_text, truncate_tokens
from .schema_instance import instance_for


def responses(body: dict[str, Any]) -> Reply:
    """Answer one Responses API request body.

    Args:
        body: ``{"model", "input", "instructions"?, "max_output_tokens"?, "text"?}``;
            ``input`` is a string or a list of messages (``{"role", "content"}``, content a
            string or a list of ``input_text`` parts). ``text.format`` of type
            ``json_schema`` gets an instance of the schema.

    Returns:
        200 and a ``response`` object (``status`` ``incomplete`` when cut by
        ``max_output_tokens``), or 400 and an OpenAI-style error body.
    """
    found = _input_texts(body.get("input"))
    if found is None:
        message = "'input' must be a non-empty string or list of messages."
        return Reply(400, error_body(400, message, "invalid_value"))
    texts, user = found
    instructions = body.get("instructions") if isinstance(body.get("instructions"), str) else None
    text = _output_text(body, user)
    limit = body.get("max_output_tokens")
    text, cut = truncate_tokens(text, limit) if isinstance(limit, int) else (text, False)
    input_tokens = sum(count_tokens(t) for t in texts) + count_tokens(instructions or "")
    output_tokens = count_tokens(text)
    digest = hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=12)
    model = body.get("model") if isinstance(body.get("model"), str) else "offline"
    return Reply(
        200,
        {
            "id": "resp_" + digest.hexdigest(),
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if cut else "completed",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "instructions": instructions,
            "max_output_tokens": limit if isinstance(limit, int) else None,
            "model": model,
            "output": [_message(digest.hexdigest(), text, cut)],
            "parallel_tool_calls": True,
            "temperature": body.get("temperature", 1.0),
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        },
    )


def _message(digest: str, text: str, cut: bool) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_" + digest,
        "status": "incomplete" if cut else "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _input_texts(value: Any) -> tuple[list[str], str] | None:
    """The texts of an ``input`` and the one to answer (the last user message's)."""
    if isinstance(value, str):
        return ([value], value) if value else None
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return None
    texts = [message_text(m) for m in value]
    users = [t for m, t in zip(value, texts, strict=True) if m.get("role", "user") == "user"]
    return texts, users[-1] if users else texts[-1]


def _output_text(body: dict[str, Any], user: str) -> str:
    options = body.get("text")
    fmt = options.get("format") if isinstance(options, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        return orjson.dumps(instance_for(fmt.get("schema") or {}, seed=user)).decode()
    if kind == "json_object":
        return orjson.dumps({"answer": excerpt(user)}).decode()
    return "Answer: " + excerpt(user)
