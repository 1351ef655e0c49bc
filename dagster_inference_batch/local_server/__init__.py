"""The local OpenAI-compatible Batch API server, and a handle to run it from Python.

`LocalBatchServer` runs `dagster-inference-batch serve` (``python -m
dagster_inference_batch.local_server.cli serve``) as a subprocess, so it can be stopped,
killed (SIGKILL) and restarted on the same port and data dir.
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
_CLI_MODULE = "dagster_inference_batch.local_server.cli"


class LocalBatchServer:
    """A local Batch API server in a subprocess, speaking the OpenAI Files and Batches API.

    Its answers are synthetic (or forwarded to ``upstream_url``); its state lives in SQLite
    under `data_dir`, so a restarted server, or a new one on the same dir, carries on.

    Args:
        data_dir: Directory for the server's SQLite state, files and ``server.log``.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (kept across `restart`).
        startup_timeout: Seconds `start` waits for the server to be ready.
        **options: Other `ServerConfig` fields, such as ``api_key``, ``fault_rate`` or
            ``validating_seconds``.

    Raises:
        ValueError: An option is out of range.

    Example:
        >>> import openai
        >>> with LocalBatchServer("server-data", validating_seconds=0.05) as server:
        ...     sdk = openai.OpenAI(base_url=server.base_url, api_key="any")
        ...     upload = sdk.files.create(file=("in.jsonl", b"{}\\n"), purpose="batch")
        ...     upload.filename
        'in.jsonl'
    """

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
        """The directory holding the server's state."""
        return self.config.data_dir

    @property
    def pid(self) -> int | None:
        """The server process's id while this handle runs it, else None."""
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        """The server's stderr (uvicorn warnings, worker errors)."""
        return self.data_dir / _LOG_NAME

    def start(self) -> str:
        """Start the server and wait until it accepts requests.

        Returns:
            The base URL, such as ``http://127.0.0.1:40123/v1`` (also in `base_url`).

        Raises:
            RuntimeError: It is already started, or it did not start within
                `startup_timeout` (the message carries the tail of its log).
        """
        if self._process is not None:
            raise RuntimeError("server already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", _CLI_MODULE, "serve", *self.config.to_argv()]
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
        """Shut the server down gracefully (SIGTERM); does nothing if it is not running.

        Args:
            timeout: Seconds to wait before SIGKILL.
        """
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
        """Kill the server with SIGKILL, giving it no chance to clean up (crash tests)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._reap()

    def restart(self) -> str:
        """Stop the server (if running) and start it again on the same port and data dir.

        Returns:
            The base URL.

        Raises:
            RuntimeError: The server did not start again.
        """
        self.stop()
        return self.start()

    def detach(self) -> int:
        """Let the running server outlive this handle and this process.

        The handle forgets the process: `stop` and `kill` no longer reach it; signal the
        returned pid instead.

        Returns:
            The server's pid.

        Raises:
            RuntimeError: The server is not started.

        Example:
            >>> import os, signal
            >>> server = LocalBatchServer("detached-data")
            >>> url = server.start()
            >>> pid = server.detach()
            >>> server.pid is None
            True
            >>> os.kill(pid, signal.SIGTERM)
            >>> os.waitpid(pid, 0)[0] == pid  # reap it: it is still this process's child
            True
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
