"""The results asset stays right when the upstream moves (issue 8).

- a job submitted while a results run is under way is still collected: ``<name>_results``
  records which ``<name>_batch`` materialization it collected, and "uncollected" follows
  that link, not the order of storage ids;
- results are never joined to rows other than the submitted ones: an upstream whose
  request lines changed since the submission fails the results run, naming the ids;
- the two checks are their own ``@asset_check``s reading the stored results, so they run
  alone (the UI's "Execute checks") as well as after the results step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pytest

from dagster_inference_batch.client import InferenceBatchClient
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from tests.dagster_harness import NAME, Harness

JOB_KEY = InferenceBatchMetadataSet.key("job")

COLLECTED_KEY = "inference_batch/collected_storage_id"
JOB_KEY_KEY = "inference_batch/job_key"
COMPLETE = f"{NAME}_results_complete"
FAILURE_RATE = f"{NAME}_results_failure_rate"


# Runs here execute in threads; Dagster's local compute log capture tails each step's
# output with a `tail -F` subprocess that, on Dagster 1.12, can take 30 s per stream to
# stop when the step ran off the main thread. The tests read the event log, not stdout.
NO_COMPUTE_LOGS = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides=NO_COMPUTE_LOGS) as instance:
        yield instance


def latest_record(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None
) -> dg.EventLogRecord:
    records_filter = dg.AssetRecordsFilter(
        asset_key=key, asset_partitions=[partition] if partition is not None else None
    )
    return instance.fetch_materializations(records_filter, limit=1).records[0]


def step_failure_message(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.message


def asset_checks(harness: Harness) -> list:
    """The pipeline's check definitions (none before they were separate definitions)."""
    return list(getattr(harness.pipeline, "asset_checks", []))


# ------------------------------------------------ 1. a job submitted during a results run


@pytest.mark.parametrize("partition", [None, "p1"])
def test_a_job_submitted_while_a_results_run_runs_is_collected(
    instance, shared_batch_server, monkeypatch, partition
):
    partitions = dg.StaticPartitionsDefinition(["p1", "p2"]) if partition else None
    first = Harness(
        instance,
        shared_batch_server.base_url,
        rows=4,
        partitions_def=partitions,
        results_wait_seconds=30,
    )
    first.submit(partition)
    keys = first.pipeline
    first_batch = latest_record(instance, keys.batch_key, partition)

    # the first results run stops in its download until the second job is submitted
    entered, release = threading.Event(), threading.Event()
    original = InferenceBatchClient.results
    calls: list[str] = []

    def results(self, job, *args, **kwargs):
        calls.append(job.idempotency_key)
        if len(calls) == 1:
            entered.set()
            assert release.wait(60)
        return original(self, job, *args, **kwargs)

    monkeypatch.setattr(InferenceBatchClient, "results", results)
    runs: list[dg.ExecuteInProcessResult] = []
    thread = threading.Thread(
        target=lambda: runs.append(first.materialize(keys.results_key, partition=partition))
    )
    thread.start()
    try:
        assert entered.wait(60), "the results run never reached its download"
        second = Harness(instance, shared_batch_server.base_url, rows=6, partitions_def=partitions)
        second.submit(partition)
    finally:
        release.set()
        thread.join(60)
    second_batch = latest_record(instance, keys.batch_key, partition)
    assert runs and runs[0].success
    assert second_batch.storage_id > first_batch.storage_id
    collected = latest_record(instance, keys.results_key, partition)
    assert collected.storage_id > second_batch.storage_id  # ended after the new batch

    second.tick_until(
        lambda: len(second.materializations(keys.results_key, partition)) == 2, timeout=30
    )

    earlier, latest = second.materializations(keys.results_key, partition)
    assert earlier.metadata[COLLECTED_KEY].value == first_batch.storage_id
    assert latest.metadata[COLLECTED_KEY].value == second_batch.storage_id
    second_job = second_batch.asset_materialization.metadata[JOB_KEY].value
    assert latest.metadata[JOB_KEY_KEY].value == second_job["idempotency_key"]
    frame = second.results_frame(partition)
    assert len(frame) == 6 and (frame["status"] == "succeeded").all()
    assert second.tick().skip_message == "no batches in flight"


# --------------------------------------------- 2. results joined only to submitted rows


def frame_of(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"custom_id": [f"r{i}" for i in range(len(texts))], "prompt": texts})


class FrameHarness(Harness):
    """A `Harness` whose upstream `prompts` holds `frame`."""

    def __init__(self, instance, base_url: str, frame: pd.DataFrame, **options) -> None:
        super().__init__(instance, base_url, rows=len(frame), **options)

        @dg.asset(name="prompts")
        def prompts() -> pd.DataFrame:
            return frame.copy()

        self.upstream = prompts
        self.defs = dg.Definitions.merge(
            self.pipeline.defs,
            dg.Definitions(assets=[self.upstream], resources=self.resources),
        )

    def collect(self) -> dg.ExecuteInProcessResult:
        """Materialize `prompts` (as this harness holds it) and `<name>_results`."""
        return self.materialize(self.pipeline.results_key, raise_on_error=False)


SUBMITTED = [f"Say hello to number {i}" for i in range(4)]


@pytest.fixture
def submitted(instance, shared_batch_server) -> FrameHarness:
    harness = FrameHarness(
        instance, shared_batch_server.base_url, frame_of(SUBMITTED), results_wait_seconds=30
    )
    harness.submit()
    return harness


def test_new_text_under_the_same_ids_fails_the_results_run_naming_them(
    instance, shared_batch_server, submitted
):
    changed = FrameHarness(
        instance,
        shared_batch_server.base_url,
        frame_of([SUBMITTED[0], "Say goodbye", "Say nothing", SUBMITTED[3]]),
        results_wait_seconds=30,
    )

    run = changed.collect()

    assert not run.success
    message = step_failure_message(run)
    assert "0 added, 0 removed, 2 changed (r1, r2)" in message
    assert f"materialize {NAME}_submit" in message
    assert not changed.results_done()  # nothing joined, not even silently


def test_an_added_row_fails_the_results_run_naming_it(instance, shared_batch_server, submitted):
    grown = FrameHarness(
        instance,
        shared_batch_server.base_url,
        frame_of([*SUBMITTED, "Say hello to the new one"]),
        results_wait_seconds=30,
    )

    run = grown.collect()

    assert not run.success
    assert "1 added (r4), 0 removed, 0 changed" in step_failure_message(run)
    assert not grown.results_done()


def test_a_removed_row_fails_the_results_run_naming_it(instance, shared_batch_server, submitted):
    shrunk = FrameHarness(
        instance, shared_batch_server.base_url, frame_of(SUBMITTED[:3]), results_wait_seconds=30
    )

    run = shrunk.collect()

    assert not run.success
    assert "0 added, 1 removed (r3), 0 changed" in step_failure_message(run)
    assert not shrunk.results_done()


def test_at_most_five_example_ids_are_named(instance, shared_batch_server):
    texts = [f"Say hello to number {i}" for i in range(8)]
    first = FrameHarness(
        instance, shared_batch_server.base_url, frame_of(texts), results_wait_seconds=30
    )
    first.submit()
    changed = FrameHarness(
        instance,
        shared_batch_server.base_url,
        frame_of([f"{text}, again" for text in texts]),
        results_wait_seconds=30,
    )

    run = changed.collect()

    assert not run.success
    assert "8 changed (r0, r1, r2, r3, r4, ...)" in step_failure_message(run)


def test_an_unchanged_upstream_is_joined(instance, submitted):
    run = submitted.collect()

    assert run.success
    frame = submitted.results_frame()
    assert frame["custom_id"].tolist() == ["r0", "r1", "r2", "r3"]
    assert frame["prompt"].tolist() == SUBMITTED
    assert (frame["status"] == "succeeded").all()
    metadata = submitted.materializations(submitted.pipeline.results_key)[-1].metadata
    batch = latest_record(instance, submitted.pipeline.batch_key, None)
    assert metadata[COLLECTED_KEY].value == batch.storage_id


def test_the_same_rows_in_another_order_are_joined(instance, shared_batch_server, submitted):
    reordered = FrameHarness(
        instance,
        shared_batch_server.base_url,
        frame_of(SUBMITTED).iloc[::-1].reset_index(drop=True),
        results_wait_seconds=30,
    )

    run = reordered.collect()

    assert run.success
    frame = reordered.results_frame()
    assert dict(zip(frame["custom_id"], frame["prompt"], strict=True)) == dict(
        zip([f"r{i}" for i in range(4)], SUBMITTED, strict=True)
    )
    assert (frame["status"] == "succeeded").all()


# ---------------------------------------------------------- 3. the checks on their own


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def checks_only(
    harness: Harness, partition: str | None, *, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    """Execute only the results asset's checks, as the UI's "Execute checks" does (the run's
    partition comes from its tag: Dagster 1.13 finds no partitions definition for a
    selection without assets)."""
    return dg.materialize(
        [harness.upstream, *harness.pipeline.assets, *asset_checks(harness)],
        selection=dg.AssetSelection.checks_for_assets(harness.pipeline.results_key),
        tags={"dagster/partition": partition} if partition else None,
        instance=harness.instance,
        resources=harness.resources,
        raise_on_error=raise_on_error,
    )


def collect_job_checks_only(harness: Harness, partition: str | None) -> dg.ExecuteInProcessResult:
    job = harness.defs.resolve_job_def(f"{NAME}_collect")
    check_keys = {
        dg.AssetCheckKey(harness.pipeline.results_key, name) for name in (COMPLETE, FAILURE_RATE)
    }
    return job.get_subset(
        asset_selection=set(), asset_check_selection=check_keys
    ).execute_in_process(
        instance=harness.instance,
        tags={"dagster/partition": partition} if partition else None,
    )


@pytest.mark.parametrize("partition", [None, "b"])
def test_the_checks_run_alone_on_the_stored_results(instance, shared_batch_server, partition):
    partitions = dg.StaticPartitionsDefinition(["a", "b"]) if partition else None
    harness = Harness(
        instance,
        shared_batch_server.base_url,
        rows=3,
        partitions_def=partitions,
        results_wait_seconds=30,
    )
    keys = harness.pipeline
    collected = harness.materialize(
        keys.input_file_key, keys.batch_key, keys.results_key, partition=partition
    )
    assert collected.success
    # the batch step also reports its on-time check (passed: just submitted)
    assert set(evaluations(collected)) == {COMPLETE, FAILURE_RATE, f"{NAME}_batch_on_time"}

    for run in (checks_only(harness, partition), collect_job_checks_only(harness, partition)):
        assert run.success
        assert not run.get_asset_materialization_events()  # the results were not re-made
        checks = evaluations(run)
        assert set(checks) == {COMPLETE, FAILURE_RATE}
        assert all(check.passed for check in checks.values())
        assert checks[COMPLETE].metadata["result_rows"].value == 3
        assert checks[COMPLETE].metadata["submitted_rows"].value == 3
        if partition:
            assert {check.partition for check in checks.values()} == {partition}


def test_a_partition_rerun_answered_entirely_from_the_store_passes_the_complete_check(
    instance, shared_batch_server, tmp_path
):
    harness = Harness(
        instance,
        shared_batch_server.base_url,
        rows=3,
        partitions_def=dg.StaticPartitionsDefinition(["a"]),
        results_wait_seconds=30,
        resource_options={"answer_store": str(tmp_path / "answers")},
    )
    keys = harness.pipeline
    whole_graph = (keys.input_file_key, keys.batch_key, keys.results_key)
    assert evaluations(harness.materialize(*whole_graph, partition="a"))[COMPLETE].passed

    rerun = harness.materialize(*whole_graph, partition="a")  # every row answered already
    assert (rerun.output_for_node(f"{NAME}_results")["source"] == "store").all()
    complete = evaluations(rerun)[COMPLETE]
    assert complete.passed, complete.metadata
    counts = {k: complete.metadata[k].value for k in ("submitted_rows", "reused_rows")}
    assert counts == {"submitted_rows": 0, "reused_rows": 3}
    assert complete.metadata["extra_rows"].value == 0

    alone = evaluations(checks_only(harness, "a"))[COMPLETE]  # from the stored metadata
    assert alone.passed and alone.metadata["reused_rows"].value == 3


def test_the_collect_job_evaluates_the_checks_for_its_partition(instance, shared_batch_server):
    partitions = dg.StaticPartitionsDefinition(["a", "b"])
    harness = Harness(instance, shared_batch_server.base_url, rows=2, partitions_def=partitions)
    harness.submit("a")

    harness.tick_until(lambda: harness.results_done("a"))

    checks = evaluations(harness.collect_runs[-1])
    assert set(checks) == {COMPLETE, FAILURE_RATE}
    assert all(check.passed and check.partition == "a" for check in checks.values())


def test_incomplete_results_fail_the_blocking_check_and_hold_back_downstream(
    instance, shared_batch_server, monkeypatch
):
    harness = Harness(instance, shared_batch_server.base_url, rows=3, results_wait_seconds=30)
    keys = harness.pipeline
    original = InferenceBatchClient.results

    def one_unanswered(self, job, *args, **kwargs):
        frame = original(self, job, *args, **kwargs)
        frame.loc[1, "status"] = "missing"
        return frame

    monkeypatch.setattr(InferenceBatchClient, "results", one_unanswered)
    summarized: list[int] = []

    @dg.asset(deps=[keys.results_key])
    def summary() -> None:
        summarized.append(1)

    run = dg.materialize(
        [harness.upstream, *keys.assets, *asset_checks(harness), summary],
        instance=instance,
        resources=harness.resources,
        raise_on_error=False,
    )

    assert harness.results_done()
    complete = evaluations(run)[COMPLETE]
    assert not complete.passed and complete.metadata["unanswered_rows"].value == 1
    assert summarized == []  # blocked by the failed check
    alone = evaluations(checks_only(harness, None, raise_on_error=False))
    assert not alone[COMPLETE].passed
    assert alone[COMPLETE].metadata["unanswered_rows"].value == 1


# ----------------------------------------------------------- the collection rule alone


@pytest.mark.parametrize("partition", [None, "p1"])
def test_uncollected_follows_the_link_and_falls_back_to_the_order(instance, partition):
    from dagster_inference_batch.state import uncollected_jobs

    batch_key, results_key = dg.AssetKey(f"{NAME}_batch"), dg.AssetKey(f"{NAME}_results")

    def batch(key: str) -> int:
        job = {"endpoint": "/v1/chat/completions", "idempotency_key": key}
        instance.report_runless_asset_event(
            dg.AssetMaterialization(batch_key, partition=partition, metadata={JOB_KEY: job})
        )
        return latest_record(instance, batch_key, partition).storage_id

    def results(**metadata: int) -> None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(results_key, partition=partition, metadata=metadata)
        )

    def uncollected() -> list[str]:
        jobs, unreadable = uncollected_jobs(
            instance, batch_key, results_key, partitioned=partition is not None
        )
        assert not unreadable
        return [recorded.job.idempotency_key for recorded in jobs]

    first = batch("one")
    assert uncollected() == ["one"]
    results()  # written before the link existed: newer than the batch counts
    assert uncollected() == []
    second = batch("two")
    assert uncollected() == ["two"]
    results(**{COLLECTED_KEY: first})  # ended after "two" was submitted, joined "one"
    assert uncollected() == ["two"]
    results(**{COLLECTED_KEY: second})
    assert uncollected() == []
