"""The ``dagster-inference-batch`` console script.

``serve`` runs a local Batch API server in the foreground (``local_server/cli.py``);
``status`` and ``stop`` act on the machine-wide shared local server that
``InferenceBatchResource`` starts for development (``shared_local_server.py``), which
outlives ``dagster dev``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .local_server import cli as local_server_cli
from .shared_local_server import default_state_dir, shared_server_state, stop_shared_server


def status(state_dir: Path | None = None) -> None:
    """Print the shared local server: URL, pid, data dir and settings, or that none runs.

    Args:
        state_dir: Where its state lives; default ``default_state_dir()``.

    Example:
        >>> status(Path("no-server-here"))
        no shared local server is running (state dir no-server-here)
    """
    state_dir = state_dir or default_state_dir()
    state = shared_server_state(state_dir)
    if state is None:
        print(f"no shared local server is running (state dir {state_dir})")
        return
    settings = json.loads(str(state.get("settings") or "{}"))
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    print(f"shared local server at {state['base_url']} (pid {state['pid']})")
    print(f"  data: {state['data_dir']} (kept until you delete it)")
    print(f"  settings: {shown}")
    print(f"  version {state.get('version')} from {state.get('code_path')}")


def stop(state_dir: Path | None = None) -> None:
    """Stop the shared local server, keeping its data.

    Args:
        state_dir: Where its state lives; default ``default_state_dir()``.

    Example:
        >>> stop(Path("no-server-here"))
        no shared local server was running (state dir no-server-here)
    """
    state_dir = state_dir or default_state_dir()
    if stop_shared_server(state_dir):
        print(f"stopped the shared local server; its data stays in {state_dir / 'data'}")
    else:
        print(f"no shared local server was running (state dir {state_dir})")


def main(argv: Sequence[str] | None = None) -> None:
    """``dagster-inference-batch serve|status|stop``.

    Args:
        argv: The arguments after the program name; ``None`` reads ``sys.argv``.

    Example:
        >>> main(["no-such-command"])  # argparse prints the usage to stderr
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    local_server_cli.main(
        argv,
        more_commands={
            "status": ("show the shared local server that use_local_server starts", status),
            "stop": ("stop the shared local server (its data stays)", stop),
        },
    )
