"""`dagster-inference-batch serve ...`: run the local Batch API server in the foreground.

`LocalBatchServer` runs this module as ``python -m dagster_inference_batch.local_server.cli``
and reads the base URL it prints on stdout once the server is ready.
"""

from __future__ import annotations

import argparse
import fcntl
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import uvicorn

from .app import create_app
from .config import ServerConfig

_BACKLOG = 2048  # uvicorn's default


def serve(config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM, printing the base URL once requests can be sent.

    The socket is bound and listening before uvicorn starts, so a client that connects as
    soon as the URL is printed waits in the listen backlog instead of being refused.

    Args:
        config: The server's options.

    Raises:
        SystemExit: Another server already uses ``config.data_dir`` (one server per data dir).
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(config.data_dir / "server.lock")
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown}:{port}/v1"
    app = create_app(config, on_ready=lambda: print(base_url, flush=True))
    server_config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=5, backlog=_BACKLOG
    )
    sock.listen(_BACKLOG)
    try:
        uvicorn.Server(server_config).run(sockets=[sock])
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
    """A TCP socket bound to `host`:`port` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main(
    argv: Sequence[str] | None = None,
    *,
    more_commands: Mapping[str, tuple[str, Callable[[], None]]] | None = None,
) -> None:
    """Parse the command line and run the command: ``serve``, or one of ``more_commands``.

    Args:
        argv: The arguments after the program name; ``None`` reads ``sys.argv``.
        more_commands: Further commands without arguments: name -> (help, function).
            The package's console script adds ``status`` and ``stop`` for the shared
            local server.

    Raises:
        SystemExit: The arguments are invalid, or the server could not start.
    """
    parser = argparse.ArgumentParser(
        prog="dagster-inference-batch", description="Tools for dagster-inference-batch."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="run the local OpenAI-compatible Batch API server"
    )
    ServerConfig.add_arguments(serve_parser)
    for name, (help_text, _) in (more_commands or {}).items():
        commands.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    if args.command != "serve":
        (more_commands or {})[args.command][1]()
        return
    try:
        config = ServerConfig.from_namespace(args)
    except ValueError as exc:
        serve_parser.error(str(exc))
    serve(config)


if __name__ == "__main__":
    main()
