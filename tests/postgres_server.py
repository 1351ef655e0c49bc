"""A throwaway PostgreSQL server from the distribution's binaries, for tests and benchmarks.

`running_postgres_server()` runs Debian's `initdb` and `pg_ctl` (`postgres_bin_dir`) on a
cluster in a temporary directory owned by an unprivileged user (the package's `postgres`
system user when we are root: `initdb` refuses root), listening on a free loopback port
with its unix socket in that directory, tuned for throwaway data (no fsync); it is
stopped and deleted on exit. `PostgresServer` makes databases on it and the
`dagster.yaml` of a Dagster instance whose storage is one of them.

Used by `tests/postgres_fixtures.py` (pytest fixtures) and `bench/bench_sensor_postgres.py`;
no pytest here.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "dagster"
SYSTEM_USER = "postgres"  # created by Debian's postgresql package


def postgres_bin_dir() -> Path | None:
    """The directory of `initdb` and `pg_ctl`: on PATH, or Debian's newest version's."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    return Path(candidates[-1]).parent if candidates else None


def run(command: list[str]) -> None:
    """Run `command`; on failure, raise with its output."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running cluster: `SUPERUSER` may connect over loopback without a password."""

    bin_dir: Path
    port: int
    socket_dir: Path

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database`. The driver is named: SQLAlchemy 2.1 reads a
        bare `postgresql://` as psycopg 3, and dagster-postgres installs psycopg2."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"dagster_{uuid.uuid4().hex[:12]}"
        run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
            + ["-U", SUPERUSER, name]
        )
        return name

    def dagster_yaml(self, database: str, *, max_concurrent_runs: int = 8) -> str:
        """Run, event-log and schedule storage in `database`; queued runs, launched by
        parallel threads: the default launcher's launch returns only once the run's process
        has loaded the code location, so one dequeue thread launches runs one by one."""
        return (
            "storage:\n"
            "  postgres:\n"
            f"    postgres_url: {self.url(database)}\n"
            "run_coordinator:\n"
            "  module: dagster.core.run_coordinator\n"
            "  class: QueuedRunCoordinator\n"
            "  config:\n"
            f"    max_concurrent_runs: {max_concurrent_runs}\n"
            "    dequeue_interval_seconds: 1\n"
            "    dequeue_use_threads: true\n"
            f"    dequeue_num_workers: {max_concurrent_runs}\n"
            "telemetry:\n"
            "  enabled: false\n"
        )


def as_cluster_owner(command: list[str]) -> list[str]:
    """`command` as the unprivileged `postgres` user when we are root (initdb refuses
    root); as ourselves otherwise."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SYSTEM_USER, "--", *command]
    return command


@contextmanager
def running_postgres_server(bin_dir: Path) -> Iterator[PostgresServer]:
    """A fresh cluster of `bin_dir`'s PostgreSQL, started; stopped and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="inference-batch-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user=SYSTEM_USER)
    data = root / "data"
    port = free_port()
    started = False
    try:
        run(
            as_cluster_owner(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER]
                + ["--auth=trust", "-E", "UTF8", "--no-sync"]
            )
        )
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        run(
            as_cluster_owner(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options]
                + ["-l", str(root / "server.log"), "-w", "-t", "60", "start"]
            )
        )
        started = True
        yield PostgresServer(bin_dir=bin_dir, port=port, socket_dir=root)
    finally:
        if started:
            subprocess.run(
                as_cluster_owner(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
