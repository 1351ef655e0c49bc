"""The retry policy still sees the openai SDK's HTTP errors after an SDK upgrade.

A download cut short surfaces as the HTTP library's transport error, not as an openai
error. ``retries`` finds that library through ``openai.DefaultHttpxClient``; should a new
SDK move to a library it cannot read, these tests fail, before cut streams stop being
retried in production.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from dagster_inference_batch.errors import BatchAPIError
from dagster_inference_batch.retries import (
    TRANSPORT_ERRORS,
    RetryPolicy,
    is_retryable,
    sdk_http_library,
)


class _CutShort(BaseHTTPRequestHandler):
    """Promises 1000 bytes of file content, sends 10 and hangs up."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cutting_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CutShort)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_sdk_http_library_is_found_and_has_transport_errors():
    library = sdk_http_library()
    assert issubclass(openai.DefaultHttpxClient, library.Client)
    assert TRANSPORT_ERRORS, f"{library.__name__} has no TransportError: cut streams go unretried"
    assert is_retryable(library.RemoteProtocolError("peer closed connection"))


def test_a_stream_the_sdk_reads_cut_short_is_retryable(cutting_server):
    sdk = openai.OpenAI(api_key="k", base_url=cutting_server, max_retries=0)

    def download() -> bytes:
        with sdk.files.with_streaming_response.content("file-x") as response:
            return b"".join(response.iter_bytes())

    with pytest.raises(Exception) as raised:
        download()
    assert is_retryable(raised.value), f"{type(raised.value)!r} would not be retried"
    tries = []
    with pytest.raises(BatchAPIError, match="after 2 tries"):
        RetryPolicy(max_retries=1, backoff_seconds=0.0).call(
            lambda: tries.append(1) or download(), what="download file-x"
        )
    assert len(tries) == 2
    sdk.close()
