"""Answer request bodies by forwarding them to an OpenAI-compatible server (vLLM,
llama.cpp, Ollama...). Imported only when the server runs with ``--responder upstream``,
so the offline server starts without the openai SDK."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import openai

from .responders import Reply, error_body, guarded


class UpstreamResponder:
    """Forwards each body to an OpenAI-compatible server, `concurrency` requests at a time."""

    def __init__(
        self, url: str, *, api_key: str | None, concurrency: int, model: str | None
    ) -> None:
        self.client = openai.OpenAI(base_url=url, api_key=api_key or "none", timeout=600.0)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="upstream")
        self.chunk_size = concurrency * 4
        self.model = model

    def respond_many(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Reply]:
        respond = partial(self.respond, endpoint.removeprefix("/v1"))
        return list(self.pool.map(partial(guarded, respond), bodies))

    def respond(self, path: str, body: dict[str, Any]) -> Reply:
        if self.model:
            body = {**body, "model": self.model}
        try:
            answer = self.client.post(path, cast_to=object, body=body)
        except openai.APIStatusError as exc:
            detail = exc.body if isinstance(exc.body, dict) else {"message": str(exc.body)}
            return Reply(exc.status_code, {"error": detail})
        except openai.APIError as exc:
            return Reply(None, {"code": "upstream_unavailable", "message": str(exc)})
        if not isinstance(answer, dict):
            return Reply(502, error_body(502, "Upstream answered with non-object JSON."))
        return Reply(200, answer)
