"""The whole Dagster flow against a provider that fails one call in five.

The local server answers 20 % of the calls with a 500, a 429 or a dropped connection,
half of them after it handled the call (the file was stored, the batch was created, and
the client still sees an error), and adds 100 ms to every call. The submission run, the
sensor's ticks and the results runs go through `Harness` as the daemon would run them.
Nothing may be paid twice (one input file and one batch per shard at the provider) and
nothing lost (every input row once in the results, succeeded).
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from tests.dagster_harness import Harness
from tests.provider_state import assert_every_row_once, assert_one_batch_per_shard

ROWS = 10
PER_BATCH = 4  # 10 rows -> shards of 4, 4 and 2
SHARDS = 3
FAULTY = {"fault_rate": 0.2, "latency_ms": 100, "api_key": "test-key"}
RESOURCE = {"backoff_seconds": 0.05, "max_retries": 10, "max_requests_per_batch": PER_BATCH}
SUBMIT_TRIES = 3  # a user re-runs a submission the faults defeated


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def submit_until_it_succeeds(harness: Harness, partition: str | None = None) -> int:
    """Materialize the input file and the batch, again as a user would if the faults beat
    the client's retries; returns how many runs it took."""
    keys = harness.pipeline
    for tries in range(1, SUBMIT_TRIES + 1):
        run = harness.materialize(
            keys.input_file_key, keys.batch_key, partition=partition, raise_on_error=False
        )
        if run.success:
            return tries
    raise AssertionError(f"submission failed {SUBMIT_TRIES} times under faults")


def retries_logged(instance: dg.DagsterInstance) -> int:
    """How many log lines of the instance's runs tell of a retried call (evidence that
    the faults struck the flow, not only the server)."""
    return sum(
        "retrying" in (entry.user_message or "")
        for run in instance.get_runs()
        for entry in instance.all_logs(run.run_id)
    )


@pytest.mark.slow
def test_faults_everywhere_still_one_batch_per_shard_and_every_row_once(instance, batch_server):
    server = batch_server(seed=11, **FAULTY)
    harness = Harness(instance, server.base_url, rows=ROWS, resource_options=RESOURCE)

    submit_until_it_succeeds(harness)
    harness.tick_until(harness.results_done, timeout=90)

    batches = assert_one_batch_per_shard(server, SHARDS)
    assert {b.status for b in batches} == {"completed"}
    recorded = harness.materializations(harness.pipeline.batch_key)[-1]
    job = recorded.metadata["inference_batch/job"].value
    assert sorted(s["batch_id"] for s in job["shards"]) == sorted(b.id for b in batches)
    assert len(harness.materializations(harness.pipeline.results_key)) == 1
    assert_every_row_once(harness.results_frame(), [f"row-{i}" for i in range(ROWS)])
    assert retries_logged(instance) > 0


@pytest.mark.slow
def test_faults_with_two_partitions_in_flight(instance, batch_server):
    server = batch_server(seed=23, **FAULTY)
    partitions = ["east", "west"]
    harness = Harness(
        instance,
        server.base_url,
        rows=ROWS,
        partitions_def=dg.StaticPartitionsDefinition(partitions),
        resource_options=RESOURCE,
    )

    for partition in partitions:
        submit_until_it_succeeds(harness, partition)
    harness.tick_until(lambda: all(harness.results_done(p) for p in partitions), timeout=90)

    batches = assert_one_batch_per_shard(server, SHARDS * len(partitions))
    by_partition = sorted((b.metadata or {}).get("dagster_partition") for b in batches)
    assert by_partition == sorted(partitions * SHARDS)
    for partition in partitions:
        assert len(harness.materializations(harness.pipeline.results_key, partition)) == 1
        assert_every_row_once(
            harness.results_frame(partition), [f"{partition}-{i}" for i in range(ROWS)]
        )
    assert retries_logged(instance) > 0
