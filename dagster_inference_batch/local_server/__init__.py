"""The local OpenAI-compatible Batch API server, and a handle to run it from Python.

`LocalBatchServer` runs `dagster-inference-batch serve` as a subprocess, so it can be
stopped, killed (SIGKILL) and restarted on the same port and data dir.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .config import ServerConfig

__all__ = ["LocalBatchServer", "ServerConfig"]

_LOG_NAME = "server.log"
_SERVE_SCRIPT = Path(__file__).with_name("_serve.py")


class LocalBatchServer:
    """A local Batch API server in a subprocess; `options` are `ServerConfig` fields."""

    def __init__(
        self,
        data_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 30.0,
        **options: Any,
    ) -> None:
        self.config = ServerConfig(data_dir=Path(data_dir), host=host, port=port, **options)
        self.startup_timeout = startup_timeout
        self.base_url: str | None = None
        self._process: subprocess.Popen[str] | None = None

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        """The server's stderr (uvicorn warnings, worker errors)."""
        return self.data_dir / _LOG_NAME

    def start(self) -> str:
        """Start the server and wait until it accepts connections; returns the base URL."""
        if self._process is not None:
            raise RuntimeError("server already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(_SERVE_SCRIPT), "serve", *self.config.to_argv()]
        # Keys go through the environment: argv is visible to every user (`ps`).
        env = dict(os.environ)
        for name, value in self.config.secret_env().items():
            if value:
                env[name] = value
            else:
                env.pop(name, None)
        with self.log_path.open("a") as log:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
                env=env,
            )
        self.base_url = self._read_base_url(self._process)
        # Restarts keep the port that was picked.
        self.config.port = int(self.base_url.rsplit(":", 1)[1].split("/")[0])
        return self.base_url

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful shutdown (SIGTERM), SIGKILL if it lingers."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._reap()

    def restart(self) -> str:
        """Stop (if running) and start again on the same port and data dir."""
        self.stop()
        return self.start()

    def detach(self) -> int:
        """Let the running server outlive this handle and this process; returns its pid.

        Example:
            >>> pid = LocalBatchServer("/tmp/shared-server").detach()  # doctest: +SKIP
        """
        if self._process is None:
            raise RuntimeError("server not started")
        pid = self._process.pid
        self._reap()
        return pid

    def __enter__(self) -> LocalBatchServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _read_base_url(self, process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if ready:
                line = process.stdout.readline().strip()
                if line.startswith("http"):
                    return line
            if process.poll() is not None:
                break
        self.kill()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"local batch server did not start; log tail:\n{tail}")

    def _reap(self) -> None:
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None
