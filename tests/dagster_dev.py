"""`dagster dev` (webserver + daemon) as a subprocess, for the end-to-end tests.

`start_dagster_dev` starts it on a `DAGSTER_HOME` (the repository's `workspace.yaml`, or
the code location named by `location_args`) and waits for the webserver and the code
locations; `DagsterDev`
queries it over GraphQL; `wait_for` polls a condition, failing with the log's tail if
`dagster dev` exits or the time is up; `stop_group` stops the whole process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
WAIT_SECONDS = 180

LATEST = """
query Latest($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
        }
      }
    }
  }
}
"""
LOCATIONS = """
query Locations {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


@dataclass
class DagsterDev:
    port: int
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        assert "errors" not in body, body["errors"]
        return body["data"]

    def locations_loaded(self) -> bool:
        """Whether every code location has loaded; fails on one that could not load."""
        try:
            workspace = self.graphql(LOCATIONS)["workspaceOrError"]
        except OSError:
            return False
        entries = workspace.get("locationEntries") or []
        for entry in entries:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                pytest.fail(f"code location {entry['name']}: {loaded['message']}")
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

    def latest(self, asset: str) -> dict[str, Any] | None:
        """The latest materialization: run id and numeric metadata by label."""
        data = self.graphql(LATEST, key={"path": [asset]})["assetOrError"]
        events = data.get("assetMaterializations") or []
        if not events:
            return None
        values = {
            e["label"]: e.get("intValue", e.get("floatValue")) for e in events[0]["metadataEntries"]
        }
        return {"run_id": events[0]["runId"], "metadata": values}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(
    done: Callable[[], Any],
    what: str,
    process: subprocess.Popen,
    home: Path,
    timeout: float = WAIT_SECONDS,
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (home / "dagster-dev.log").read_text(errors="replace")[-4000:]
            pytest.fail(f"waiting for {what}; dagster dev log tail:\n{tail}")
        time.sleep(2)


def start_dagster_dev(
    home: Path, env: dict[str, str], location_args: Sequence[str] = ()
) -> tuple[subprocess.Popen, DagsterDev]:
    """`dagster dev` in the repository on `home`, in its own process group, its output
    appended to `home/dagster-dev.log`; returns once the webserver answers and its code
    locations have loaded."""
    port = free_port()
    with (home / "dagster-dev.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)]
            + list(location_args),
            cwd=REPO,
            env={**env, "DAGSTER_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(port=port, home=home)
    try:
        wait_for(lambda: answers(f"{dev.url}/server_info"), "the webserver", process, home)
        wait_for(dev.locations_loaded, "the code locations", process, home)
    except BaseException:
        stop_group(process)
        raise
    return process, dev


def stop_group(process: subprocess.Popen) -> None:
    """Interrupt the process group we started, then kill what is left of it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
