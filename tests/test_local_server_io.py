"""The local server as a process: CLI, large streamed files, the upstream responder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.server_fixtures import read_lines, request_line, sdk_client, submit, wait_final


def test_cli_prints_its_url_once_and_owns_its_data_dir(tmp_path):
    command = [sys.executable, "-m", "dagster_inference_batch.local_server.cli", "serve"]
    args = ["--port", "0", "--data-dir", str(tmp_path)]
    first = subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = first.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert int(url.rsplit(":", 1)[1].removesuffix("/v1")) > 0
        second = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "already" in second.stderr
    finally:
        first.terminate()
        out, _ = first.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert out == "" and first.returncode in (0, -signal.SIGTERM)


def test_cli_rejects_bad_options(tmp_path):
    command = [sys.executable, "-m", "dagster_inference_batch.local_server.cli", "serve"]
    result = subprocess.run(
        [*command, "--data-dir", str(tmp_path), "--responder", "upstream"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "upstream_url" in result.stderr


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(120)
def test_large_files_are_streamed(batch_server, tmp_path):
    size = 200 * 1024 * 1024
    path = tmp_path / "big.jsonl"
    block = (b'{"filler": "' + b"x" * 1000 + b'"}\n') * 1024
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    size = path.stat().st_size
    server = batch_server()
    client = sdk_client(server, timeout=120)
    with path.open("rb") as f:
        upload = client.files.create(file=("big.jsonl", f), purpose="batch")
    assert upload.bytes == size
    received = 0
    with client.files.with_streaming_response.content(upload.id) as response:
        for chunk in response.iter_bytes(1 << 20):
            received += len(chunk)
    assert received == size
    peak_mib = _peak_rss_kib(server.pid) / 1024
    assert peak_mib < 150, f"server peaked at {peak_mib:.0f} MiB for a {size >> 20} MiB file"


class FakeUpstream:
    """A tiny OpenAI-compatible chat server: echoes, fails on request, tracks concurrency."""

    def __init__(self) -> None:
        self.in_flight = self.peak = 0
        self.models: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                    outer.models.append(body["model"])
                time.sleep(0.05)
                with lock:
                    outer.in_flight -= 1
                text = body["messages"][-1]["content"]
                if self.path != "/v1/chat/completions":
                    self._send(
                        404, {"error": {"message": "no route", "type": "invalid_request_error"}}
                    )
                elif text == "refuse":
                    error = {
                        "message": "context too long",
                        "type": "invalid_request_error",
                        "code": "ctx",
                    }
                    self._send(400, {"error": error})
                else:
                    self._send(200, _chat_answer(body["model"], text.upper()))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _chat_answer(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_upstream_responder(batch_server):
    upstream = FakeUpstream()
    try:
        server = batch_server(
            responder="upstream",
            upstream_url=upstream.url,
            upstream_api_key="upstream-secret",
            upstream_concurrency=3,
            upstream_model="served-model",
        )
        client = sdk_client(server)
        lines = [request_line(f"r{i}", f"hello {i}") for i in range(20)] + [
            request_line("bad", "refuse")
        ]
        batch = wait_final(client, submit(client, lines).id)
    finally:
        upstream.server.shutdown()
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (20, 1)
    assert batch.usage.input_tokens == 60
    output = {line["custom_id"]: line for line in read_lines(client, batch.output_file_id)}
    assert output["r7"]["response"]["body"]["choices"][0]["message"]["content"] == "HELLO 7"
    (error,) = read_lines(client, batch.error_file_id)
    assert error["custom_id"] == "bad" and error["error"] is None
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "ctx"
    assert set(upstream.models) == {"served-model"}
    assert 1 < upstream.peak <= 3


def test_unreachable_upstream_gives_line_errors(batch_server):
    server = batch_server(responder="upstream", upstream_url="http://127.0.0.1:9/v1")
    client = sdk_client(server)
    batch = wait_final(client, submit(client, [request_line("a")]).id, timeout=120)
    (error,) = read_lines(client, batch.error_file_id)
    assert error["response"] is None and error["error"]["code"] == "upstream_unavailable"
