"""Incremental runs through the factory (issue 11): a re-run sends only the rows whose
request has no stored answer, joins the stored answers back (`source`), and a run with
nothing new creates no batch; a budget refuses a run before anything is uploaded."""

from __future__ import annotations

import dagster as dg
import openai
import pandas as pd
import pytest

from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets
from tests.dagster_harness import Harness

API_KEY = "sk-incremental-secret"
MODEL = "test-model"
ROWS: dict[str, pd.DataFrame] = {}


@dg.asset
def reviews() -> pd.DataFrame:
    return ROWS["frame"].copy()


def frame(texts: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"review_id": list(texts), "text": list(texts.values())})


def pipeline(**options):
    return build_inference_batch_assets(
        "inc",
        upstream=reviews,
        id_column="review_id",
        prompt_column="text",
        model=MODEL,
        body_params={"max_tokens": 16},
        results_wait_seconds=30,
        **options,
    )


@pytest.fixture
def server(batch_server):
    return batch_server(api_key=API_KEY, model=[MODEL])


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def run(server, instance, tmp_path, texts, *, prices=None, **options) -> dg.ExecuteInProcessResult:
    ROWS["frame"] = frame(texts)
    defs = pipeline(**options)
    resource = InferenceBatchResource(
        api_key=API_KEY,
        base_url=server.base_url,
        answer_store=str(tmp_path / "answers"),
        **(prices or {}),
    )
    return dg.materialize(
        [reviews, *defs.assets],
        resources={"inference_batch": resource},
        instance=instance,
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def results(result: dg.ExecuteInProcessResult) -> pd.DataFrame:
    return result.output_for_node("inc_results")


def batches(server) -> list:
    sdk = openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
    return list(sdk.batches.list())


def test_rerun_sends_only_changed_and_new_rows_and_an_unchanged_run_creates_no_batch(
    server, instance, tmp_path
):
    texts = {f"r{i}": f"Review number {i}: fine." for i in range(100)}
    first = run(server, instance, tmp_path, texts)
    assert first.success
    assert metadata(first, "inc_input_file")["inference_batch/rows_sent"] == 100
    assert (results(first)["source"] == "batch").all()

    changed = {**texts, **{f"r{i}": f"Review number {i}: changed!" for i in range(10)}}
    changed.update({f"new{i}": f"A new review {i}" for i in range(5)})
    second = run(server, instance, tmp_path, changed)
    assert second.success
    sent = metadata(second, "inc_input_file")
    assert sent["inference_batch/rows_sent"] == 15
    assert sent["inference_batch/rows_reused"] == 90
    assert batches(server)[0].request_counts.total == 15  # the newest batch
    frame2 = results(second)
    assert len(frame2) == 105 and (frame2["status"] == "succeeded").all()
    assert frame2["source"].value_counts().to_dict() == {"store": 90, "batch": 15}
    old = frame2.set_index("review_id").loc["r50"]
    assert old["batch_id"] == results(first).set_index("review_id").loc["r50", "batch_id"]
    assert metadata(second, "inc_results")["inference_batch/rows_reused"] == 90

    before = len(batches(server))
    third = run(server, instance, tmp_path, changed)
    assert third.success
    assert len(batches(server)) == before  # nothing new: no file, no batch
    assert metadata(third, "inc_input_file")["inference_batch/rows_sent"] == 0
    assert metadata(third, "inc_batch")["inference_batch/submitted_status"] == "completed"
    frame3 = results(third)
    assert len(frame3) == 105 and (frame3["source"] == "store").all()
    assert frame3["content"].tolist() == frame2["content"].tolist()


def test_rows_shared_by_two_partitions_are_sent_once(server, instance, tmp_path):
    shared = {f"s{i}": f"Shared review {i}" for i in range(6)}
    run(server, instance, tmp_path, {**shared, "a": "Only in the first"})
    second = run(
        server,
        instance,
        tmp_path,
        {**{f"x{k}": v for k, v in shared.items()}, "b": "Only in the second"},
    )
    assert metadata(second, "inc_input_file")["inference_batch/rows_sent"] == 1
    assert sum(b.request_counts.total for b in batches(server)) == 8  # 7 + 1: each once


def test_duplicate_rows_in_one_run_are_sent_once_and_both_answered(server, instance, tmp_path):
    result = run(server, instance, tmp_path, {"a": "Same text", "b": "Same text", "c": "Other"})
    assert metadata(result, "inc_input_file")["inference_batch/rows_sent"] == 2
    frame_ = results(result).set_index("review_id")
    assert frame_.loc["a", "content"] == frame_.loc["b", "content"]
    assert (frame_["status"] == "succeeded").all() and (frame_["source"] == "batch").all()


def test_incremental_false_sends_every_row_again(server, instance, tmp_path):
    run(server, instance, tmp_path, {"a": "One", "b": "Two"})
    again = run(server, instance, tmp_path, {"a": "One", "b": "Two, changed"}, incremental=False)
    assert metadata(again, "inc_input_file")["inference_batch/request_count"] == 2
    assert [b.request_counts.total for b in batches(server)] == [2, 2]
    assert (results(again)["source"] == "batch").all()


def test_a_budget_below_the_estimate_stops_the_run_before_upload(server, instance, tmp_path):
    prices = {"price_per_million_input_tokens": 10.0, "price_per_million_output_tokens": 30.0}
    texts = {f"r{i}": f"Review {i}" for i in range(50)}
    result = run(server, instance, tmp_path, texts, prices=prices, max_cost_usd=0.0001)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.event_specific_data.error
    message = error.cause.message if error.cause else error.message
    assert "max_cost_usd" in message and "50 rows" in message
    assert API_KEY not in message
    sdk = openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
    assert list(sdk.files.list()) == [] and batches(server) == []


def test_a_partition_answered_entirely_from_the_store_is_collected_by_the_sensor(server, instance):
    harness = Harness(
        instance,
        server.base_url,
        api_key=API_KEY,
        rows=4,
        partitions_def=dg.StaticPartitionsDefinition(["p1", "p2"]),
    )
    harness.submit("p1")
    harness.tick_until(lambda: harness.results_done("p1"))
    before = len(batches(server))
    harness.submit("p2")  # the same prompts under other ids: every answer is stored
    assert len(batches(server)) == before
    harness.tick_until(lambda: harness.results_done("p2"))
    frame_ = harness.results_frame("p2")
    assert len(frame_) == 4 and (frame_["status"] == "succeeded").all()
    assert (frame_["source"] == "store").all()


def test_refresh_in_the_run_config_sends_every_row_again(server, instance, tmp_path):
    texts = {"a": "One", "b": "Two", "c": "One"}
    run(server, instance, tmp_path, texts)
    ROWS["frame"] = frame(texts)
    defs = pipeline()
    refreshed = dg.materialize(
        [reviews, *defs.assets],
        resources={
            "inference_batch": InferenceBatchResource(
                api_key=API_KEY, base_url=server.base_url, answer_store=str(tmp_path / "answers")
            )
        },
        instance=instance,
        run_config={"ops": {"inc_input_file": {"config": {"refresh": True}}}},
    )
    assert metadata(refreshed, "inc_input_file")["inference_batch/rows_sent"] == 2  # a, b
    assert [b.request_counts.total for b in batches(server)] == [2, 2]  # asked again
    assert (results(refreshed)["source"] == "batch").all()
