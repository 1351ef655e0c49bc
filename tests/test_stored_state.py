"""Stored state stays readable across versions: the BatchJob in the event log and the
sensor's cursor carry a format_version, are read leniently (unknown fields ignored,
missing optional ones defaulted), and what cannot be used fails only itself.

Names new in this change are imported inside the tests, so that on older code each test
fails rather than the whole file erroring at collection.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData

from dagster_inference_batch.batch_record import BatchJob
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from tests.dagster_harness import NAME, Harness

JOB_KEY = InferenceBatchMetadataSet.key("job")

# A job exactly as `BatchJob.to_dict()` wrote it before records carried a format_version
# (commit a878dd2).
PREVIOUS: dict[str, Any] = {
    "endpoint": "/v1/chat/completions",
    "idempotency_key": "llm_batch||0123456789abcdef",
    "metadata": {"dagster_asset": "llm_batch", "dagster_partition": ""},
    "request_count": 3,
    "shards": [
        {
            "index": 0,
            "attempt": 1,
            "idempotency_key": "llm_batch||0123456789abcdef#s0a1:fedcba9876543210",
            "file_id": "file-1",
            "request_count": 3,
            "bytes": 612,
            "sha256": "ab" * 32,
            "model": "test-model",
            "batch_id": "batch_1",
            "status": "completed",
            "request_counts": {"total": 3, "completed": 3, "failed": 0},
            "output_file_id": "file-out",
            "error_file_id": None,
            "errors": [],
            "usage": {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42},
            "created_at": 1767225601,
            "expires_at": 1767312001,
            "finished_at": 1767225700,
        }
    ],
    "submitted_at": 1767225600.5,
}
# Job fields added since, as a job read from PREVIOUS is written back: at their defaults.
ADDED_SINCE: dict[str, Any] = {
    "sha256": None,
    # incremental jobs (issue 11): a job of the previous version reused nothing
    "rows_reused": 0,
    "manifest": None,
    "estimate": {},
    "tokens_saved": {},
    # empty partitions (issue 17): a job of the previous version had input
    "empty_input": False,
}


def previous() -> dict[str, Any]:
    return copy.deepcopy(PREVIOUS)


# ------------------------------------------------------------------ the BatchJob record


def test_unknown_fields_in_the_job_and_its_shards_are_ignored():
    from dagster_inference_batch.batch_record import FORMAT_VERSION

    data = {**previous(), "format_version": FORMAT_VERSION, "priority": "high"}
    data["shards"][0]["region"] = {"name": "eu-west"}

    job = BatchJob.from_dict(data)

    assert job == BatchJob.from_dict(previous())
    stored = job.to_dict()
    assert "priority" not in stored and "region" not in stored["shards"][0]
    assert stored["format_version"] == FORMAT_VERSION
    assert BatchJob.from_json(job.to_json()) == job


def test_a_job_written_before_format_version_reads_and_is_written_back_stamped():
    from dagster_inference_batch.batch_record import FORMAT_VERSION

    job = BatchJob.from_dict(previous())

    assert job.status == "completed" and job.is_final
    assert job.request_counts() == {"total": 3, "completed": 3, "failed": 0}
    assert job.usage()["total_tokens"] == 42
    assert job.to_dict() == {"format_version": FORMAT_VERSION, **PREVIOUS, **ADDED_SINCE}

    # a missing (or null) optional field takes its default
    trimmed = previous()
    del trimmed["metadata"], trimmed["submitted_at"]
    for name in ("model", "usage", "errors", "request_counts", "finished_at"):
        del trimmed["shards"][0][name]
    trimmed["shards"][0]["status"] = None
    shard = BatchJob.from_dict(trimmed).shards[0]
    assert (shard.status, shard.usage, shard.errors, shard.model) == ("uploaded", {}, [], None)
    assert BatchJob.from_dict(trimmed).to_dict()["format_version"] == FORMAT_VERSION


def test_a_job_of_a_newer_format_version_is_refused_naming_the_version():
    from dagster_inference_batch.batch_record import FORMAT_VERSION, StoredStateError

    newer = {**previous(), "format_version": FORMAT_VERSION + 1}

    with pytest.raises(StoredStateError) as raised:
        BatchJob.from_dict(newer)
    message = str(raised.value)
    assert f"format_version {FORMAT_VERSION + 1}" in message
    assert "newer dagster-inference-batch" in message
    assert isinstance(raised.value, ValueError)
    with pytest.raises(StoredStateError, match="newer dagster-inference-batch"):
        BatchJob.from_json(json.dumps(newer))


def _without(name: str) -> Callable[[dict[str, Any]], Any]:
    def spoil(data: dict[str, Any]) -> dict[str, Any]:
        del data[name]
        return data

    return spoil


def _shard_without(name: str) -> Callable[[dict[str, Any]], Any]:
    def spoil(data: dict[str, Any]) -> dict[str, Any]:
        del data["shards"][0][name]
        return data

    return spoil


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "no endpoint": (_without("endpoint"), "required field 'endpoint'"),
    "no idempotency_key": (_without("idempotency_key"), "required field 'idempotency_key'"),
    "endpoint a number": (lambda d: {**d, "endpoint": 7}, "'endpoint' should be str"),
    "shards an object": (lambda d: {**d, "shards": {}}, "'shards' should be list"),
    "request_count a string": (lambda d: {**d, "request_count": "3"}, "'request_count'"),
    "shard without file_id": (_shard_without("file_id"), "shard 0 lacks the required field"),
    "shard a string": (lambda d: {**d, "shards": ["batch_1"]}, "shard 0 is not a JSON object"),
    "not an object": (lambda d: [d], "not a JSON object"),
    "a bad format_version": (lambda d: {**d, "format_version": "one"}, "format_version"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_job_record_is_refused_saying_what_is_wrong(case):
    from dagster_inference_batch.batch_record import StoredStateError

    spoil, expected = BROKEN[case]

    with pytest.raises(StoredStateError) as raised:
        BatchJob.from_dict(spoil(previous()))
    assert expected in str(raised.value)


def test_job_text_that_is_not_json_is_refused():
    from dagster_inference_batch.batch_record import StoredStateError

    with pytest.raises(StoredStateError, match="not valid JSON"):
        BatchJob.from_json('{"endpoint": ')


# ------------------------------------------------------------------------- the sensor


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def evaluate(harness: Harness) -> tuple[SensorExecutionData, list[str]]:
    """One evaluation of the sensor with the harness's cursor, and the warnings it logged
    (the sensor's logger does not propagate to caplog). Unlike `harness.tick()` it neither
    records the events nor launches the runs; it does keep the new cursor."""
    context = dg.build_sensor_context(
        instance=harness.instance,
        cursor=harness.cursor,
        resources=harness.resources,
        definitions=harness.defs,
    )
    warnings = _Warnings()
    context.log.addHandler(warnings)
    with dg.partition_loading_context(dynamic_partitions_store=harness.instance):
        result = harness.pipeline.sensor.evaluate_tick(context)
    harness.cursor = result.cursor
    return result, warnings.messages


def test_an_unreadable_cursor_is_reset_with_a_warning(instance, shared_batch_server):
    harness = Harness(instance, shared_batch_server.base_url, rows=3)
    harness.submit()
    harness.cursor = "{not json"

    _, warnings = evaluate(harness)

    reset = [m for m in warnings if "cursor was reset" in m]
    assert len(reset) == 1 and "the event log is the source of truth" in reset[0]
    assert '"format_version":1' in harness.cursor
    harness.tick_until(harness.results_done)
    assert len(harness.collect_runs) == 1 and harness.collect_runs[0].success


@pytest.mark.parametrize(
    "cursor",
    ["[1, 2]", '{"resume": [{"a": 1}]}', '{"format_version": 99}', '{"requested": []}'],
)
def test_a_cursor_of_the_wrong_shape_or_newer_format_is_reset(
    instance, shared_batch_server, cursor
):
    harness = Harness(instance, shared_batch_server.base_url, rows=2)
    harness.cursor = cursor

    tick, warnings = evaluate(harness)

    assert tick.skip_message == "no batches in flight"
    assert any("cursor was reset" in m for m in warnings)


def test_unknown_cursor_fields_are_ignored(instance, shared_batch_server):
    harness = Harness(instance, shared_batch_server.base_url, rows=3)
    harness.submit()
    harness.cursor = '{"progress": {}, "brand_new_field": 1}'

    _, warnings = evaluate(harness)

    assert warnings == []  # read as it is, not reset
    assert "brand_new_field" not in harness.cursor and '"format_version":1' in harness.cursor
    harness.tick_until(harness.results_done)
    assert len(harness.collect_runs) == 1 and harness.collect_runs[0].success


SPOILED: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "too new": (
        lambda job: {**job, "format_version": 99, "priority": "high"},
        "written by a newer dagster-inference-batch",
    ),
    "broken": (_without("endpoint"), "lacks the required field 'endpoint'"),
}


@pytest.mark.parametrize("case", SPOILED)
def test_an_unusable_job_fails_only_its_partition(instance, shared_batch_server, case):
    spoil, expected = SPOILED[case]
    partitions = dg.StaticPartitionsDefinition(["a", "b"])
    harness = Harness(instance, shared_batch_server.base_url, rows=3, partitions_def=partitions)
    batch_key = harness.pipeline.batch_key
    harness.submit("a")
    harness.submit("b")
    recorded = harness.materializations(batch_key, "a")[-1].metadata[JOB_KEY].value
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=batch_key,
            partition="a",
            metadata={JOB_KEY: dg.MetadataValue.json(spoil(copy.deepcopy(recorded)))},
        )
    )

    harness.tick_until(lambda: harness.results_done("b"))  # no tick raises
    after, warnings = evaluate(harness)

    assert [run.dagster_run.tags["dagster/partition"] for run in harness.collect_runs] == ["b"]
    assert harness.collect_runs[0].success
    assert (harness.results_frame("b")["status"] == "succeeded").all()
    assert not harness.results_done("a")
    assert not after.run_requests
    assert "partition 'a'" in after.skip_message
    skipped = [m for m in warnings if "skipping partition 'a'" in m]
    assert len(skipped) == 1 and expected in skipped[0]

    # a run of the broken partition fails with the same clear message; nothing else does
    run = harness.run_job(f"{NAME}_collect", "a")
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure)
    assert expected in failure.step_failure_data.error.message
    assert "partition a" in failure.step_failure_data.error.message
