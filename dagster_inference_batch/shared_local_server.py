"""Start, or reuse, the machine-wide local Batch API server.

Used by ``InferenceBatchResource(use_local_server=True)``: every Dagster process on the
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

from .local_server import LocalBatchServer

__all__ = [
    "SETTINGS_ENV",
    "STATE_DIR_ENV",
    "default_state_dir",
    "settings_from_env",
    "shared_server_state",
    "start_or_reuse_shared_server",
    "stop_shared_server",
]

STATE_DIR_ENV = "INFERENCE_LOCAL_SERVER_DIR"
# environment variable -> the server option it sets (see ``ServerConfig``)
SETTINGS_ENV = {
    "INFERENCE_LOCAL_SERVER_SPEED": "requests_per_second",
    "INFERENCE_LOCAL_SERVER_VALIDATING_SECONDS": "validating_seconds",
    "INFERENCE_LOCAL_SERVER_FINALIZING_SECONDS": "finalizing_seconds",
    "INFERENCE_LOCAL_SERVER_EXPIRE_AFTER": "expire_after",
    "INFERENCE_LOCAL_SERVER_FAILURE_RATE": "failure_rate",
    "INFERENCE_LOCAL_SERVER_FAULT_RATE": "fault_rate",
}

_PACKAGE_DIR = Path(__file__).resolve().parent
_STOP_TIMEOUT = 10.0
logger = logging.getLogger("dagster_inference_batch")


def default_state_dir() -> Path:
    """Where the shared local server keeps its state and data.

    Returns:
        ``$INFERENCE_LOCAL_SERVER_DIR`` if set, else
        ``~/.cache/dagster-inference-batch/local-server`` (under ``$XDG_CACHE_HOME`` if set).
    """
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dagster-inference-batch" / "local-server"


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, float]:
    """The shared server's options set by ``SETTINGS_ENV`` variables.

    Args:
        environ: The environment; ``None`` reads ``os.environ``.

    Returns:
        Option -> value, for each variable set to a non-empty value.

    Raises:
        ValueError: A variable that is not a number, naming it.

    Example:
        >>> settings_from_env({"INFERENCE_LOCAL_SERVER_SPEED": "2"})
        {'requests_per_second': 2.0}
    """
    environ = os.environ if environ is None else environ
    settings: dict[str, float] = {}
    for name, option in SETTINGS_ENV.items():
        value = environ.get(name, "").strip()
        if not value:
            continue
        try:
            settings[option] = float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a number") from None
    return settings


def shared_server_state(state_dir: Path | None = None) -> dict[str, object] | None:
    """The running shared server as recorded: URL, pid, data dir, settings, version.

    Args:
        state_dir: As for `start_or_reuse_shared_server`.

    Returns:
        The record with ``data_dir`` added, or None when no server runs.

    Example:
        >>> from pathlib import Path
        >>> shared_server_state(Path("no-server-here")) is None
        True
    """
    state_dir = state_dir or default_state_dir()
    recorded = _read_state(state_dir / "server.json")
    if recorded is None or not _is_running(recorded):
        return None
    return {**recorded, "data_dir": str(state_dir / "data")}


def start_or_reuse_shared_server(state_dir: Path | None = None) -> str:
    """Return the base URL of the machine-wide local server, starting one if needed.

    Reuses the server recorded in ``state_dir/server.json`` if it is alive, runs this
    version and checkout of the package and has the settings of ``settings_from_env()``
    (speed, phase times, expiry, failure and fault rates). Otherwise starts a detached server (it outlives
    this process) on ``state_dir/data``, after stopping a recorded one that runs other
    code (the reason is logged). A file lock makes concurrent callers agree on one server.

    Args:
        state_dir: Where the state file, lock and data live; default `default_state_dir()`.

    Returns:
        The server's base URL, such as ``http://127.0.0.1:40123/v1``.

    Raises:
        RuntimeError: The server did not start, or an outdated one did not exit.

    Example:
        >>> from pathlib import Path
        >>> url = start_or_reuse_shared_server(Path("local-server"))
        >>> url.startswith("http://127.0.0.1:")
        True
        >>> start_or_reuse_shared_server(Path("local-server")) == url  # reused
        True
        >>> stop_shared_server(Path("local-server"))
        True
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


def stop_shared_server(state_dir: Path | None = None) -> bool:
    """Stop the machine-wide local server, if one is running; its data stays.

    Args:
        state_dir: As for `start_or_reuse_shared_server`.

    Returns:
        True if a running server was stopped, False if none was running.

    Raises:
        RuntimeError: The server did not exit after SIGTERM and SIGKILL.

    Example:
        >>> from pathlib import Path
        >>> stop_shared_server(Path("no-server-here"))
        False
    """
    state_dir = state_dir or default_state_dir()
    state_file = state_dir / "server.json"
    with _locked(state_dir):
        recorded = _read_state(state_file)
        if recorded is None or not _is_running(recorded):
            return False
        _stop(int(recorded["pid"]))  # type: ignore[call-overload]
        state_file.unlink()
        return True


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
    """Version, location and server-source hash of the code this process would start,
    and the settings it would start it with."""
    try:
        version = metadata.version("dagster-inference-batch")
    except metadata.PackageNotFoundError:
        version = "unknown"
    sources = sorted((_PACKAGE_DIR / "local_server").glob("*.py"))
    return {
        "version": version,
        "code_path": str(_PACKAGE_DIR),
        "code_hash": _source_hash(sources),
        "settings": json.dumps(settings_from_env(), sort_keys=True),
    }


_hashed: dict[tuple[tuple[str, int, int], ...], str] = {}


def _source_hash(sources: list[Path]) -> str:
    """Short sha256 of `sources`; read again only when a file's size or mtime changes.

    The hash describes the code a new server would run, which is on disk, so a long-lived
    process must notice edits: keyed on the files' stats, not computed once per process.
    """
    stats = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sources)
    if stats not in _hashed:
        digest = hashlib.sha256()
        for source in sources:
            digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
        _hashed.clear()
        _hashed[stats] = digest.hexdigest()[:16]
    return _hashed[stats]


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
    return _is_zombie(pid)  # exited, but its parent (another process) has not reaped it


def _is_zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits for its parent to reap it (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


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
    raise RuntimeError(f"the local batch server (pid {pid}) did not exit")


def _spawn(state_dir: Path, identity: dict[str, str]) -> dict[str, object]:
    settings = json.loads(identity["settings"])
    server = LocalBatchServer(state_dir / "data", **settings)  # stderr: data/server.log
    base_url = server.start()
    return {"base_url": base_url, "pid": server.detach(), **identity}
