"""Scheduled and watched (issue 15).

- ``schedule=`` adds ``<name>_schedule``: a tick (``dg.build_schedule_context``) submits
  the partition that just closed (daily), the partitions not yet submitted (static, or a
  chosen set) and the new keys (dynamic); stopped by default;
- ``<name>_batch_on_time`` goes WARN, then ERROR, on a batch the local server holds in
  flight past its (shortened) completion window;
- progress observations carry the pace, the ETA and the provider's links;
- ``<name>_results`` carries a markdown summary naming the error codes, and a failure
  rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import dagster as dg
import pytest

from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets
from dagster_inference_batch.batch_record import BatchJob, BatchShard
from dagster_inference_batch.local_server import LocalBatchServer
from dagster_inference_batch.metadata import batch_metadata, progress_metadata
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from dagster_inference_batch.on_time_check import OnTimeOptions
from dagster_inference_batch.schedules import ScheduleOptions
from tests.dagster_harness import NAME, Harness, prompts_asset

SUMMARY = InferenceBatchMetadataSet.key("summary")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _pipeline(partitions_def: dg.PartitionsDefinition | None, schedule: object):
    return build_inference_batch_assets(
        NAME,
        upstream=prompts_asset(2, partitions_def),
        prompt_column="prompt",
        model="m",
        partitions_def=partitions_def,
        schedule=schedule,
    )


def _tick(pipeline: object, instance: dg.DagsterInstance, at: datetime) -> list[str | None] | str:
    """The partitions one tick of the pipeline's schedule requests, or its skip message."""
    schedule = pipeline.schedule
    defs = dg.Definitions.merge(
        pipeline.defs,
        dg.Definitions(
            assets=[prompts_asset(2, pipeline.spec.partitions_def)],
            resources={"inference_batch": InferenceBatchResource(base_url="http://127.0.0.1:9")},
        ),
    )
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, repository_def=defs.get_repository_def()
    )
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        data = schedule.evaluate_tick(context)
    if data.skip_message:
        return data.skip_message
    return [request.partition_key for request in data.run_requests or []]


def _submitted(instance: dg.DagsterInstance, partition: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(f"{NAME}_batch", partition=partition)
    )


# ------------------------------------------------------------------------- schedules

TICK = datetime(2026, 3, 10, 6, 0, tzinfo=UTC)


def test_daily_schedule_submits_the_partition_that_just_closed(
    instance: dg.DagsterInstance, batch_server: Callable[..., LocalBatchServer]
) -> None:
    daily = dg.DailyPartitionsDefinition(start_date="2026-01-01")
    pipeline = _pipeline(daily, "0 6 * * *")
    schedule = pipeline.schedule
    assert schedule is not None and schedule.name == f"{NAME}_schedule"
    assert schedule.job_name == f"{NAME}_submit"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert _tick(pipeline, instance, TICK) == ["2026-03-09"]
    assert _tick(pipeline, instance, datetime(2026, 3, 11, 6, 0, tzinfo=UTC)) == ["2026-03-10"]

    # the requested run submits that partition for real, to the local server
    server = batch_server()
    harness = Harness(instance, str(server.base_url), partitions_def=daily, schedule="0 6 * * *")
    harness.materialize(partition="2026-03-09")  # the upstream's partition
    result = harness.run_job(f"{NAME}_submit", "2026-03-09")
    assert result.success
    assert harness.materializations(harness.pipeline.batch_key, "2026-03-09")


def test_static_schedule_submits_what_was_not_submitted(instance: dg.DagsterInstance) -> None:
    static = dg.StaticPartitionsDefinition(["a", "b", "c"])
    every = _pipeline(static, ScheduleOptions("0 * * * *", default_status="running"))
    assert every.schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert _tick(every, instance, TICK) == ["a", "b", "c"]
    _submitted(instance, "a")
    assert _tick(every, instance, TICK) == ["b", "c"]
    chosen = _pipeline(static, ScheduleOptions("0 * * * *", partition_keys=["a", "c"]))
    assert _tick(chosen, instance, TICK) == ["c"]
    _submitted(instance, "c")
    assert "submitted already" in _tick(chosen, instance, TICK)
    with pytest.raises(ValueError, match=r"unknown partitions \['z'\]"):
        _pipeline(static, ScheduleOptions("0 * * * *", partition_keys=["z"]))


def test_dynamic_schedule_submits_new_keys(instance: dg.DagsterInstance) -> None:
    dynamic = dg.DynamicPartitionsDefinition(name="days")
    pipeline = _pipeline(dynamic, "*/5 * * * *")
    assert "submitted already" in _tick(pipeline, instance, TICK)
    instance.add_dynamic_partitions("days", ["x", "y"])
    _submitted(instance, "x")
    assert _tick(pipeline, instance, TICK) == ["y"]
    _submitted(instance, "y")
    instance.add_dynamic_partitions("days", ["z"])
    assert _tick(pipeline, instance, TICK) == ["z"]


def test_unpartitioned_schedule_and_freshness(instance: dg.DagsterInstance) -> None:
    pipeline = _pipeline(None, ScheduleOptions("0 6 * * *", timezone="Europe/Paris"))
    assert _tick(pipeline, instance, TICK) == [None]
    assert pipeline.schedule.execution_timezone == "Europe/Paris"
    results = next(a for a in pipeline.assets if a.key == pipeline.results_key)
    policy = results.specs_by_key[pipeline.results_key].freshness_policy
    # due a day (the schedule's gap) plus the 24 h window, failed an hour later
    assert policy.fail_window.to_timedelta().total_seconds() == (48 + 1) * 3600
    unscheduled = _pipeline(None, None)
    assert unscheduled.schedule is None
    assert all(a.specs_by_key[a.key].freshness_policy is None for a in unscheduled.assets)
    with pytest.raises(ValueError, match="not a valid cron string"):
        _pipeline(None, "daily")


# ----------------------------------------------------------------------- on-time check


def _on_time_verdicts(results: list) -> list[str]:
    return [
        e.metadata["verdict"].value
        for r in results
        for e in r.asset_events
        if isinstance(e, dg.AssetCheckEvaluation)
    ]


def test_on_time_check_warns_then_errors_on_a_batch_held_past_its_window(
    instance: dg.DagsterInstance, batch_server: Callable[..., LocalBatchServer]
) -> None:
    server = batch_server(validating_seconds=1000, expire_after=2, overrun_window=True)
    harness = Harness(
        instance, str(server.base_url), rows=3, on_time=OnTimeOptions(error_margin_seconds=1)
    )
    submitted = harness.submit()
    check = submitted.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in check] == [(f"{NAME}_batch_on_time", True)]
    ticks: list = []
    deadline = time.monotonic() + 30
    while "overdue" not in _on_time_verdicts(ticks):
        assert time.monotonic() < deadline, _on_time_verdicts(ticks)
        ticks.append(harness.tick())
        time.sleep(0.1)
    verdicts = _on_time_verdicts(ticks)
    # each verdict is reported once, when it changes: late (WARN) before overdue (ERROR)
    assert verdicts[verdicts.index("late") :] == ["late", "overdue"]
    events = [e for t in ticks for e in t.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    late, overdue = events[-2], events[-1]
    assert (late.passed, late.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert (overdue.passed, overdue.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert "past its completion window" in overdue.description
    # the UI's view: the latest evaluation of the check is the ERROR
    key = dg.AssetCheckKey(harness.pipeline.batch_key, f"{NAME}_batch_on_time")
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    assert records[0].event.dagster_event.event_specific_data.severity == (
        dg.AssetCheckSeverity.ERROR
    )


def test_on_time_check_can_be_turned_off(instance: dg.DagsterInstance) -> None:
    pipeline = build_inference_batch_assets(
        NAME, upstream=prompts_asset(1, None), prompt_column="prompt", on_time=False
    )
    batch = next(a for a in pipeline.assets if a.key == pipeline.batch_key)
    assert not list(batch.check_specs)


# ----------------------------------------------------------------- progress metadata


def test_progress_observation_has_pace_eta_and_dashboard_link() -> None:
    shard = BatchShard(
        index=0,
        attempt=1,
        idempotency_key="k",
        file_id="f",
        request_count=100,
        bytes=9,
        sha256="s",
        batch_id="batch_abc",
        status="in_progress",
        created_at=1000,
        request_counts={"total": 100, "completed": 20, "failed": 5},
    )
    job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k", shards=[shard])
    resource = InferenceBatchResource(provider="openai")
    metadata = progress_metadata(job, now=1300, dashboard_url=resource.dashboard_url)
    read = InferenceBatchMetadataSet.extract(metadata)
    assert read.requests_per_minute == 5.0  # 25 done in 5 minutes
    assert read.eta_seconds == 900.0 and read.eta == 2200.0  # 75 left at 5 a minute
    assert isinstance(metadata[InferenceBatchMetadataSet.key("eta")], dg.TimestampMetadataValue)
    link = metadata[InferenceBatchMetadataSet.key("dashboard_url")]
    assert link == dg.MetadataValue.url("https://platform.openai.com/batches/batch_abc")
    assert InferenceBatchResource(base_url="http://127.0.0.1:1/v1").dashboard_url is None


def test_batch_materialization_links_each_batch_id_to_the_providers_page() -> None:
    shards = [
        BatchShard(
            index=i,
            attempt=1,
            idempotency_key="k",
            file_id=f"f{i}",
            request_count=1,
            bytes=9,
            sha256="s",
            batch_id=f"batch_{i}",
        )
        for i in range(2)
    ]
    job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k", shards=shards)
    resource = InferenceBatchResource(provider="openai")
    read = InferenceBatchMetadataSet.extract(
        batch_metadata(job, resource.provider_label, resource.dashboard_url)
    )
    assert read.batch_ids == ["batch_0", "batch_1"]
    assert read.dashboard_url == "https://platform.openai.com/batches/batch_0"
    assert read.dashboards is not None and "batches/batch_1" in read.dashboards
    assert InferenceBatchMetadataSet.extract(batch_metadata(job)).dashboard_url is None


def test_sensor_progress_observations_carry_pace_and_eta(
    instance: dg.DagsterInstance, batch_server: Callable[..., LocalBatchServer]
) -> None:
    server = batch_server(requests_per_second=2)  # 20 requests: 10 s in flight
    harness = Harness(instance, str(server.base_url), rows=20, progress_step_percent=1)
    harness.submit()
    harness.tick_until(lambda: harness.results_done(), timeout=60)
    paced = [
        InferenceBatchMetadataSet.extract(o.metadata)
        for o in harness.observations(harness.pipeline.batch_key)
    ]
    paced = [m for m in paced if m.requests_per_minute is not None]
    assert paced, "no progress observation with a pace"
    assert all(m.requests_per_minute > 0 and m.eta is not None for m in paced)


# ------------------------------------------------------------------- results summary


def test_results_summary_lists_the_error_codes(
    instance: dg.DagsterInstance, batch_server: Callable[..., LocalBatchServer]
) -> None:
    server = batch_server(failure_rate=0.5, seed=7)
    harness = Harness(instance, str(server.base_url), rows=20, max_failure_rate=1.0)
    harness.submit()
    harness.tick_until(lambda: harness.results_done(), timeout=60)
    frame = harness.results_frame()
    failed = frame[frame["status"] != "succeeded"]
    assert len(failed), "the server failed no request"
    metadata = harness.materializations(harness.pipeline.results_key)[-1].metadata
    summary = metadata[SUMMARY]
    assert isinstance(summary, dg.MarkdownMetadataValue)
    for code, rows in failed["error_code"].value_counts().head(5).items():
        assert f"| {code} | {rows} |" in summary.value
    assert f"| failed | {int((frame['status'] == 'failed').sum())} |" in summary.value
    assert "**Attempts:** 1" in summary.value
    read = InferenceBatchMetadataSet.extract(metadata)
    assert read.failure_rate == round(len(failed) / len(frame), 4)
    assert read.total_tokens is not None and read.seconds_to_final is not None
