"""Webhook URL checks and best-effort delivery of batch events."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TIMEOUT_SECONDS = 5.0

log = logging.getLogger(__name__)


def webhook_url_problem(url: object, *, allow_insecure: bool) -> str | None:
    """Why `url` is not an acceptable webhook_url, or None when it is."""
    if not isinstance(url, str):
        return "webhook_url must be a string."
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        if allow_insecure:
            return None
        return "Plain-http webhook_url needs the server flag --allow-insecure-webhooks."
    return "webhook_url must be an https:// URL."


def batch_event(batch_id: str, status: str) -> dict[str, object]:
    """An event like the spec's WebhookBatch* objects, plus the batch status."""
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": f"batch.{status}",
        "created_at": int(time.time()),
        "data": {"id": batch_id, "status": status},
    }


def deliver(url: str, event: dict[str, object], on_done: Callable[[], None]) -> None:
    """POST the event in a background thread; `on_done` runs after the attempt, come what may."""

    def post() -> None:
        request = urllib.request.Request(
            url,
            data=orjson.dumps(event),
            headers={"Content-Type": "application/json", "User-Agent": "dagster-inference-batch"},
            method="POST",
        )
        # Loopback receivers are reached directly, whatever proxy the environment names.
        handlers = (
            [urllib.request.ProxyHandler({})] if urlsplit(url).hostname in LOOPBACK_HOSTS else []
        )
        try:
            with urllib.request.build_opener(*handlers).open(
                request, timeout=TIMEOUT_SECONDS
            ) as response:
                response.read()
        except Exception as exc:  # best effort: a broken receiver must not hurt the server
            log.warning("webhook to %s failed: %s", urlsplit(url).netloc, exc)
        finally:
            on_done()

    threading.Thread(target=post, name="webhook", daemon=True).start()
