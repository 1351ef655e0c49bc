"""The asset factory, checks, sensor and jobs in-process against the local server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dagster as dg
import pytest

from dagster_inference_batch.state import JOB_KEY
from tests.dagster_harness import NAME, Harness

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
    assert len(upload["inference_batch/preview"].value.records) == 10

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
