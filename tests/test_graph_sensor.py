"""The sensor is never stuck and leaves no paid batch orphaned (issue 8).

- a partition deleted (dynamic) or dropped from the definition (static) while its batch
  runs is skipped, its batches cancelled once; the other partitions carry on;
- one partition whose events, run requests or runs lookup cannot be built never fails
  the tick;
- a results run that ends without results in any way (failed, canceled, succeeded without
  materializing) is requested again, a bounded number of times, then given up on, once
  and visibly; settled partitions cost no runs query;
- progress is recorded on a status change or a set step, not on every change;
- the tick's decisions are a plain function (`plan_tick`), tested here without a server.

Names new in this change are imported inside the tests, so that on older code each test
fails rather than the whole file erroring at collection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData

from dagster_inference_batch.batch_record import BatchJob, BatchShard
from dagster_inference_batch.client import InferenceBatchClient
from dagster_inference_batch.errors import BatchAPIError, BatchWaitTimeout
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from dagster_inference_batch.sensor import plan as sensor_module
from dagster_inference_batch.state import RecordedJob
from tests.dagster_harness import NAME, Harness

JOB_KEY = InferenceBatchMetadataSet.key("job")

RESULTS_FOR_TAG = "inference_batch/results_for"
GAVE_UP_KEY = "inference_batch/results_gave_up"
CANCELLED_KEY = "inference_batch/cancelled_batch_ids"
GAVE_UP_SKIP = (
    "1 whose results run failed 4 times (see the runs; materialize the results asset to try again)"
)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


# --------------------------------------------------------------------------- helpers


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def tick(harness: Harness) -> tuple[SensorExecutionData, list[str]]:
    """`harness.tick()`, and the warnings the tick logged (the sensor's logger does not
    propagate to caplog)."""
    warnings = _Warnings()
    build = dg.build_sensor_context

    def build_and_listen(**kwargs: Any) -> dg.SensorEvaluationContext:
        context = build(**kwargs)
        context.log.addHandler(warnings)
        return context

    with mock.patch.object(dg, "build_sensor_context", build_and_listen):
        result = harness.tick()
    return result, warnings.messages


def tick_until(
    harness: Harness, done, *, timeout: float = 60.0, pause: float = 0.1
) -> list[tuple[Any, list[str]]]:
    """Like `harness.tick_until`, keeping each tick's warnings."""
    ticks = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout}s: {ticks[-2:]}"
        ticks.append(tick(harness))
        time.sleep(pause)
    return ticks


def recorded_job(harness: Harness, partition: str | None = None) -> BatchJob:
    latest = harness.materializations(harness.pipeline.batch_key, partition)[-1]
    return BatchJob.from_dict(latest.metadata[JOB_KEY].value)


def provider_job(harness: Harness, partition: str | None = None) -> BatchJob:
    with harness.resources["inference_batch"].get_client() as client:
        return client.refresh(recorded_job(harness, partition))


def wait_final(harness: Harness, partition: str | None = None) -> BatchJob:
    with harness.resources["inference_batch"].get_client() as client:
        return client.wait(recorded_job(harness, partition), poll_interval=0.1, timeout=30)


def count_cancels(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the batches each `InferenceBatchClient.cancel` call was asked to cancel."""
    calls: list[list[str]] = []
    original = InferenceBatchClient.cancel

    def cancel(self, job):
        calls.append([s.batch_id for s in job.current_shards if not s.is_final])
        return original(self, job)

    monkeypatch.setattr(InferenceBatchClient, "cancel", cancel)
    return calls


def count_runs_queries(monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> list[Any]:
    """Record every runs query the sensor makes (either API)."""
    calls: list[Any] = []
    for method in ("get_runs", "get_run_records"):
        original = getattr(instance, method)

        def counted(*args, _original=original, **kwargs):
            calls.append(kwargs.get("filters") or (args[0] if args else None))
            return _original(*args, **kwargs)

        monkeypatch.setattr(instance, method, counted)
    return calls


def end_runs_canceled(harness: Harness, count: int) -> None:
    """The next `count` results runs the sensor requests end CANCELED before they do
    anything, as a run terminated in the UI, by run monitoring or by a run timeout does."""
    original = harness.run_job
    left = [count]

    def run_job(name: str, partition: str | None = None, tags: dict[str, str] | None = None):
        if name != f"{NAME}_collect" or left[0] <= 0:
            return original(name, partition, tags)
        left[0] -= 1
        run = harness.instance.create_run_for_job(
            harness.defs.resolve_job_def(name), tags=dict(tags or {})
        )
        harness.instance.report_run_canceling(run)
        harness.instance.report_run_canceled(run)
        return SimpleNamespace(
            success=False, dagster_run=harness.instance.get_run_by_id(run.run_id)
        )

    harness.run_job = run_job


def failing_results(monkeypatch: pytest.MonkeyPatch, failures: int) -> None:
    """The first `failures` calls of `client.results` fail as a provider 503 would."""
    calls: list[int] = []
    original = InferenceBatchClient.results

    def results(self, job, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise BatchAPIError("download output file: 503 after 6 retries", status_code=503)
        return original(self, job, *args, **kwargs)

    monkeypatch.setattr(InferenceBatchClient, "results", results)


def run_statuses(harness: Harness) -> list[dg.DagsterRunStatus]:
    return [
        harness.instance.get_run_by_id(run.dagster_run.run_id).status
        for run in harness.collect_runs
    ]


# ------------------------------------------------------- 1. partitions that disappear


def test_a_deleted_dynamic_partition_does_not_stop_the_others(instance, batch_server):
    """(repro) Today every tick raises DagsterUnknownPartitionError once the deleted
    partition's batch is final, and no other partition is collected again."""
    server = batch_server()
    partitions = dg.DynamicPartitionsDefinition(name="batches")
    instance.add_dynamic_partitions("batches", ["a", "b"])
    harness = Harness(instance, server.base_url, rows=3, partitions_def=partitions)
    harness.submit("a")
    harness.submit("b")
    instance.delete_dynamic_partition("batches", "a")
    wait_final(harness, "a")
    wait_final(harness, "b")

    ticks = tick_until(harness, lambda: harness.results_done("b"))
    after, warnings = tick(harness)

    assert [run.dagster_run.tags["dagster/partition"] for run in harness.collect_runs] == ["b"]
    assert harness.collect_runs[0].success
    assert not any(r.partition_key == "a" for t, _ in ticks for r in t.run_requests)
    assert not after.run_requests
    assert after.skip_message == "1 skipped, its partition no longer exists: partition 'a'"
    logged = [m for _, ws in ticks for m in ws if "partition 'a'" in m]
    assert len(logged) == 1 and "no longer exists" in logged[0]  # said once, not every tick
    assert "none was still running" in logged[0]  # its batch had finished: nothing cancelled
    assert warnings == []


def test_a_key_dropped_from_a_static_definition_does_not_stop_the_others(instance, batch_server):
    """(repro) The same with a static definition that no longer lists the key."""
    server = batch_server()
    before = Harness(
        instance, server.base_url, rows=3, partitions_def=dg.StaticPartitionsDefinition(["a", "b"])
    )
    before.submit("a")
    before.submit("b")
    wait_final(before, "a")
    wait_final(before, "b")
    after = Harness(
        instance, server.base_url, rows=3, partitions_def=dg.StaticPartitionsDefinition(["b"])
    )

    tick_until(after, lambda: after.results_done("b"))
    last, _ = tick(after)

    assert [run.dagster_run.tags["dagster/partition"] for run in after.collect_runs] == ["b"]
    assert (after.results_frame("b")["status"] == "succeeded").all()
    assert not after.results_done("a")
    assert last.skip_message == "1 skipped, its partition no longer exists: partition 'a'"


def test_the_batches_of_a_deleted_partition_are_cancelled_once(instance, batch_server, monkeypatch):
    server = batch_server(requests_per_second=1)  # 10 requests: 10 s, still running under load
    partitions = dg.DynamicPartitionsDefinition(name="batches")
    instance.add_dynamic_partitions("batches", ["a", "b"])
    harness = Harness(instance, server.base_url, rows=10, partitions_def=partitions)
    harness.submit("a")
    harness.submit("b")
    a_batches = recorded_job(harness, "a").batch_ids
    instance.delete_dynamic_partition("batches", "a")
    cancels = count_cancels(monkeypatch)

    ticks = tick_until(harness, lambda: harness.results_done("b"))
    harness.cursor = None  # even with the cursor lost, nothing is cancelled twice
    for _ in range(2):
        tick(harness)

    assert cancels == [a_batches]
    assert provider_job(harness, "a").status in ("cancelling", "cancelled")
    gone = [
        o
        for o in harness.observations(harness.pipeline.batch_key, "a")
        if CANCELLED_KEY in o.metadata
    ]
    assert len(gone) == 1
    assert gone[0].metadata[CANCELLED_KEY].value == a_batches
    assert gone[0].metadata["inference_batch/partition_missing"].value is True
    said = [m for _, ws in ticks for m in ws if "partition 'a'" in m]
    assert len(said) == 1 and f"cancelled {a_batches[0]}" in said[0]
    assert [run.dagster_run.tags["dagster/partition"] for run in harness.collect_runs] == ["b"]
    assert (harness.results_frame("b")["status"] == "succeeded").all()


def test_cancel_orphaned_false_leaves_the_batches_running(instance, batch_server, monkeypatch):
    server = batch_server(requests_per_second=1)  # 6 requests: 6 s, still running under load
    partitions = dg.DynamicPartitionsDefinition(name="batches")
    instance.add_dynamic_partitions("batches", ["a", "b"])
    harness = Harness(
        instance, server.base_url, rows=6, partitions_def=partitions, cancel_orphaned=False
    )
    harness.submit("a")
    harness.submit("b")
    instance.delete_dynamic_partition("batches", "a")
    cancels = count_cancels(monkeypatch)

    ticks = tick_until(harness, lambda: harness.results_done("b"))

    assert cancels == []
    assert wait_final(harness, "a").status == "completed"
    said = [m for _, ws in ticks for m in ws if "partition 'a'" in m]
    assert len(said) == 1 and "left running (cancel_orphaned=False)" in said[0]
    assert not harness.results_done("a")


# ------------------------------------------------------------------ 2. fault isolation


def test_a_partition_whose_events_cannot_be_built_does_not_fail_the_tick(
    instance, batch_server, monkeypatch
):
    server = batch_server()
    partitions = dg.StaticPartitionsDefinition(["a", "b"])
    harness = Harness(instance, server.base_url, rows=3, partitions_def=partitions)
    harness.submit("a")
    harness.submit("b")
    original = sensor_module.progress_metadata

    def progress_metadata(job, **kwargs):
        if job.metadata.get("dagster_partition") == "a":
            raise ValueError("a value Dagster refuses")
        return original(job, **kwargs)

    monkeypatch.setattr(sensor_module, "progress_metadata", progress_metadata)

    ticks = tick_until(harness, lambda: harness.results_done("b"))
    stuck, warnings = tick(harness)

    assert [run.dagster_run.tags["dagster/partition"] for run in harness.collect_runs] == ["b"]
    assert "1 could not be handled this tick: partition 'a'" in stuck.skip_message
    assert any(
        "could not handle partition 'a'" in m and "a value Dagster refuses" in m for m in warnings
    )
    assert all(e.partition == "b" for t, _ in ticks for e in t.asset_events)

    monkeypatch.setattr(sensor_module, "progress_metadata", original)
    tick_until(harness, lambda: harness.results_done("a"))
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in harness.collect_runs) == [
        "a",
        "b",
    ]


def test_a_partition_whose_runs_lookup_fails_does_not_fail_the_tick(
    instance, batch_server, monkeypatch
):
    server = batch_server()
    partitions = dg.StaticPartitionsDefinition(["a", "b"])
    harness = Harness(instance, server.base_url, rows=3, partitions_def=partitions)
    harness.submit("a")
    harness.submit("b")
    wait_final(harness, "a")
    wait_final(harness, "b")

    def broken(*args, **kwargs):
        raise OSError("database is locked")

    with monkeypatch.context() as patch:
        patch.setattr(instance, "get_run_records", broken)
        patch.setattr(instance, "get_runs", broken)
        failing, warnings = tick(harness)

    assert not failing.run_requests  # neither could be looked up; the tick still ended
    assert failing.skip_message == (
        "2 could not be handled this tick: partition 'a', partition 'b' "
        "(see the tick's logs), retried next tick"
    )
    assert sum("database is locked" in m for m in warnings) == 2
    tick_until(harness, lambda: harness.results_done("a") and harness.results_done("b"))
    assert len(harness.collect_runs) == 2


# ------------------------------------------------------ 3. how a results run may end


def test_a_canceled_results_run_is_requested_again(instance, batch_server):
    """(repro) Today a results run that ends CANCELED leaves the partition 'waiting for a
    requested results run' forever."""
    server = batch_server()
    harness = Harness(instance, server.base_url, rows=3)
    harness.submit()
    end_runs_canceled(harness, 1)

    tick_until(harness, harness.results_done, timeout=30)

    base = harness.run_keys[0]
    assert harness.run_keys == [base, f"{base}:retry1"]
    assert run_statuses(harness) == [dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.SUCCESS]
    storage_id = (
        harness.instance.fetch_materializations(harness.pipeline.batch_key, limit=1)
        .records[0]
        .storage_id
    )
    for run in harness.collect_runs:  # found by a tag of our own; Dagster still dedupes
        assert run.dagster_run.tags[RESULTS_FOR_TAG] == f"{NAME}::{storage_id}"
        assert run.dagster_run.tags["dagster/run_key"] in harness.run_keys
    assert (harness.results_frame()["status"] == "succeeded").all()


def test_results_runs_ending_without_results_give_up_once_and_visibly(
    instance, batch_server, monkeypatch
):
    """(repro) Canceled and failed runs share one bounded count, then the sensor gives
    up: in the skip reason, once in the event log naming the runs, and without a runs
    query on every later tick."""
    server = batch_server()
    harness = Harness(instance, server.base_url, rows=3)
    harness.submit()
    end_runs_canceled(harness, 2)
    failing_results(monkeypatch, failures=100)

    tick_until(harness, lambda: len(harness.collect_runs) == 4, timeout=30)
    gave_up, warnings = tick(harness)
    queries = count_runs_queries(monkeypatch, instance)
    later = [tick(harness)[0] for _ in range(3)]

    assert (
        run_statuses(harness)
        == [dg.DagsterRunStatus.CANCELED] * 2 + [dg.DagsterRunStatus.FAILURE] * 2
    )
    assert harness.run_keys[-1].endswith(":retry3")
    for result in [gave_up, *later]:
        assert not result.run_requests and result.skip_message == GAVE_UP_SKIP
    recorded = [
        o.metadata[GAVE_UP_KEY].value
        for o in harness.observations(harness.pipeline.batch_key)
        if GAVE_UP_KEY in o.metadata
    ]
    run_ids = [run.dagster_run.run_id for run in harness.collect_runs]
    assert recorded == [run_ids]
    assert any("4 results runs ended without results" in m for m in warnings)
    assert queries == []
    assert len(harness.collect_runs) == 4


def test_a_results_run_that_succeeds_without_materializing_is_requested_again(
    instance, batch_server, monkeypatch
):
    server = batch_server()
    harness = Harness(instance, server.base_url, rows=3)
    harness.submit()
    original = InferenceBatchClient.wait
    waits: list[int] = []

    def wait(self, job, **kwargs):
        waits.append(1)
        if len(waits) == 1:
            raise BatchWaitTimeout("batches still running after 0s")
        return original(self, job, **kwargs)

    monkeypatch.setattr(InferenceBatchClient, "wait", wait)

    tick_until(harness, harness.results_done, timeout=30)

    base = harness.run_keys[0]
    assert harness.run_keys == [base, f"{base}:retry1"]
    assert [run.success for run in harness.collect_runs] == [True, True]
    assert len(harness.materializations(harness.pipeline.results_key)) == 1


def test_a_failed_validation_costs_no_runs_query_once_its_run_reported(
    instance, batch_server, monkeypatch
):
    server = batch_server(max_requests_per_batch=5)
    harness = Harness(instance, server.base_url, rows=8)
    harness.submit()
    tick_until(harness, lambda: bool(harness.collect_runs))
    tick(harness)  # sees the run failed with the provider's errors
    queries = count_runs_queries(monkeypatch, instance)

    later = [tick(harness)[0] for _ in range(3)]

    assert queries == []
    assert len(harness.collect_runs) == 1 and not harness.collect_runs[0].success
    for result in later:
        assert not result.run_requests
        assert result.skip_message == "1 waiting for a requested results run"


# ------------------------------------------------------------ 4. fewer observations


def test_a_slow_batch_records_a_bounded_number_of_progress_observations(instance, batch_server):
    server = batch_server(requests_per_second=30)  # 300 requests: about 10 s
    harness = Harness(instance, server.base_url, rows=300)
    harness.submit()

    ticks = tick_until(harness, harness.results_done, timeout=90, pause=0.02)

    seen = {t.skip_message for t, _ in ticks if "requests done" in (t.skip_message or "")}
    observations = harness.observations(harness.pipeline.batch_key)
    percents = [o.metadata["inference_batch/percent"].value for o in observations]
    statuses = [o.metadata["inference_batch/status"].value for o in observations]
    moving = [p for p, s in zip(percents, statuses, strict=True) if s == "in_progress"]
    assert len(observations) <= 100 / 5 + 4  # 5-point steps, plus one per status
    assert len(seen) > len(observations)  # the ticks saw more changes than were recorded
    assert "in_progress" in statuses and statuses[-1] == "completed"
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert all(b - a >= 4.9 for a, b in zip(moving, moving[1:], strict=False))  # rounded
    assert len(moving) >= 3  # progress was still seen moving


# -------------------------------------------------------- 5. the plan, without a server


def a_job(
    status: str = "in_progress",
    completed: int = 0,
    total: int = 1000,
    *,
    failed: int = 0,
    attempt: int = 1,
) -> BatchJob:
    shard = BatchShard(
        index=0,
        attempt=attempt,
        idempotency_key=f"k#s0a{attempt}:0123456789abcdef",
        file_id="file-1",
        request_count=total,
        bytes=100,
        sha256="ab" * 32,
        batch_id=f"batch_{attempt}",
        status=status,
        request_counts={"total": total, "completed": completed, "failed": failed},
    )
    return BatchJob(
        endpoint="/v1/chat/completions", idempotency_key="k", request_count=total, shards=[shard]
    )


def settings(**options: Any):
    from dagster_inference_batch.sensor import SensorSettings

    return SensorSettings(name=NAME, batch_key=dg.AssetKey(f"{NAME}_batch"), **options)


def plan_one(cursor, recorded: RecordedJob, *, now: float, outcome=None, runs=None, gone=()):
    """One tick's plan for one slot, as the sensor would make it."""
    from dagster_inference_batch.sensor import TickState, plan_tick, plan_work

    slot = recorded.partition or ""
    work = plan_work(cursor, [recorded], gone=gone)
    outcomes = {slot: outcome} if outcome is not None else {}
    return plan_tick(
        TickState(
            cursor=cursor,
            jobs=[recorded],
            work=work,
            gone=set(gone),
            outcomes=outcomes,
            runs={slot: runs} if runs is not None else {},
            now=now,
            read_at=now,
        ),
        settings(),
    )


def test_a_24_hour_batch_records_tens_of_observations_not_thousands():
    from dagster_inference_batch.sensor import Refreshed, SensorCursor

    cursor = SensorCursor()
    recorded = RecordedJob(partition="2024-01-01", storage_id=7, job=a_job("validating"))
    observed = []
    for minute in range(24 * 60 + 1):  # one tick a minute, a steady trickle of answers
        completed = min(1000, minute * 1000 // (24 * 60))
        job = a_job("in_progress" if completed < 1000 else "completed", completed)
        plan = plan_one(
            cursor, recorded, now=minute * 60.0, outcome=Refreshed(recorded, job, "wait")
        )
        observed += [e.metadata["inference_batch/percent"].value for e in plan.asset_events]
        cursor = plan.cursor

    # one every 10 minutes (5 points take 72), plus the final status: 1441 before
    assert 24 * 6 <= len(observed) <= 24 * 6 + 2
    assert observed[-1] == 100.0


def test_progress_is_recorded_on_a_status_change_or_a_step():
    from dagster_inference_batch.sensor import Refreshed, SensorCursor

    cursor = SensorCursor()
    recorded = RecordedJob(partition=None, storage_id=7, job=a_job("validating"))
    seen = []
    for now, job in [
        (0, a_job("validating")),  # first sight: recorded
        (1, a_job("in_progress", 0)),  # new status: recorded
        (2, a_job("in_progress", 30)),  # 3 points: not yet
        (3, a_job("in_progress", 49)),  # 4.9 points: not yet
        (4, a_job("in_progress", 50)),  # 5 points: recorded
        (5, a_job("in_progress", 50)),  # unchanged: never
        (6, a_job("in_progress", 60)),  # 1 point: not yet
        (700, a_job("in_progress", 61)),  # 10 minutes since the last: recorded
        (701, a_job("completed", 1000)),  # final: recorded
    ]:
        plan = plan_one(cursor, recorded, now=now, outcome=Refreshed(recorded, job, "wait"))
        seen += [(now, e.metadata["inference_batch/status"].value) for e in plan.asset_events]
        cursor = plan.cursor

    assert seen == [
        (0, "validating"),
        (1, "in_progress"),
        (4, "in_progress"),
        (700, "in_progress"),
        (701, "completed"),
    ]


def test_the_plan_retries_ended_runs_then_gives_up_and_settles():
    from dagster_inference_batch.sensor import Refreshed, ResultsRun, SensorCursor, plan_work

    failed, canceled = dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED
    recorded = RecordedJob(partition="a", storage_id=42, job=a_job("completed", 1000))
    outcome = Refreshed(recorded, a_job("completed", 1000), "collect")
    base = f"{NAME}:a:42:completed"

    first = plan_one(SensorCursor(), recorded, now=100, outcome=outcome, runs=[])
    (request,) = first.run_requests
    assert request.run_key == base and request.partition_key == "a"
    assert request.tags == {"inference_batch/status": "completed", RESULTS_FOR_TAG: f"{NAME}:a:42"}
    assert plan_work(first.cursor, [recorded]).requested == ["a"]

    runs = [ResultsRun("r1", canceled, created=1), ResultsRun("r2", failed, created=2)]
    retry = plan_one(first.cursor, recorded, now=200, runs=runs)
    assert [r.run_key for r in retry.run_requests] == [f"{base}:retry2"]
    assert any("results run r2 ended FAILURE" in m for m in retry.warnings)

    runs += [ResultsRun("r3", canceled, created=3), ResultsRun("r4", canceled, created=4)]
    gave_up = plan_one(retry.cursor, recorded, now=300, runs=runs)
    assert not gave_up.run_requests and gave_up.skip_reason == GAVE_UP_SKIP
    (event,) = gave_up.asset_events
    assert event.partition == "a" and event.metadata[GAVE_UP_KEY].value == ["r1", "r2", "r3", "r4"]
    assert "CANCELED, FAILURE, CANCELED, CANCELED" in event.description
    assert plan_work(gave_up.cursor, [recorded]).settled == ["a"]

    later = plan_one(gave_up.cursor, recorded, now=400)  # no runs looked up
    assert not later.asset_events and later.skip_reason == GAVE_UP_SKIP
    newer = RecordedJob(partition="a", storage_id=50, job=a_job("validating"))
    assert plan_work(gave_up.cursor, [newer]).refresh == ["a"]  # a new batch starts afresh


def test_a_results_run_running_for_hours_is_named_in_the_skip_reason():
    from dagster_inference_batch.sensor import ResultsRun, SensorCursor

    recorded = RecordedJob(partition="a", storage_id=42, job=a_job("completed", 1000))
    cursor = SensorCursor(requested={"a": 42}, run_keys={"a": f"{NAME}:a:42:completed"})
    now = 100_000.0
    started = dg.DagsterRunStatus.STARTED

    short = plan_one(
        cursor, recorded, now=now, runs=[ResultsRun("r1", started, now - 60, now - 60)]
    )
    long = plan_one(
        cursor, recorded, now=now, runs=[ResultsRun("r1", started, now - 9000, now - 9000)]
    )

    assert short.skip_reason == "1 waiting for a requested results run"
    assert long.skip_reason == (
        "1 waiting for a requested results run (partition 'a': run r1 running for 2.5 h; "
        "if its worker died, Dagster's run monitoring ends it)"
    )


def test_the_plan_skips_a_gone_partition_and_remembers_it_was_handled():
    from dagster_inference_batch.sensor import Abandoned, SensorCursor, plan_work

    recorded = RecordedJob(partition="a", storage_id=42, job=a_job("in_progress", 10))
    cursor = SensorCursor()
    assert plan_work(cursor, [recorded], gone={"a"}).abandon == ["a"]
    assert plan_work(cursor, [recorded], gone={"a"}, cancel_orphaned=False).abandon == []

    abandoned = Abandoned(recorded, a_job("cancelling", 10), cancelled=("batch_1",))
    plan = plan_one(cursor, recorded, now=1, outcome=abandoned, gone={"a"})

    assert not plan.run_requests
    (event,) = plan.asset_events
    assert event.metadata[CANCELLED_KEY].value == ["batch_1"]
    assert plan.skip_reason == "1 skipped, its partition no longer exists: partition 'a'"
    assert plan_work(plan.cursor, [recorded], gone={"a"}).abandon == []  # once
    again = plan_one(plan.cursor, recorded, now=2, gone={"a"})
    assert not again.asset_events and not again.warnings
    assert plan_work(plan.cursor, [recorded]).refresh == ["a"]  # if it comes back


def test_one_slot_whose_plan_fails_leaves_the_others_and_its_cursor_alone():
    from dagster_inference_batch.sensor import (
        Refreshed,
        SensorCursor,
        TickState,
        plan_tick,
        plan_work,
    )

    done = a_job("completed", 1000)
    a = RecordedJob(partition="a", storage_id=1, job=done)
    b = RecordedJob(partition="b", storage_id=2, job=done)
    cursor = SensorCursor(progress={"a": "in_progress|1|500|0|1000"}, progress_at={"a": 5.0})
    outcomes = {s: Refreshed(r, done, "collect") for s, r in (("a", a), ("b", b))}

    plan = plan_tick(
        TickState(
            cursor=cursor,
            jobs=[a, b],
            work=plan_work(cursor, [a, b]),
            outcomes=outcomes,
            runs={"a": OSError("database is locked"), "b": []},
            now=10,
            read_at=10,
        ),
        settings(),
    )

    assert [r.partition_key for r in plan.run_requests] == ["b"]
    assert [e.partition for e in plan.asset_events] == ["b"]
    assert plan.cursor.progress["a"] == "in_progress|1|500|0|1000"  # as it was
    assert "a" not in plan.cursor.requested and plan.cursor.requested["b"] == 2
    assert any(
        "could not handle partition 'a'" in m and "database is locked" in m for m in plan.warnings
    )
