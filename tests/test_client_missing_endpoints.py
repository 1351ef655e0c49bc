"""A provider without batch or file listing: the client says so once and carries on."""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pytest

from dagster_inference_batch import InferenceBatchClient

LISTINGS = {("GET", "/v1/batches"), ("GET", "/v1/files")}


class ListlessProvider:
    """A loopback proxy to the local server that answers 404 to the list endpoints."""

    def __init__(self, upstream_base_url: str) -> None:
        upstream = urlparse(upstream_base_url)
        self.refused: list[str] = []
        refused = self.refused

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                path = self.path.split("?", 1)[0]
                if (self.command, path) in LISTINGS:
                    refused.append(f"{self.command} {path}")
                    body = b'{"error": {"message": "Not found", "type": "invalid_request_error", "param": null, "code": null}}'
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=payload, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def listless_provider(batch_server) -> Iterator[ListlessProvider]:
    proxy = ListlessProvider(batch_server(api_key="test-key").base_url)
    yield proxy
    proxy.close()


def test_client_works_without_list_endpoints(listless_provider, caplog):
    caplog.set_level(logging.WARNING)
    client = InferenceBatchClient(api_key="test-key", base_url=listless_provider.base_url)
    inputs = pd.DataFrame(
        {
            "custom_id": [f"r{i}" for i in range(6)],
            "body": [{"model": "m", "prompt": f"count {i}"} for i in range(6)],
        }
    )
    job = client.submit(inputs, endpoint="/v1/completions")
    job = client.wait(job, poll_interval=0.1, timeout=30)
    assert set(client.results(job, inputs)["status"]) == {"succeeded"}
    assert list(client.list_batches()) == []

    assert listless_provider.refused  # the client did try the listings
    notices = [r.getMessage() for r in caplog.records if "does not offer" in r.getMessage()]
    assert len(notices) == 2, notices  # once per missing endpoint, not once per call
