"""Benchmark: the sensor's tick with 1,000 in-flight batches on a Postgres-backed instance.

``bench_sensor.py``'s 1,000 case (its cached server fixture, its bar, its ticks and its
baseline), with the Dagster instance's run and event-log storage in a throwaway
PostgreSQL server (``tests/postgres_server.py``: Debian's binaries, a temporary cluster
on a free loopback port, no fsync) instead of SQLite. The server's state is the SQLite
variant's cached one; the event-log history (the same ``write_history``) is written into
a fresh database at each run, and its time is the row's ``event_log_history_s``.

Without PostgreSQL's binaries or ``dagster-postgres`` it measures nothing and prints why.

    PYTHONPATH=. .venv/bin/python bench/bench_sensor_postgres.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import openai
import orjson
from bench_sensor import (
    API_KEY,
    ITEMS,
    SCRATCH,
    SMALL_BAR,
    InstanceFor,
    SensorRun,
    bench_pipeline,
    measure,
    partition_keys,
    to_row,
    write_history,
)
from common import BenchRow
from machine import describe_machine

from dagster_inference_batch.local_server import LocalBatchServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/
from tests.postgres_server import (  # noqa: E402
    PostgresServer,
    postgres_bin_dir,
    running_postgres_server,
)


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or None."""
    if postgres_bin_dir() is None:
        return "no PostgreSQL (initdb): apt-get install postgresql"
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        return "no dagster-postgres: pip install -e '.[test]'"
    return None


def postgres_instance(postgres: PostgresServer) -> InstanceFor:
    """Instances on fresh databases of ``postgres``, each given the fixture's history."""

    @contextmanager
    def instance_for(
        fixture: Path,
        workdir: Path,
        server: LocalBatchServer,
        run: SensorRun,
        log: Callable[[str], None],
    ) -> Iterator[dg.DagsterInstance]:
        home = workdir / "dagster-home"
        home.mkdir()
        (home / "dagster.yaml").write_text(postgres.dagster_yaml(postgres.create_database()))
        ready = orjson.loads((fixture / "ready.json").read_bytes())
        sdk = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=5)
        listed = {batch.id: batch for batch in sdk.batches.list(limit=100)}
        batches = [listed[batch_id] for batch_id in ready["batch_ids"]]
        partitions = partition_keys(run.partitions)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            start = time.perf_counter()
            instance.add_dynamic_partitions(ITEMS.name, partitions)
            write_history(instance, bench_pipeline(), batches[0].input_file_id, batches, partitions)
            run.setup["event_log_history_s"] = time.perf_counter() - start
            log(
                f"{run.partitions}: wrote the event-log history to Postgres in "
                f"{run.setup['event_log_history_s']:.1f} s"
            )
            yield instance

    return instance_for


def run(quick: bool) -> list[BenchRow]:
    """The row "sensor tick, 1,000 in-flight batches ..., Postgres" (40 when quick); no
    row, and the reason printed, without PostgreSQL."""
    reason = unavailable()
    if reason is not None:
        print(f"bench_sensor_postgres skipped: {reason}", file=sys.stderr, flush=True)
        return []
    n = 40 if quick else 1000
    bar_seconds, rule = SMALL_BAR
    with (
        running_postgres_server(postgres_bin_dir()) as postgres,
        tempfile.TemporaryDirectory(dir=SCRATCH) as workdir,
    ):
        measured = measure(n, Path(workdir), instance_for=postgres_instance(postgres))
    return [to_row(measured, bar_seconds=bar_seconds, bar_rule=rule, storage="Postgres")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 partitions")
    args = parser.parse_args()
    print(describe_machine())
    for row in run(args.quick):
        print(orjson.dumps(row.to_json(), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
