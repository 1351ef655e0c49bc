"""`dagster-inference-batch serve ...`: run the local Batch API server in the foreground."""

from __future__ import annotations

import argparse
import fcntl
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import uvicorn

from .app import create_app
from .config import ServerConfig


class _Server(uvicorn.Server):
    """Prints the base URL once the server accepts connections."""

    def __init__(self, config: uvicorn.Config, base_url: str) -> None:
        super().__init__(config)
        self.base_url = base_url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(self.base_url, flush=True)


def serve(config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM; one server per data dir."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(config.data_dir / "server.lock")
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(config)
    server_config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    try:
        _Server(server_config, f"http://{shown}:{port}/v1").run(sockets=[sock])
    finally:
        lock.close()


def _lock(path: Path) -> IO[str]:
    handle = open(path, "w")  # noqa: SIM115 - held for the life of the server
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"error: another server is already using {path}")
    return handle


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dagster-inference-batch", description="Tools for dagster-inference-batch."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="run the local OpenAI-compatible Batch API server"
    )
    ServerConfig.add_arguments(serve_parser)
    args = parser.parse_args(argv)
    try:
        config = ServerConfig.from_namespace(args)
    except ValueError as exc:
        serve_parser.error(str(exc))
    serve(config)


if __name__ == "__main__":
    main()
