"""A throwaway PostgreSQL server for the tests marked `postgres`, and Dagster homes on it.

`postgres_server` (session): a cluster of Debian's `postgresql` binaries in a temporary
directory, on a free loopback port (`tests/postgres_server.py`); stopped and deleted
after the session.

`postgres_home` (per test): a fresh database on that server and a `DAGSTER_HOME` whose
`dagster.yaml` keeps run, event-log and schedule storage in it (`dagster-postgres`) and
queues runs (`QueuedRunCoordinator`, dequeued by parallel threads); runs go through the
default run launcher, each in its own process.

Without the binaries (or without `dagster-postgres`) the tests are skipped with the
reason, unless `INFERENCE_BATCH_REQUIRE_POSTGRES=1` (set by `.ci/run`): then they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer, postgres_bin_dir, running_postgres_server

REQUIRE = os.environ.get("INFERENCE_BATCH_REQUIRE_POSTGRES") == "1"


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (INFERENCE_BATCH_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable("needs PostgreSQL's initdb (Debian: apt-get install postgresql)")
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        unavailable("needs dagster-postgres (pip install -e '.[test]')")
    with running_postgres_server(bin_dir) as server:
        yield server


@pytest.fixture
def postgres_home(postgres_server: PostgresServer, tmp_path: Path) -> Path:
    """A `DAGSTER_HOME` on a fresh database of `postgres_server`."""
    home = tmp_path / "dagster-home-pg"
    home.mkdir()
    database = postgres_server.create_database()
    (home / "dagster.yaml").write_text(postgres_server.dagster_yaml(database))
    return home
