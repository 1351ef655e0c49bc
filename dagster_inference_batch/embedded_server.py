"""Start, or reuse, the machine-wide local Batch API server.

Used when no API key and no base URL are configured: every Dagster process on the
machine (webserver, daemon, run workers, code servers) finds the same detached server
through a small state file guarded by a file lock, so batches submitted by one process
are seen by the others.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from .local_server.config import API_KEY_ENV, UPSTREAM_API_KEY_ENV

STATE_DIR_ENV = "INFERENCE_LOCAL_SERVER_DIR"
SERVE_SCRIPT = Path(__file__).with_name("local_server") / "_serve.py"
SERVER_KEY_VARIABLES = (API_KEY_ENV, UPSTREAM_API_KEY_ENV)
STARTUP_TIMEOUT_SECONDS = 30.0


def default_state_dir() -> Path:
    """Where the shared local server keeps its data: ``$INFERENCE_LOCAL_SERVER_DIR`` or
    ``~/.cache/dagster-inference-batch/local-server``."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dagster-inference-batch" / "local-server"


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "server.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_running(state: dict[str, object]) -> bool:
    """The recorded server process is alive and its port answers."""
    try:
        os.kill(int(state["pid"]), 0)  # type: ignore[call-overload]
    except (KeyError, OSError, TypeError, ValueError):
        return False
    parsed = urlparse(str(state.get("base_url", "")))
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=1.0):
            return True
    except OSError:
        return False


def _spawn(state_dir: Path) -> dict[str, object]:
    log_path = state_dir / "server.log"
    command = [
        sys.executable,
        str(SERVE_SCRIPT),  # starts without importing Dagster: much faster
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(state_dir / "data"),
    ]
    # the shared server takes any key: keys meant for a hand-started server stay out
    env = {k: v for k, v in os.environ.items() if k not in SERVER_KEY_VARIABLES}
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the Dagster process that started it
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("http://") and line.rstrip().endswith("/v1"):
                return {"base_url": line.strip(), "pid": process.pid}
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(
        f"the local Batch API server did not start; see {log_path}:\n"
        + log_path.read_text(errors="replace")[-2000:]
    )


def ensure_local_server(state_dir: Path | None = None) -> str:
    """Return the base URL of the shared local server, starting it if none is running.

    Example:
        >>> ensure_local_server()  # doctest: +SKIP
        'http://127.0.0.1:40123/v1'
    """
    state_dir = state_dir or default_state_dir()
    state_file = state_dir / "server.json"
    with _locked(state_dir):
        if state_file.exists():
            recorded = json.loads(state_file.read_text())
            if _is_running(recorded):
                return str(recorded["base_url"])
        state = _spawn(state_dir)
        state_file.write_text(json.dumps(state))
        return str(state["base_url"])
