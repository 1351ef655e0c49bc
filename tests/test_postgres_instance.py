"""The pipeline on a Postgres-backed instance (`dagster-postgres`), not SQLite.

The sensor's event-log queries (the ledger's observations, the latest materializations by
partition) and the race between two processes submitting one partition run against
Postgres storage, shared by separate processes as in a deployment.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from tests.dagster_harness import Harness
from tests.test_graph_idempotency import (
    API_KEY,
    assert_one_live_batch_per_shard_and_both_runs_agree,
    race,
)

pytestmark = pytest.mark.postgres


def test_postgres_home_keeps_runs_and_events_in_postgres(postgres_home: Path) -> None:
    with dg.DagsterInstance.from_config(str(postgres_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


@pytest.mark.slow
def test_submit_and_sensor_collect_partitions_on_postgres(postgres_home, batch_server) -> None:
    server = batch_server(api_key=API_KEY, validating_seconds=0.05, finalizing_seconds=0.05)
    partitions = ["2026-01-01", "2026-01-02"]
    with dg.DagsterInstance.from_config(str(postgres_home)) as instance:
        harness = Harness(
            instance,
            server.base_url,
            rows=4,
            partitions_def=dg.StaticPartitionsDefinition(partitions),
            resource_options={"max_requests_per_batch": 2},
        )
        for partition in partitions:
            assert harness.submit(partition).success
        harness.tick_until(lambda: all(harness.results_done(p) for p in partitions))
        assert len(harness.collect_runs) == len(partitions)
        for partition in partitions:
            (uploads,) = {len(harness.ledger_entries(harness.pipeline.input_file_key, partition))}
            assert uploads >= 2  # one per shard, read back from Postgres by partition
            frame = harness.results_frame(partition)
            assert sorted(frame["custom_id"]) == [f"{partition}-{i}" for i in range(4)]
            assert Counter(frame["status"]) == {"succeeded": 4}
        harness.tick()  # nothing left in flight: no new run
        assert len(harness.collect_runs) == len(partitions)


@pytest.mark.slow
def test_two_processes_racing_on_postgres_pay_for_one_batch_per_shard(
    postgres_home, batch_server, tmp_path
) -> None:
    server = batch_server(api_key=API_KEY, latency_ms=150, validating_seconds=600)
    partitions = [f"p{i}" for i in range(4)]
    race(postgres_home, server.base_url, partitions, tmp_path / "barrier")
    assert_one_live_batch_per_shard_and_both_runs_agree(
        server, postgres_home, server.base_url, partitions
    )
