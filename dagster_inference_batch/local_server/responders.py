"""Answer one request body offline: deterministic, no model (``upstream.py`` forwards to one)."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import orjson

from .schema_instance import instance_for

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"\w+|[^\w\s]")
_EXCERPT_TOKENS = 24


class Reply(NamedTuple):
    """An HTTP answer (`status_code`, `body`); `status_code` None means no answer and
    `body` is then the line-level error `{"code", "message"}`."""

    status_code: int | None
    body: dict[str, Any]


class Responder(Protocol):
    chunk_size: int

    def respond_many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Reply]: ...


def count_tokens(text: str) -> int:
    """A plausible token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def truncate_tokens(text: str, limit: int) -> tuple[str, bool]:
    """The first `limit` tokens of `text`, and whether anything was cut."""
    for index, match in enumerate(_TOKEN.finditer(text)):
        if index == limit - 1:
            cut = text[: match.end()]
            return cut, len(cut.rstrip()) < len(text.rstrip())
    return (text, False) if limit > 0 else ("", bool(text.strip()))


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def guarded(respond: Callable[[dict[str, Any]], Reply], body: dict[str, Any]) -> Reply:
    """`respond(body)`, with an exception turned into a 500 answer for this request alone,
    so one request the responder cannot handle does not stop its batch."""
    try:
        return respond(body)
    except Exception as exc:
        log.debug("responder failed on a request", exc_info=True)
        message = f"The server failed to answer this request ({type(exc).__name__})."
        return Reply(500, error_body(500, message, "server_error"))


class OfflineResponder:
    """Deterministic answers derived from the request: the same body gives the same answer."""

    chunk_size = 2000

    def respond_many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Reply]:
        """Answer `bodies` as `endpoint` would (chat, completions, embeddings, responses,
        moderations).

        Args:
            endpoint: The batch's endpoint.
            bodies: The request bodies.

        Returns:
            One reply per body, in order.
        """
        from .offline_embeddings import embeddings
        from .offline_moderations import moderations
        from .offline_responses import responses

        respond = {
            "/v1/chat/completions": self.chat,
            "/v1/embeddings": embeddings,
            "/v1/responses": responses,
            "/v1/moderations": moderations,
        }.get(endpoint, self.completion)
        return [guarded(respond, body) for body in bodies]

    def chat(self, body: dict[str, Any]) -> Reply:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return Reply(
                400, error_body(400, "'messages' must be a non-empty list.", "invalid_value")
            )
        texts = [message_text(m) for m in messages]
        users = [t for m, t in zip(messages, texts, strict=True) if _role(m) == "user"]
        user = users[-1] if users else texts[-1]
        content = self._content(body, user)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        content, cut = (
            truncate_tokens(content, limit) if isinstance(limit, int) else (content, False)
        )
        prompt_tokens = sum(count_tokens(t) for t in texts) + 3 * len(messages)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "finish_reason": "length" if cut else "stop",
            "logprobs": None,
        }
        return Reply(
            200, _completion("chat.completion", "chatcmpl-", body, choice, prompt_tokens, content)
        )

    def completion(self, body: dict[str, Any]) -> Reply:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = " ".join(p for p in prompt if isinstance(p, str))
        if not isinstance(prompt, str):
            return Reply(400, error_body(400, "'prompt' must be a string.", "invalid_value"))
        text = " " + excerpt(prompt)
        limit = body.get("max_tokens", 16)
        text, cut = truncate_tokens(text, limit) if isinstance(limit, int) else (text, False)
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": "length" if cut else "stop",
            "logprobs": None,
        }
        return Reply(
            200, _completion("text_completion", "cmpl-", body, choice, count_tokens(prompt), text)
        )

    @staticmethod
    def _content(body: dict[str, Any], user: str) -> str:
        response_format = body.get("response_format")
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            return orjson.dumps(instance_for(schema, seed=user)).decode()
        if kind == "json_object":
            return orjson.dumps({"answer": excerpt(user)}).decode()
        return "Answer: " + excerpt(user)


def excerpt(text: str) -> str:
    """The first words of `text`, whitespace collapsed (the offline answers' content).

    Args:
        text: The prompt.

    Returns:
        Up to 24 tokens of it, or ``(empty)``.
    """
    text = " ".join(text.split())
    return truncate_tokens(text, _EXCERPT_TOKENS)[0] if text else "(empty)"


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def message_text(message: Any) -> str:
    """The text of a chat or Responses message (its text parts joined).

    Args:
        message: ``{"role", "content"}``, content a string or a list of text parts.

    Returns:
        The text, or an empty string.
    """
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _completion(
    obj: str,
    prefix: str,
    body: dict[str, Any],
    choice: dict[str, Any],
    prompt_tokens: int,
    output: str,
) -> dict[str, Any]:
    digest = hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=12)
    completion_tokens = count_tokens(output)
    return {
        "id": prefix + digest.hexdigest(),
        "object": obj,
        "created": int(time.time()),
        "model": body.get("model") if isinstance(body.get("model"), str) else "offline",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
