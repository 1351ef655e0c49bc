"""Structured answers broken on purpose (``--invalid-output-rate``), so the whole
invalid-output path (validation, the check, the retry) can be shown without a model.

A request asking for a JSON schema (chat ``response_format`` or Responses ``text.format``
of type ``json_schema``) whose successful answer is drawn gets one of four breakages:
the JSON cut in half (``truncated``), a required property removed (``missing``), a
property of the wrong type (``wrong_type``), or a value outside an enum (``enum``; a
schema without an enum gets a wrong type instead). The draw and the kind come from the
seed, the ``custom_id`` and the body, so the same request is always answered the same
way, and a request changed on retry (a stricter prompt suffix) is drawn again.

Example:
    >>> schema = {"type": "object", "required": ["mood"],
    ...     "properties": {"mood": {"type": "string", "enum": ["happy", "sad"]}}}
    >>> body = {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    >>> reply = Reply(200, {"choices": [{"message": {"content": '{"mood": "happy"}'}}]})
    >>> broken = break_answer(reply, body, "a", rate=1.0, seed=0)
    >>> broken.body["choices"][0]["message"]["content"] != '{"mood": "happy"}'
    True
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from .responders import Reply

KINDS = ("truncated", "missing", "wrong_type", "enum")
_WRONG = {"string": 12345, "integer": "not a number", "number": "not a number",
          "boolean": "yes", "array": "not a list", "object": "not an object"}  # fmt: skip


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the body asks its answer to match, or None."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt.get("schema") if isinstance(fmt.get("schema"), dict) else None
    return None


def _draw(seed: int, custom_id: str, body: dict[str, Any]) -> tuple[float, int]:
    digest = hashlib.blake2b(
        f"{seed}:{custom_id}:".encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
        digest_size=16,
    ).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:], "big")


def break_answer(
    reply: Reply, body: dict[str, Any], custom_id: str, *, rate: float, seed: int
) -> Reply:
    """``reply`` with its structured content broken, when the draw says so.

    Args:
        reply: The responder's answer to ``body``.
        body: The request body.
        custom_id: The request's id.
        rate: The fraction of structured answers to break.
        seed: The server's seed.

    Returns:
        ``reply`` itself (not structured, not a success, or not drawn), or a copy with
        the content broken.
    """
    if not rate or reply.status_code != 200:
        return reply
    schema = _schema_of(body)
    if schema is None:
        return reply
    draw, pick = _draw(seed, custom_id, body)
    if draw >= rate:
        return reply
    answer = orjson.loads(orjson.dumps(reply.body))
    holder, key = _content_slot(answer)
    if holder is None or not isinstance(holder.get(key), str):
        return reply
    holder[key] = broken_content(holder[key], schema, KINDS[pick % len(KINDS)])
    return Reply(reply.status_code, answer)


def _content_slot(answer: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Where the answer's text is: a chat message's ``content`` or a Responses part's
    ``text``."""
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0].get("message"), dict):
        return choices[0]["message"], "content"
    for item in answer.get("output") or []:
        for part in item.get("content") or [] if isinstance(item, dict) else []:
            if isinstance(part, dict) and part.get("type") == "output_text":
                return part, "text"
    return None, ""


def broken_content(content: str, schema: dict[str, Any], kind: str) -> str:
    """``content`` (valid against ``schema``) broken in the way ``kind`` names.

    Args:
        content: A JSON object valid against ``schema``.
        schema: Its JSON schema.
        kind: One of ``KINDS``; ``missing`` without a required property, and ``enum``
            or ``wrong_type`` without a fitting property, fall back to ``truncated``
            (``enum`` first tries ``wrong_type``).

    Returns:
        The broken content.

    Example:
        >>> schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
        >>> broken_content('{"n": 1}', schema, "wrong_type"), broken_content('{"n": 1}', schema, "missing")
        ('{"n":"not a number"}', '{}')
    """
    value = orjson.loads(content)
    properties = {
        name: _resolve(schema, node) for name, node in (schema.get("properties") or {}).items()
    }
    if isinstance(value, dict):
        if kind == "missing":
            required = [name for name in schema.get("required") or () if name in value]
            if required:
                del value[required[0]]
                return orjson.dumps(value).decode()
        if kind == "enum":
            for name, node in properties.items():
                if _enum(node) is not None and name in value:
                    value[name] = "not-an-allowed-value"
                    return orjson.dumps(value).decode()
            kind = "wrong_type"
        if kind == "wrong_type":  # a property without an enum first: a type error proper
            ordered = sorted(properties.items(), key=lambda item: _enum(item[1]) is not None)
            for name, node in ordered:
                wrong = _WRONG.get(_type(node))
                if wrong is not None and name in value:
                    value[name] = wrong
                    return orjson.dumps(value).decode()
    return content[: max(1, len(content) // 2)]


def _resolve(schema: dict[str, Any], node: Any) -> Any:
    """``node`` with a local ``$ref`` followed and a nullable ``anyOf`` unwrapped."""
    for _ in range(16):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            target: Any = schema
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target.get(part, {}) if isinstance(target, dict) and part else target
            node = target
            continue
        options = node.get("anyOf") if isinstance(node, dict) else None
        if isinstance(options, list):
            rest = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            if len(rest) == 1:
                node = rest[0]
                continue
        break
    return node


def _enum(node: Any) -> list[Any] | None:
    return node.get("enum") if isinstance(node, dict) else None


def _type(node: Any) -> Any:
    kind = node.get("type") if isinstance(node, dict) else None
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind
