"""A misbehaving provider on loopback: a proxy to the local server that can refuse
endpoints (404), cut file downloads short, report final batches before their file ids,
or serve result files missing lines, to test the client against each."""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

NOT_FOUND = (
    b'{"error": {"message": "Not found", "type": "invalid_request_error", '
    b'"param": null, "code": null}}'
)


_BATCH_PATH = re.compile(r"^/v1/batches/([^/]+)$")
_FINAL = ("completed", "failed", "expired", "cancelled")


class LoopbackProxy:
    """Forwards to ``upstream_base_url``. Misbehaviours, each off by default:

    - ``refuse``: ``(method, path)`` routes answered 404 (the first ``refuse_times``
      times each, or always);
    - ``cut_downloads``: the first N file downloads stop half-way through the body;
    - ``hide_file_ids``: the first N reads of each final batch show no
      ``output_file_id``/``error_file_id`` (as services still finalizing do);
    - ``short_downloads``: the first N downloads of a file of several lines leave out
      its last line (a complete, well-formed response).

    ``requests`` counts every request received by ``"METHOD /path"`` (query left out),
    refused ones too; ``batch_creates`` counts the batches created through it.
    """

    def __init__(
        self,
        upstream_base_url: str,
        *,
        refuse: Iterable[tuple[str, str]] = (),
        refuse_times: int | None = None,
        cut_downloads: int = 0,
        hide_file_ids: int = 0,
        short_downloads: int = 0,
    ) -> None:
        upstream = urlparse(upstream_base_url)
        refused_routes = set(refuse)
        self.refused: list[str] = []
        self.cuts_left = cut_downloads
        self.shorts_left = short_downloads
        self.hidden_reads: dict[str, int] = {}  # batch id -> reads answered without file ids
        self.batch_creates = 0
        self.requests: Counter[str] = Counter()
        proxy = self
        lock = threading.Lock()

        def refuses(route: tuple[str, str]) -> bool:
            if route not in refused_routes:
                return False
            with lock:
                done = sum(1 for r in proxy.refused if r == f"{route[0]} {route[1]}")
                return refuse_times is None or done < refuse_times

        def hide_ids(path: str, data: bytes) -> bytes:
            match = _BATCH_PATH.match(path)
            if not match or not hide_file_ids:
                return data
            batch = json.loads(data)
            if batch.get("status") not in _FINAL:
                return data
            with lock:
                hidden = proxy.hidden_reads.get(match.group(1), 0)
                if hidden >= hide_file_ids:
                    return data
                proxy.hidden_reads[match.group(1)] = hidden + 1
            batch["output_file_id"] = batch["error_file_id"] = None
            return json.dumps(batch).encode()

        def shorten(data: bytes) -> bytes:
            lines = data.splitlines(keepends=True)
            with lock:
                if proxy.shorts_left <= 0 or len(lines) < 2:
                    return data
                proxy.shorts_left -= 1
            return b"".join(lines[:-1])

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                path = self.path.split("?", 1)[0]
                with lock:
                    proxy.requests[f"{self.command} {path}"] += 1
                if refuses((self.command, path)):
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
                if path.endswith("/content") and reply.status == 200:
                    data = shorten(data)
                elif self.command == "GET" and reply.status == 200:
                    data = hide_ids(path, data)
                elif (self.command, path) == ("POST", "/v1/batches") and reply.status == 200:
                    with lock:
                        proxy.batch_creates += 1
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
