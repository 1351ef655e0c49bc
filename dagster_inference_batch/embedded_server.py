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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from .local_server import LocalBatchServer

STATE_DIR_ENV = "INFERENCE_LOCAL_SERVER_DIR"


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
    server = LocalBatchServer(state_dir / "data")  # stderr goes to data/server.log
    base_url = server.start()
    return {"base_url": base_url, "pid": server.detach()}


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
