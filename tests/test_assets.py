"""The asset factory, checks, sensor and jobs in-process against the local server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dagster_inference_batch import budget
from dagster_inference_batch.batch_record import BatchJob
from dagster_inference_batch.client import InferenceBatchClient
from dagster_inference_batch.errors import BatchAPIError
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from dagster_inference_batch.sensor import gather
from tests.dagster_harness import NAME, Harness

CANCELLED_KEY = InferenceBatchMetadataSet.key("cancelled_batch_ids")
CANCEL_KEY = InferenceBatchMetadataSet.key("cancel_requested")
JOB_KEY = InferenceBatchMetadataSet.key("job")

STRUCTURED = {
    "type": "json_schema",
    "json_schema": {
        "name": "greeting",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "mood": {"type": "string", "enum": ["happy", "sad"]},
                "words": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["mood", "words"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def value(metadata: dict, key: str):
    return metadata[key].value


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_one_run_uploads_submits_and_collects(instance, shared_batch_server):
    harness = Harness(
        instance,
        shared_batch_server.base_url,
        rows=25,
        results_wait_seconds=30,
        body_params={"max_tokens": 50, "response_format": STRUCTURED},
        parse_content=json.loads,
        resource_options={
            "max_requests_per_batch": 10,
            "price_per_million_input_tokens": 1.0,
            "price_per_million_output_tokens": 2.0,
        },
    )
    keys = harness.pipeline
    result = harness.materialize(keys.input_file_key, keys.batch_key, keys.results_key)
    assert result.success

    upload = result.asset_materializations_for_node(f"{NAME}_input_file")[0].metadata
    assert value(upload, "inference_batch/request_count") == 25
    assert value(upload, "inference_batch/shard_count") == 3
    assert len(value(upload, "inference_batch/file_ids")) == 3
    assert len(value(upload, "inference_batch/sha256")) == 64
    assert value(upload, "inference_batch/bytes") > 0
    preview = upload["inference_batch/preview"].value.records
    assert len(preview) == 10
    row = preview[3].data
    assert (row["custom_id"], row["model"], row["input"]) == (
        "row-3",
        "test-model",
        "Say hello to number 3",
    )
    assert row["bytes"] > len(STRUCTURED["json_schema"]["name"]) + len(row["input"])

    batch = result.asset_materializations_for_node(f"{NAME}_batch")[0].metadata
    assert len(value(batch, "inference_batch/batch_ids")) == 3
    assert value(batch, JOB_KEY)["request_count"] == 25
    assert "inference_batch/expires_at" in batch

    out = result.asset_materializations_for_node(f"{NAME}_results")[0].metadata
    assert value(out, "dagster/row_count") == 25
    assert value(out, "inference_batch/succeeded") == 25
    assert value(out, "inference_batch/failed") == 0
    assert value(out, "inference_batch/output_tokens") > 0
    tokens = value(out, "inference_batch/input_tokens"), value(out, "inference_batch/output_tokens")
    assert value(out, "inference_batch/cost_usd") == pytest.approx(
        (tokens[0] * 1.0 + tokens[1] * 2.0) / 1e6, rel=1e-3
    )
    assert value(out, "inference_batch/seconds_to_final") >= 0
    columns = {c.name for c in out["dagster/column_schema"].value.columns}
    assert {"custom_id", "status", "content", "prompt", "n", "mood", "words"} <= columns
    assert out["inference_batch/preview"].value.records[0].data["status"] == "succeeded"

    checks = check_results(result)
    assert checks[f"{NAME}_results_complete"].passed
    assert checks[f"{NAME}_results_failure_rate"].passed

    frame = harness.results_frame()
    assert frame["custom_id"].tolist() == [f"row-{i}" for i in range(25)]
    assert set(frame["mood"]) <= {"happy", "sad"}
    assert all(isinstance(words, list) for words in frame["words"])
    assert frame["parse_error"].isna().all()

    # nothing left for the sensor
    tick = harness.tick()
    assert not tick.run_requests and not tick.asset_events
    assert "no batches in flight" in tick.skip_message


def user_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def test_results_step_leaves_a_running_batch_to_the_sensor(instance, batch_server):
    server = batch_server(requests_per_second=5)  # 6 s: ticks see it running, even under load
    harness = Harness(instance, server.base_url, rows=30, results_wait_seconds=0)
    keys = harness.pipeline
    first = harness.materialize(keys.input_file_key, keys.batch_key, keys.results_key)

    assert first.success
    assert not first.asset_materializations_for_node(f"{NAME}_results")
    assert any(
        f"the sensor {NAME}_sensor will materialize {NAME}_results" in message
        for message in user_messages(instance, first.run_id)
    )

    ticks = harness.tick_until(harness.results_done)
    assert len(harness.run_keys) == 1
    assert harness.collect_runs[0].success
    observations = harness.observations(keys.batch_key)
    percents = [o.metadata["inference_batch/percent"].value for o in observations]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert len(observations) >= 2  # progress was seen moving, not only the end
    assert {"completed", "failed", "total"} <= {k.split("/")[1] for k in observations[0].metadata}
    assert any("in_progress" in (t.skip_message or "") for t in ticks)
    assert (harness.results_frame()["status"] == "succeeded").all()

    after = harness.tick()
    assert not after.run_requests and after.skip_message == "no batches in flight"


def test_expired_remainder_is_resubmitted_then_collected(instance, batch_server):
    # each batch expires once 16 of its requests are answered: the first attempt after 16
    # of 24, the resubmitted 8 all finish
    server = batch_server(expire_after_requests=16)
    harness = Harness(instance, server.base_url, rows=24)
    harness.submit()

    harness.tick_until(harness.results_done)

    batches = harness.materializations(harness.pipeline.batch_key)
    assert len(batches) == 2
    first, second = (m.metadata[JOB_KEY].value for m in batches)
    assert [s["attempt"] for s in second["shards"]] == [1, 2]
    retried = second["shards"][1]["request_count"]
    assert retried == 8
    statuses = [
        o.metadata["inference_batch/status"].value
        for o in harness.observations(harness.pipeline.batch_key)
    ]
    assert "expired" in statuses and statuses[-1] == "completed"
    assert len(harness.run_keys) == 1
    frame = harness.results_frame()
    assert len(frame) == 24 and (frame["status"] == "succeeded").all()
    assert sorted(frame["attempt"].value_counts().tolist()) == sorted([24 - retried, retried])
    out = harness.materializations(harness.pipeline.results_key)[0].metadata
    assert out["inference_batch/attempts"].value == 2
    assert len(out["inference_batch/batch_ids"].value) == 2


def test_validation_failure_fails_the_results_run_with_the_providers_errors(instance, batch_server):
    server = batch_server(max_requests_per_batch=5)
    harness = Harness(instance, server.base_url, rows=8)
    harness.submit()

    harness.tick_until(lambda: bool(harness.collect_runs))

    run = harness.collect_runs[0]
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "failed at the provider" in message
    assert "the limit is 5" in message
    assert not harness.results_done()
    statuses = [
        o.metadata["inference_batch/status"].value
        for o in harness.observations(harness.pipeline.batch_key)
    ]
    assert statuses[-1] == "failed"
    again = harness.tick()
    assert not again.run_requests
    assert "1 waiting for a requested results run" in again.skip_message


def test_cancel_job_cancels_and_the_sensor_collects_without_resubmitting(instance, batch_server):
    server = batch_server(requests_per_second=4)
    harness = Harness(instance, server.base_url, rows=30, max_failure_rate=0.05)
    harness.submit()
    harness.tick_until(
        lambda: any(
            o.metadata["inference_batch/completed"].value > 0
            for o in harness.observations(harness.pipeline.batch_key)
        )
    )

    cancel = harness.run_job(f"{NAME}_cancel")
    assert cancel.success
    batches = harness.materializations(harness.pipeline.batch_key)
    assert batches[-1].metadata[CANCEL_KEY].value is True

    harness.tick_until(harness.results_done)

    assert len(harness.materializations(harness.pipeline.batch_key)) == 2  # no resubmission
    frame = harness.results_frame()
    assert len(frame) == 30
    assert {"succeeded", "cancelled"} == set(frame["status"])
    checks = check_results(harness.collect_runs[0])
    complete = checks[f"{NAME}_results_complete"]
    rate = checks[f"{NAME}_results_failure_rate"]
    # a cancel the user asked for is neither a failure nor unanswered, in both checks
    assert complete.passed and rate.passed
    cancelled = int((frame["status"] == "cancelled").sum())
    for check in (complete, rate):
        assert check.metadata["cancelled_rows"].value == cancelled
        assert "at your request" in check.metadata["cancelled_rows_counted_as"].value
    assert rate.metadata["counted_rows"].value == 30 - cancelled


def test_several_partitions_in_flight_each_collected_once(instance, batch_server):
    server = batch_server(requests_per_second=40)
    partitions = dg.DynamicPartitionsDefinition(name="batches")
    keys = [f"p{i}" for i in range(5)]
    instance.add_dynamic_partitions("batches", keys)
    harness = Harness(instance, server.base_url, rows=12, partitions_def=partitions)
    for key in keys:
        harness.submit(key)

    harness.tick_until(lambda: all(harness.results_done(k) for k in keys))

    assert sorted(run.dagster_run.tags["dagster/partition"] for run in harness.collect_runs) == keys
    for key in keys:
        assert len(harness.materializations(harness.pipeline.results_key, key)) == 1
        frame = harness.results_frame(key)
        assert frame["custom_id"].tolist() == [f"{key}-{i}" for i in range(12)]
        assert (frame["status"] == "succeeded").all()
    assert len(harness.run_keys) == len(set(harness.run_keys)) == 5
    for run in harness.collect_runs:
        checks = check_results(run)
        assert len(checks) == 2 and all(c.passed for c in checks.values())


def test_sensor_carries_on_where_a_tick_ran_out_of_time(instance, batch_server):
    # nothing finishes during the 3 ticks, even when the submissions before them are slow
    server = batch_server(validating_seconds=12.0)
    partitions = dg.StaticPartitionsDefinition(["a", "b", "c"])
    harness = Harness(
        instance, server.base_url, rows=3, partitions_def=partitions, sensor_budget_seconds=0
    )
    for key in partitions.get_partition_keys():
        harness.submit(key)

    seen = []
    for _ in range(3):
        tick = harness.tick()
        seen.append(sorted({e.partition for e in tick.asset_events}))  # progress, on-time
        assert not tick.run_requests
        assert tick.skip_message == (
            "3 in flight (3 validating; 0/9 requests done): partition 'a', partition 'b', "
            "partition 'c'; 2 not reached this tick, "
            "first next tick"
        )
    assert seen == [["a"], ["b"], ["c"]]  # one partition per tick, the ones left out first

    harness.tick_until(lambda: all(harness.results_done(k) for k in "abc"))
    assert len(harness.run_keys) == 3


def test_the_sensor_budget_counts_from_the_start_of_the_tick(instance, batch_server, monkeypatch):
    # the event log read takes the whole budget: only the first refresh still runs
    server = batch_server(validating_seconds=12.0)
    partitions = dg.StaticPartitionsDefinition(["a", "b", "c"])
    harness = Harness(
        instance, server.base_url, rows=3, partitions_def=partitions, sensor_budget_seconds=1.0
    )
    for key in partitions.get_partition_keys():
        harness.submit(key)
    read = gather.uncollected_jobs

    def slow_read(*args, **kwargs):
        time.sleep(1.0)
        return read(*args, **kwargs)

    monkeypatch.setattr(gather, "uncollected_jobs", slow_read)
    tick = harness.tick()

    assert {e.partition for e in tick.asset_events} == {"a"}
    assert tick.skip_message.endswith("2 not reached this tick, first next tick")


@pytest.mark.slow
@pytest.mark.timeout(600)  # about two minutes alone on 2 cores; more under load
def test_fifty_daily_partitions_in_flight_each_collected_exactly_once(instance, batch_server):
    server = batch_server(requests_per_second=50)
    days = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-20")
    keys = days.get_partition_keys()
    assert len(keys) == 50
    harness = Harness(instance, server.base_url, rows=2, partitions_def=days)
    for key in keys:
        harness.submit(key)

    harness.tick_until(lambda: all(harness.results_done(k) for k in keys), timeout=120)

    assert len(harness.run_keys) == len(set(harness.run_keys)) == 50
    assert all(run.success for run in harness.collect_runs)
    for key in keys:
        assert len(harness.materializations(harness.pipeline.results_key, key)) == 1
    last = harness.results_frame(keys[-1])["custom_id"].tolist()
    assert last == [f"{keys[-1]}-0", f"{keys[-1]}-1"]
    assert harness.tick().skip_message == "no batches in flight"


def files_containing(root: str, secret: bytes) -> list[str]:
    return [
        str(path)
        for path in Path(root).rglob("*")
        if path.is_file() and secret in path.read_bytes()
    ]


def test_api_key_never_reaches_logs_metadata_errors_or_the_event_log(
    instance, batch_server, caplog, capfd
):
    secret = "sk-distinctive-4f7c9e1b2d"
    wrong = "sk-wrong-key-8a3e6d0c5b"
    server = batch_server(api_key=secret, requests_per_second=20)
    harness = Harness(instance, server.base_url, api_key=secret, rows=20)
    refused = Harness(instance, server.base_url, api_key=wrong, rows=20)
    harness.submit()
    refused_tick = refused.tick()  # refreshing with a refused key fails, retried next tick
    harness.tick_until(harness.results_done)
    refused_upload = refused.materialize(refused.pipeline.input_file_key, raise_on_error=False)

    assert harness.collect_runs[0].success
    assert not refused_upload.success
    assert "1 could not be refreshed" in refused_tick.skip_message
    out, err = capfd.readouterr()
    for key in (secret, wrong):
        assert files_containing(instance.root_directory, key.encode()) == []
        assert key not in caplog.text and key not in out and key not in err
        for run in instance.get_runs():
            for entry in instance.all_logs(run.run_id):
                assert key not in repr(entry)


def failing_results(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make the first `failures` calls of `client.results` fail as a provider 503 would."""
    calls: list[int] = []
    original = InferenceBatchClient.results

    def results(self, job, *args, **kwargs):
        calls.append(len(calls))
        if len(calls) <= failures:
            raise BatchAPIError("download output file: 503 after 6 retries", status_code=503)
        return original(self, job, *args, **kwargs)

    monkeypatch.setattr(InferenceBatchClient, "results", results)
    return calls


def test_failed_results_run_is_requested_again_under_a_retry_key(
    instance, batch_server, monkeypatch
):
    server = batch_server()
    harness = Harness(instance, server.base_url, rows=4)
    harness.submit()
    failing_results(monkeypatch, failures=2)

    harness.tick_until(lambda: bool(harness.collect_runs))
    assert not harness.collect_runs[0].success
    harness.cursor = None  # the runs already made are found by their run_key, not the cursor
    harness.tick_until(harness.results_done, timeout=30)

    base = harness.run_keys[0]
    assert base.endswith(":completed")
    assert harness.run_keys == [base, f"{base}:retry1", f"{base}:retry2"]
    assert [run.success for run in harness.collect_runs] == [False, False, True]
    assert harness.collect_runs[-1].dagster_run.tags["inference_batch/status"] == "completed"
    assert (harness.results_frame()["status"] == "succeeded").all()
    assert harness.tick().skip_message == "no batches in flight"


def test_results_run_retries_are_bounded(instance, batch_server, monkeypatch):
    server = batch_server()
    harness = Harness(instance, server.base_url, rows=4)
    harness.submit()
    failing_results(monkeypatch, failures=100)

    harness.tick_until(lambda: len(harness.collect_runs) == 4, timeout=30)
    ticks = [harness.tick() for _ in range(2)]

    assert len(harness.run_keys) == 4 and harness.run_keys[-1].endswith(":retry3")
    assert not any(run.success for run in harness.collect_runs)
    for tick in ticks:
        assert not tick.run_requests
        assert tick.skip_message == (
            "1 whose results run failed 4 times "
            "(see the runs; materialize the results asset to try again)"
        )


def test_validation_failure_is_not_retried(instance, batch_server):
    server = batch_server(max_requests_per_batch=5)
    harness = Harness(instance, server.base_url, rows=8)
    harness.submit()
    harness.tick_until(lambda: bool(harness.collect_runs))
    harness.cursor = None  # even with the cursor lost

    tick = harness.tick()

    assert len(harness.collect_runs) == 1 and not harness.collect_runs[0].success
    assert not tick.run_requests
    assert tick.skip_message == "1 waiting for a requested results run"


def test_sensor_client_stays_open_until_a_refresh_given_up_on_returns(
    instance, batch_server, monkeypatch
):
    server = batch_server()
    harness = Harness(instance, server.base_url, rows=2, sensor_budget_seconds=0)
    harness.submit()
    monkeypatch.setattr(budget, "GRACE_SECONDS", 0.2)
    events: list[str] = []
    refreshed = threading.Event()
    original_refresh, original_close = InferenceBatchClient.refresh, InferenceBatchClient.close

    def slow_refresh(self, job, **options):
        time.sleep(1.5)  # longer than the tick may take
        try:
            return original_refresh(self, job, **options)
        except Exception as error:
            events.append(f"refresh failed: {error}")
            raise
        finally:
            events.append("refresh returned")
            refreshed.set()

    def close(self):
        events.append("close")
        original_close(self)

    monkeypatch.setattr(InferenceBatchClient, "refresh", slow_refresh)
    monkeypatch.setattr(InferenceBatchClient, "close", close)

    started = time.monotonic()
    tick = harness.tick()
    took = time.monotonic() - started

    assert took < 1.2  # the tick did not wait for the straggler
    assert tick.skip_message.endswith("1 not reached this tick, first next tick")
    assert "close" not in events
    assert refreshed.wait(10)
    time.sleep(0.2)
    assert events == ["refresh returned", "close"]


def test_cancel_job_copes_with_a_batch_that_finished_meanwhile(instance, batch_server, monkeypatch):
    # two shards: one request (done in ~4 s) and two (the second answered ~4 s later)
    server = batch_server(requests_per_second=0.25)
    harness = Harness(
        instance, server.base_url, rows=3, resource_options={"max_requests_per_batch": 2}
    )
    harness.submit()
    recorded = BatchJob.from_dict(
        harness.materializations(harness.pipeline.batch_key)[-1].metadata[JOB_KEY].value
    )
    assert sorted(s.request_count for s in recorded.shards) == [1, 2]
    small = next(s.batch_id for s in recorded.shards if s.request_count == 1)
    big = next(s.batch_id for s in recorded.shards if s.request_count == 2)
    client = harness.resources["inference_batch"].get_client()
    deadline = time.monotonic() + 30
    while {s.batch_id: s.status for s in client.refresh(recorded).shards}[small] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client.close()
    # the cancel job's refresh sees the state as recorded, before the small batch finished
    original_refresh = InferenceBatchClient.refresh
    stale = iter([recorded])

    def refresh(self, job):
        return next(stale, None) or original_refresh(self, job)

    monkeypatch.setattr(InferenceBatchClient, "refresh", refresh)
    cancel = harness.run_job(f"{NAME}_cancel")
    monkeypatch.setattr(InferenceBatchClient, "refresh", original_refresh)

    assert cancel.success
    marked = harness.materializations(harness.pipeline.batch_key)[-1].metadata
    assert marked[CANCEL_KEY].value is True
    assert marked[CANCELLED_KEY].value == [big]
    assert any(
        f"{small} (completed)" in message for message in user_messages(instance, cancel.run_id)
    )

    harness.tick_until(harness.results_done)
    frame = harness.results_frame()
    assert frame["status"].value_counts().to_dict() == {"succeeded": 2, "cancelled": 1}
    assert check_results(harness.collect_runs[0])[f"{NAME}_results_complete"].passed
