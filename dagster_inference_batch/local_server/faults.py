"""ASGI middleware that adds latency and injects faults into API calls, for client tests.

Half of the faults strike before the call is handled and half after it (the state change
happened, the client still sees a failure), so clients must retry idempotently.
"""

from __future__ import annotations

import asyncio
import random

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BEFORE_KINDS = ("500", "429", "drop")
_AFTER_KINDS = ("500", "drop")


class FaultInjector:
    """ASGI middleware: `latency_ms` before every HTTP call, and a fault on `fault_rate` of them.

    Args:
        app: The app to wrap.
        fault_rate: Fraction of calls answered 500 or 429, or cut, instead of (or after) `app`.
        latency_ms: Delay added to every call.
        seed: Seed of the random choices, so a run can be repeated.
    """

    def __init__(self, app: ASGIApp, *, fault_rate: float, latency_ms: float, seed: int) -> None:
        self.app = app
        self.fault_rate = fault_rate
        self.latency = latency_ms / 1000.0
        self.rng = random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        if not self.fault_rate or self.rng.random() >= self.fault_rate:
            await self.app(scope, receive, send)
            return
        if self.rng.random() < 0.5:
            await _fault(self.rng.choice(_BEFORE_KINDS), send)
            return

        async def swallow(message: Message) -> None:
            pass

        await self.app(scope, receive, swallow)
        await _fault(self.rng.choice(_AFTER_KINDS), send)


async def _fault(kind: str, send: Send) -> None:
    if kind == "drop":
        await _drop(send)
        return
    status, code = (429, "rate_limit_exceeded") if kind == "429" else (500, "server_error")
    body = orjson.dumps(
        {"error": {"message": "Injected fault.", "type": code, "param": None, "code": code}}
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 429:
        headers += [(b"retry-after", b"1"), (b"retry-after-ms", b"200")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    """Cut the connection mid-response, so the client sees a connection error.

    The response promises a body and stops short; an ASGI server closes the connection
    when the app returns without finishing the response it started (uvicorn logs one line).
    """
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]}
    )
    await send({"type": "http.response.body", "body": b'{"', "more_body": True})
