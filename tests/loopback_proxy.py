"""A misbehaving provider on loopback: a proxy to the local server that can refuse
endpoints (404) or cut file downloads short, to test the client against both."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

NOT_FOUND = (
    b'{"error": {"message": "Not found", "type": "invalid_request_error", '
    b'"param": null, "code": null}}'
)


class LoopbackProxy:
    """Forwards to ``upstream_base_url``; ``refuse`` lists ``(method, path)`` answered 404,
    and the first ``cut_downloads`` file downloads stop half-way through the body."""

    def __init__(
        self,
        upstream_base_url: str,
        *,
        refuse: Iterable[tuple[str, str]] = (),
        cut_downloads: int = 0,
    ) -> None:
        upstream = urlparse(upstream_base_url)
        refused_routes = set(refuse)
        self.refused: list[str] = []
        self.cuts_left = cut_downloads
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                path = self.path.split("?", 1)[0]
                if (self.command, path) in refused_routes:
                    proxy.refused.append(f"{self.command} {path}")
                    self._reply(404, {"Content-Type": "application/json"}, NOT_FOUND)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=payload, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                conn.close()
                kept = {
                    k: v
                    for k, v in reply.getheaders()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")
                }
                if path.endswith("/content") and proxy.cuts_left > 0 and len(data) > 1:
                    proxy.cuts_left -= 1
                    self._reply(reply.status, kept, data, send=len(data) // 2)
                    self.close_connection = True
                    return
                self._reply(reply.status, kept, data)

            def _reply(
                self, status: int, headers: dict[str, str], body: bytes, send: int | None = None
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if send is None else body[:send])

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
