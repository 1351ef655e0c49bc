"""One results materialization per job: the sensor requests no ``<name>_collect`` for a
partition whose results a run it did not request (a backfill, "Materialize all")
is materializing (issue 17)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dagster as dg
import pytest

from dagster_inference_batch.sensor.runs_elsewhere import materializes, slots_of
from tests.dagster_harness import Harness
from tests.test_graph_results import NO_COMPUTE_LOGS

PARTITIONS = ["2026-11-01", "2026-11-02", "2026-11-03"]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides=NO_COMPUTE_LOGS) as instance:
        yield instance


def test_a_backfill_of_three_partitions_while_the_sensor_ticks_collects_each_once(
    instance, batch_server
):
    # The backfill's runs go one after the other in a thread (in-process runs started in
    # several threads at once can deadlock in Python's logging setup) while the sensor
    # ticks. Each batch takes a few seconds, well within the results step's wait: the
    # sensor sees it final while the run's own results step still waits on it.
    server = batch_server(validating_seconds=2.0)
    harness = Harness(
        instance,
        server.base_url,
        rows=3,
        partitions_def=dg.StaticPartitionsDefinition(PARTITIONS),
        results_wait_seconds=30,
        incremental=False,  # the partitions' prompts are alike: each is to be sent
    )
    keys = harness.pipeline
    whole_graph = (keys.input_file_key, keys.batch_key, keys.results_key)
    runs: dict[str, dg.ExecuteInProcessResult] = {}

    def backfill() -> None:
        for partition in PARTITIONS:
            runs[partition] = harness.materialize(*whole_graph, partition=partition)

    thread = threading.Thread(target=backfill)
    thread.start()
    try:
        ticks = harness.tick_until(lambda: len(runs) == len(PARTITIONS), timeout=240, pause=0.3)
    finally:
        thread.join(240)

    assert all(run.success for run in runs.values())
    assert harness.collect_runs == []  # the backfill collected every partition itself
    waited = [
        t.skip_message for t in ticks if "materializes llm_results for it" in (t.skip_message or "")
    ]
    assert waited, "the sensor never saw a final batch while the backfill collected it"
    for partition in PARTITIONS:
        assert len(harness.materializations(keys.results_key, partition)) == 1, partition
        assert (harness.results_frame(partition)["status"] == "succeeded").all()
    assert harness.tick().skip_message == "no batches in flight"


def test_which_runs_collect_which_partitions():
    results_key = dg.AssetKey("llm_results")
    by_hand = dg.DagsterRun(job_name="llm_collect", run_id="hand", tags={"dagster/partition": "a"})
    sensors = dg.DagsterRun(
        job_name="llm_collect",
        run_id="sensor",
        tags={"dagster/partition": "b", "inference_batch/results_for": "llm:b:7"},
    )
    submit_only = dg.DagsterRun(
        job_name="__ASSET_JOB",
        run_id="submit",
        asset_selection=frozenset({dg.AssetKey("llm_batch")}),
        tags={"dagster/partition": "c"},
    )
    ranged = dg.DagsterRun(
        job_name="__ASSET_JOB",
        run_id="range",
        asset_selection=frozenset({results_key}),
        tags={
            "dagster/asset_partition_range_start": "c",
            "dagster/asset_partition_range_end": "d",
        },
    )
    in_process = dg.DagsterRun(  # names no asset selection: its planned events tell
        job_name="__ephemeral_asset_job__",
        run_id="in-process",
        asset_selection=frozenset(),
        tags={"dagster/partition": "e"},
    )
    runs = [by_hand, sensors, submit_only, ranged, in_process]

    def planned(run_id: str) -> set[dg.AssetKey]:
        return {results_key} if run_id == "in-process" else set()

    collecting = [r for r in runs if materializes(r, results_key, "llm_collect", planned)]
    assert [r.run_id for r in collecting] == ["hand", "range", "in-process"]
    assert slots_of(collecting, ["a", "b", "e"]) == {"a": "hand", "b": "range", "e": "range"}
