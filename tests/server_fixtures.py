"""Fixtures and helpers for tests that talk to the local Batch API server over HTTP.

Registered for every test (and doctest) in the root `conftest.py`:

- `batch_server(**options) -> LocalBatchServer`: a factory; each call starts a server in a
  fresh data dir (or `data_dir=...`) with fast phase delays unless overridden; all are
  stopped at teardown.
- `shared_batch_server`: one session-wide server with fast defaults, `api_key="test-key"`
  and plain-http loopback webhooks allowed.
- `client`: an openai SDK client for `shared_batch_server` (no retries).
- `webhook_receiver`: a loopback HTTP endpoint recording the JSON POSTed to it
  (`.url`, `.events`, `.wait_for(count)`).
- `provider_server`: a fresh server taking `api_key="test-key"`; `proxy_to(**behaviour)`
  starts a misbehaving `LoopbackProxy` in front of it (see tests/loopback_proxy.py);
  `completions(n)` builds n completions request rows for them.
- `no_provider_env` (no INFERENCE_API_KEY / INFERENCE_BASE_URL) and `local_state_dir`: the
  machine-wide local server, started in the test's own state dir and stopped after it.
- `openapi_validate(instance, schema_name)`: validates against the OpenAI spec in
  `../shared/reference/`; where the spec is absent it checks nothing and warns (once, naming
  the path), and the rest of each test still runs.

Servers started by these fixtures must not reach beyond loopback: at teardown, their log
may name no webhook delivery to another host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import orjson
import pandas as pd
import pytest

from dagster_inference_batch.local_server import LocalBatchServer
from dagster_inference_batch.shared_local_server import STATE_DIR_ENV
from tests.loopback_proxy import LoopbackProxy

SHARED_API_KEY = "test-key"
FAST_OPTIONS: dict[str, Any] = {"validating_seconds": 0.05, "finalizing_seconds": 0.05}
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
SPEC_PATH = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "openai-files-batches.openapi.json"
)


@pytest.fixture
def batch_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalBatchServer]]:
    servers: list[LocalBatchServer] = []

    def start(**options: Any) -> LocalBatchServer:
        data_dir = options.pop("data_dir", None) or tmp_path_factory.mktemp("batch-server")
        server = LocalBatchServer(data_dir, **{**FAST_OPTIONS, **options})
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        assert_stayed_on_loopback(server)


@pytest.fixture(scope="session")
def shared_batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBatchServer]:
    server = LocalBatchServer(
        tmp_path_factory.mktemp("shared-batch-server"),
        api_key=SHARED_API_KEY,
        allow_insecure_webhooks=True,
        **FAST_OPTIONS,
    )
    with server:
        yield server
    assert_stayed_on_loopback(server)


@pytest.fixture
def provider_server(batch_server: Callable[..., LocalBatchServer]) -> LocalBatchServer:
    return batch_server(api_key=SHARED_API_KEY)


@pytest.fixture
def proxy_to(provider_server: LocalBatchServer) -> Iterator[Callable[..., LoopbackProxy]]:
    proxies: list[LoopbackProxy] = []

    def start(**behaviour: Any) -> LoopbackProxy:
        proxy = LoopbackProxy(str(provider_server.base_url), **behaviour)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


def completions(n: int) -> pd.DataFrame:
    """n completions request rows (custom_id, body) for the client."""
    return pd.DataFrame(
        {
            "custom_id": [f"r{i}" for i in range(n)],
            "body": [{"model": "m", "prompt": f"count {i}"} for i in range(n)],
        }
    )


@pytest.fixture
def no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INFERENCE_API_KEY", "INFERENCE_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def local_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_provider_env: None
) -> Iterator[Path]:
    state_dir = tmp_path / "local-server"
    monkeypatch.setenv(STATE_DIR_ENV, str(state_dir))
    yield state_dir
    state_file = state_dir / "server.json"
    if state_file.exists():
        os.kill(json.loads(state_file.read_text())["pid"], signal.SIGTERM)


_WEBHOOK_LOG = re.compile(r"webhook to (\S+) failed")
_LOOPBACK = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:\d+)?")


def assert_stayed_on_loopback(server: LocalBatchServer) -> None:
    """The server tried no webhook delivery to a host beyond loopback (every delivery in
    this sandbox to another host fails and is logged)."""
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    outside = [h for h in _WEBHOOK_LOG.findall(log) if not _LOOPBACK.fullmatch(h)]
    assert not outside, f"server {server.data_dir} sent webhooks beyond loopback: {outside}"


@pytest.fixture
def client(shared_batch_server: LocalBatchServer) -> openai.OpenAI:
    return sdk_client(shared_batch_server)


def sdk_client(
    server: LocalBatchServer, api_key: str = SHARED_API_KEY, **kwargs: Any
) -> openai.OpenAI:
    """An openai SDK client for `server` (no retries unless asked)."""
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, **kwargs)


def request_line(custom_id: str, content: str = "hello", **body: Any) -> dict[str, Any]:
    """One chat-completions request line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "test-model", "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(lines: Iterable[Any]) -> bytes:
    """JSONL bytes; `bytes`/`str` items are written as they are (for malformed lines)."""
    out = []
    for line in lines:
        out.append(
            line.encode()
            if isinstance(line, str)
            else line
            if isinstance(line, bytes)
            else orjson.dumps(line)
        )
    return b"\n".join(out) + b"\n"


def submit(
    client: openai.OpenAI,
    lines: Iterable[Any],
    endpoint: str = "/v1/chat/completions",
    **create: Any,
) -> Any:
    """Upload `lines` and create a batch over them; returns the Batch."""
    upload = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint=endpoint, completion_window="24h", **create
    )


def wait_final(client: openai.OpenAI, batch_id: str, timeout: float = 60.0) -> Any:
    """Poll until the batch reaches a final status; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL_STATUSES:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch.status}")
        time.sleep(0.05)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The parsed lines of an output/error file (none when the id is None)."""
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def _openapi_31(node: Any) -> Any:
    """Turn OpenAPI 3.0 `nullable: true` into JSON Schema (`type: [T, "null"]`)."""
    if isinstance(node, list):
        return [_openapi_31(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _openapi_31(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


class SpecMissingWarning(UserWarning):
    """The OpenAI spec is absent: responses are not checked against it."""


def openapi_validator(spec_path: Path) -> Callable[[Any, str], None]:
    """A validator against the spec at `spec_path`; where it is absent, one that checks
    nothing (after one warning naming the path), so the rest of each test still runs."""
    if not spec_path.exists():
        warnings.warn(
            f"OpenAI spec not found at {spec_path} (shared/ is a sibling of the clone): "
            "responses are not validated against it; everything else is tested",
            SpecMissingWarning,
            stacklevel=2,
        )

        def skip_check(instance: Any, schema_name: str) -> None:
            return None

        return skip_check
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = _openapi_31(json.loads(spec_path.read_text()))
    registry = Registry().with_resource("urn:openai-spec", Resource(spec, DRAFT202012))

    def validate(instance: Any, schema_name: str) -> None:
        assert schema_name in spec["components"]["schemas"], schema_name
        schema = {"$ref": f"urn:openai-spec#/components/schemas/{schema_name}"}
        Draft202012Validator(schema, registry=registry).validate(instance)

    return validate


@pytest.fixture(scope="session")
def openapi_validate() -> Callable[[Any, str], None]:
    return openapi_validator(SPEC_PATH)


class WebhookReceiver:
    """Records the JSON bodies POSTed to `url`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.events

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
