"""Start, or reuse, the machine-wide local Batch API server.

Used when no API key and no base URL are configured: every Dagster process on the
machine (webserver, daemon, run workers, code servers) finds the same detached server
through a small state file guarded by a file lock, so batches submitted by one process
are seen by the others. A server started by another version or checkout of this package
is replaced; batches survive because they live in SQLite in the shared data dir.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

from .local_server import LocalBatchServer

STATE_DIR_ENV = "INFERENCE_LOCAL_SERVER_DIR"

_PACKAGE_DIR = Path(__file__).resolve().parent
_STOP_TIMEOUT = 10.0
logger = logging.getLogger("dagster_inference_batch")


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


def _code_identity() -> dict[str, str]:
    """Version, location and server-source hash of the code this process would start."""
    try:
        version = metadata.version("dagster-inference-batch")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for source in sorted((_PACKAGE_DIR / "local_server").glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return {
        "version": version,
        "code_path": str(_PACKAGE_DIR),
        "code_hash": digest.hexdigest()[:16],
    }


def _read_state(state_file: Path) -> dict[str, object] | None:
    """The recorded server, or None if there is none or the file is unreadable."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


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
    except (OSError, ValueError):
        return False


def _stale_reason(recorded: dict[str, object], current: dict[str, str]) -> str | None:
    """Why the recorded server must not be reused, or None if it runs the current code."""
    missing = [key for key in current if key not in recorded]
    if missing:
        return f"it was recorded by an older version of this package (no {', '.join(missing)})"
    if not Path(str(recorded["code_path"])).exists():
        return f"its code at {recorded['code_path']} no longer exists"
    for key, value in current.items():
        if recorded[key] != value:
            return f"it runs {key} {recorded[key]!r}, this process has {value!r}"
    return None


def _exited(pid: int) -> bool:
    """True once `pid` is gone; reaps it if it is this process's own child."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(pid: int) -> None:
    """SIGTERM, SIGKILL after `_STOP_TIMEOUT`; returns once the process has exited."""
    for sig, timeout in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, _STOP_TIMEOUT)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _exited(pid):
                return
            time.sleep(0.05)
    raise RuntimeError(f"old local batch server (pid {pid}) did not exit")


def _spawn(state_dir: Path, identity: dict[str, str]) -> dict[str, object]:
    server = LocalBatchServer(state_dir / "data")  # stderr goes to data/server.log
    base_url = server.start()
    return {"base_url": base_url, "pid": server.detach(), **identity}


def ensure_local_server(state_dir: Path | None = None) -> str:
    """Return the base URL of the shared local server, starting it if none is running, or
    replacing it if it runs another version or checkout of this package.

    Example:
        >>> ensure_local_server()  # doctest: +SKIP
        'http://127.0.0.1:40123/v1'
    """
    state_dir = state_dir or default_state_dir()
    state_file = state_dir / "server.json"
    identity = _code_identity()
    with _locked(state_dir):
        recorded = _read_state(state_file)
        if recorded is not None and _is_running(recorded):
            reason = _stale_reason(recorded, identity)
            if reason is None:
                return str(recorded["base_url"])
            logger.info(
                "Replacing the shared local batch server at %s (pid %s): %s",
                recorded["base_url"],
                recorded["pid"],
                reason,
            )
            _stop(int(recorded["pid"]))  # type: ignore[call-overload]
        state = _spawn(state_dir, identity)
        state_file.write_text(json.dumps(state))
        return str(state["base_url"])
