"""The shared local server (`start_or_reuse_shared_server`) is replaced when it runs other code."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from dagster_inference_batch.shared_local_server import (
    _exited,
    shared_server_state,
    start_or_reuse_shared_server,
)

LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
}


def _state(state_dir: Path) -> dict:
    return json.loads((state_dir / "server.json").read_text())


def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)


def _record(state_dir: Path, **changes: object) -> dict:
    """Rewrite server.json by hand: `changes` set fields, a value of None removes one."""
    state = _state(state_dir)
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    (state_dir / "server.json").write_text(json.dumps(state))
    return state


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A state dir; every server recorded in it during the test is stopped at teardown."""
    path = tmp_path / "x"
    pids: set[int] = set()
    real = start_or_reuse_shared_server

    def tracked(state_dir: Path | None = None) -> str:
        url = real(state_dir)
        pids.add(_state(state_dir or path)["pid"])
        return url

    monkeypatch.setattr(f"{__name__}.start_or_reuse_shared_server", tracked)
    yield path
    if (path / "server.json").exists():
        try:
            pids.add(int(_state(path)["pid"]))
        except (ValueError, KeyError, TypeError):
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _assert_replaced(state_dir: Path, old: dict, caplog, why: str) -> dict:
    new_url = start_or_reuse_shared_server(state_dir=state_dir)
    new = _state(state_dir)
    assert new["pid"] != old["pid"]
    assert new["base_url"] == new_url
    assert {"version", "code_path", "code_hash"} <= new.keys()
    assert _exited(old["pid"])  # reaps it too: the servers are children of this process
    messages = [r.getMessage() for r in caplog.records if r.name == "dagster_inference_batch"]
    assert [m for m in messages if "Replacing" in m and why in m], messages
    return new


def test_a_server_recorded_by_the_previous_version_is_replaced_and_batches_survive(
    state_dir, caplog
):
    caplog.set_level(logging.INFO, logger="dagster_inference_batch")
    old_client = _client(start_or_reuse_shared_server(state_dir=state_dir))
    uploaded = old_client.files.create(
        file=("in.jsonl", json.dumps(LINE).encode() + b"\n"), purpose="batch"
    )
    batch = old_client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    state = _state(state_dir)
    old = _record(state_dir, version=None, code_path=None, code_hash=None, settings=None)
    assert set(old) == {"base_url", "pid"}

    new = _assert_replaced(state_dir, state, caplog, "code_hash")

    new_client = _client(new["base_url"])
    deadline = time.monotonic() + 30
    while (found := new_client.batches.retrieve(batch.id)).status != "completed":
        assert found.status not in ("failed", "expired", "cancelled"), found.status
        assert time.monotonic() < deadline, found.status
        time.sleep(0.1)
    assert found.request_counts.completed == 1


@pytest.mark.parametrize(
    ("field", "value"), [("version", "0.0.1-old"), ("code_hash", "0123456789abcdef")]
)
def test_a_server_running_other_code_is_replaced(state_dir, caplog, field, value):
    caplog.set_level(logging.INFO, logger="dagster_inference_batch")
    start_or_reuse_shared_server(state_dir=state_dir)
    old = _record(state_dir, **{field: value})
    _assert_replaced(state_dir, old, caplog, value)


def test_a_server_whose_checkout_is_gone_is_replaced(state_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dagster_inference_batch")
    start_or_reuse_shared_server(state_dir=state_dir)
    gone = tmp_path / "deleted-checkout" / "dagster_inference_batch"
    old = _record(state_dir, code_path=str(gone))
    _assert_replaced(state_dir, old, caplog, "no longer exists")


def test_a_server_running_this_code_is_reused(state_dir, caplog):
    caplog.set_level(logging.INFO, logger="dagster_inference_batch")
    first = start_or_reuse_shared_server(state_dir=state_dir)
    recorded = _state(state_dir)
    assert start_or_reuse_shared_server(state_dir=state_dir) == first
    assert _state(state_dir) == recorded
    assert not [r for r in caplog.records if "Replacing" in r.getMessage()]
    assert list(_client(first).batches.list(limit=1)) == []


def test_an_unreadable_state_file_starts_a_server(state_dir):
    state_dir.mkdir(parents=True)
    (state_dir / "server.json").write_text('{"base_url": "http://127.0.0.1:')
    url = start_or_reuse_shared_server(state_dir=state_dir)
    assert _state(state_dir)["base_url"] == url
    assert list(_client(url).batches.list(limit=1)) == []


def test_settings_from_the_environment_replace_a_server_started_without_them(
    state_dir, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="dagster_inference_batch")
    start_or_reuse_shared_server(state_dir=state_dir)
    old = _state(state_dir)
    monkeypatch.setenv("INFERENCE_LOCAL_SERVER_VALIDATING_SECONDS", "7")
    new = _assert_replaced(state_dir, old, caplog, "settings")
    assert json.loads(new["settings"]) == {"validating_seconds": 7.0}
    monkeypatch.setenv("INFERENCE_LOCAL_SERVER_SPEED", "fast")
    with pytest.raises(ValueError, match="INFERENCE_LOCAL_SERVER_SPEED='fast' is not a number"):
        start_or_reuse_shared_server(state_dir=state_dir)


def test_the_console_script_shows_and_stops_the_shared_server(state_dir, monkeypatch):
    url = start_or_reuse_shared_server(state_dir=state_dir)
    monkeypatch.setenv("INFERENCE_LOCAL_SERVER_DIR", str(state_dir))
    script = Path(sys.executable).parent / "dagster-inference-batch"

    def run(command: str) -> str:
        done = subprocess.run(
            [str(script), command], capture_output=True, text=True, timeout=120, check=True
        )
        return done.stdout

    shown = run("status")
    assert url in shown and str(state_dir / "data") in shown
    assert "stopped the shared local server" in run("stop")
    assert shared_server_state(state_dir) is None
    assert "no shared local server is running" in run("status")
