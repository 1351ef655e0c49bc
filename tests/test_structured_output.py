"""Structured output (issue 16): a Pydantic model or a JSON schema in, validated typed
columns out, invalid answers counted, checked and retried.

- the generated ``response_format`` (and Responses ``text``) is a valid request under
  the openai SDK's own request types, strict where the profile allows it;
- answers become typed columns (enums, lists, optional and nested fields), from a model
  and from a schema alike;
- every kind of broken answer the local server makes is ``invalid_output`` with the JSON
  path of the problem; a valid answer of any attempt beats an invalid one;
- through the sensor: invalid answers are resubmitted and end valid; without the retry
  the valid-output check warns, and the results metadata counts them by error.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator
from typing import Any, Literal

import dagster as dg
import openai
import orjson
import pandas as pd
import pytest
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from pydantic import BaseModel, Field, TypeAdapter

from dagster_inference_batch import InferenceBatchClient, build_requests
from dagster_inference_batch.local_server import LocalBatchServer
from dagster_inference_batch.local_server.invalid_outputs import KINDS, broken_content
from dagster_inference_batch.providers import provider_profile
from dagster_inference_batch.result_join import join_results
from dagster_inference_batch.structured_output import StructuredOutput
from tests.dagster_harness import NAME, Harness

# The retry test's server: this seed breaks 3 of the 12 first answers and none of their
# retries (the draw is by seed, custom_id and body; the retry adds the prompt suffix).
RETRY_SEED = 3
RETRY_ROWS = 12
INVALID_RATE = 0.3


class Mood(str, enum.Enum):
    happy = "happy"
    neutral = "neutral"
    sad = "sad"


class Author(BaseModel):
    name: str
    years: int | None = None


class Insight(BaseModel):
    """Every kind of field the columns type: enum, number, bool, list, optional, nested."""

    mood: Mood
    score: float
    urgent: bool
    tags: list[str] = Field(max_length=3)
    author: Author
    note: str | None = None
    channel: Literal["mail", "phone"]


INSIGHT_SCHEMA = Insight.model_json_schema()
EXPECTED_DTYPES = {
    "mood": "category",
    "score": "Float64",
    "urgent": "boolean",
    "tags": "list<item: string>[pyarrow]",
    "author__name": "string",
    "author__years": "Int64",
    "note": "string",
    "channel": "category",
}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"custom_id": [f"r{i}" for i in range(rows)], "text": [f"ticket {i}" for i in range(rows)]}
    )


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# ------------------------------------------------------------------ requests


@pytest.mark.parametrize("provider", ["inference.net", "openai", "compatible"])
@pytest.mark.parametrize("response_model", [Insight, INSIGHT_SCHEMA], ids=["model", "schema"])
def test_the_generated_response_format_is_a_valid_chat_request(provider, response_model):
    encoded = build_requests(
        _frame(2), prompt_column="text", model="m", response_model=response_model,
        provider=provider,
    )  # fmt: skip
    body = orjson.loads(encoded.lines[0])["body"]
    TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(body)  # the SDK's types
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    spec = fmt["json_schema"]
    assert spec["name"] == "Insight" and len(spec["name"]) <= 64
    strict = provider_profile(provider).strict_json_schema
    assert spec["strict"] is strict
    if strict:  # what strict structured outputs demand of every object
        objects = [n for n in _walk(spec["schema"]) if n.get("type") == "object"]
        assert objects
        for node in objects:
            assert node["additionalProperties"] is False
            assert sorted(node["required"]) == sorted(node["properties"])
        assert not any("default" in n for n in _walk(spec["schema"]))
    # an answer valid against the strict schema is valid against the model
    out = StructuredOutput(response_model)
    answer = {"mood": "sad", "score": 1.5, "urgent": False, "tags": ["a"], "channel": "mail",
              "author": {"name": "Ann", "years": None}, "note": None}  # fmt: skip
    assert out.check(orjson.dumps(answer).decode()) is None


def test_responses_requests_carry_the_format_in_text():
    encoded = build_requests(
        _frame(1), prompt_column="text", model="m", endpoint="/v1/responses",
        response_model=Insight, provider="openai",
    )  # fmt: skip
    body = orjson.loads(encoded.lines[0])["body"]
    TypeAdapter(ResponseCreateParamsNonStreaming).validate_python(body)
    assert body["text"]["format"]["type"] == "json_schema"
    assert body["text"]["format"]["strict"] is True


def test_a_json_object_provider_gets_the_schema_in_a_system_message():
    json_mode = dataclasses.replace(provider_profile("compatible"), structured_output="json_object")
    by_prompt = build_requests(
        _frame(1), prompt_column="text", model="m", system_prompt="Be brief.",
        response_model=Insight, provider=json_mode,
    )  # fmt: skip
    by_messages = build_requests(
        _frame(1), messages=lambda row: [{"role": "user", "content": row["text"]}], model="m",
        response_model=Insight, provider=json_mode,
    )  # fmt: skip
    for encoded in (by_prompt, by_messages):
        body = orjson.loads(encoded.lines[0])["body"]
        TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(body)
        assert body["response_format"] == {"type": "json_object"}
        system = body["messages"][0]
        assert system["role"] == "system" and '"mood"' in system["content"]
    assert orjson.loads(by_prompt.lines[0])["body"]["messages"][0]["content"].startswith(
        "Be brief.\n\n"
    )


def test_response_model_refuses_what_does_not_go_with_it():
    with pytest.raises(ValueError, match="body_params may not set 'response_format'"):
        build_requests(
            _frame(1), prompt_column="text", model="m", response_model=Insight,
            body_params={"response_format": {"type": "json_object"}},
        )  # fmt: skip
    with pytest.raises(ValueError, match="chat or Responses endpoint"):
        build_requests(
            _frame(1), prompt_column="text", model="m", endpoint="/v1/completions",
            response_model=Insight,
        )  # fmt: skip
    from dagster_inference_batch import build_inference_batch_assets

    with pytest.raises(ValueError, match="retry_invalid_output=True needs a response_model"):
        build_inference_batch_assets(
            "x", upstream="up", prompt_column="text", model="m", retry_invalid_output=True
        )
    with pytest.raises(ValueError, match="response_model or parse_content, not both"):
        build_inference_batch_assets(
            "x", upstream="up", prompt_column="text", model="m", response_model=Insight,
            parse_content=orjson.loads,
        )  # fmt: skip
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        StructuredOutput({"type": "object", "properties": {"a": {"type": "nope"}}})
    with pytest.raises(TypeError, match="Pydantic model class or a JSON schema dict"):
        StructuredOutput("Insight")


# ------------------------------------------------------------------- answers


@pytest.mark.parametrize("response_model", [Insight, INSIGHT_SCHEMA], ids=["model", "schema"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_broken_answer_is_invalid_with_its_json_path(response_model, kind):
    out = StructuredOutput(response_model)
    valid = orjson.dumps({"mood": "happy", "score": 2.0, "urgent": True, "tags": [],
                          "author": {"name": "Bo"}, "channel": "phone"}).decode()  # fmt: skip
    assert out.check(valid) is None
    problem = out.parse(broken_content(valid, INSIGHT_SCHEMA, kind))[1]

    assert problem is not None
    where = {"truncated": "$", "missing": "$", "wrong_type": "$.score", "enum": "$.mood"}
    assert problem.path.startswith(where[kind]), problem
    if kind == "truncated":
        assert problem.kind == "not_json" and "not JSON" in problem.message
    if kind == "missing":
        assert "mood" in str(problem)  # the first required field, by its name


def test_typed_columns_from_a_model_and_from_its_schema_alike(shared_batch_server):
    client = InferenceBatchClient(api_key="test-key", base_url=str(shared_batch_server.base_url))
    encoded = build_requests(_frame(6), prompt_column="text", model="m", response_model=Insight)
    job = client.wait(client.submit(encoded), poll_interval=0.1)

    for response_model in (Insight, INSIGHT_SCHEMA):
        frame = client.results(job, inputs=_frame(6), response_model=response_model)
        assert set(frame["status"]) == {"succeeded"}
        assert {c: str(frame[c].dtype) for c in EXPECTED_DTYPES} == EXPECTED_DTYPES
        assert list(frame["mood"].cat.categories) == ["happy", "neutral", "sad"]
        assert all(isinstance(tags, list) for tags in frame["tags"])
        answer = orjson.loads(frame["content"].iloc[0])
        assert frame["author__name"].iloc[0] == answer["author"]["name"]
        assert frame["score"].iloc[0] == answer["score"]
        # typed columns come before the input columns
        assert list(frame.columns).index("channel") < list(frame.columns).index("text")


def test_the_servers_invalid_answers_are_invalid_output_of_every_kind(
    batch_server: Callable[..., LocalBatchServer],
):
    server = batch_server(invalid_output_rate=1.0)
    client = InferenceBatchClient(api_key="k", base_url=str(server.base_url))
    rows = 24
    encoded = build_requests(_frame(rows), prompt_column="text", model="m", response_model=Insight)
    plain = build_requests(_frame(2), prompt_column="text", model="m")
    job = client.wait(client.submit(encoded), poll_interval=0.1)
    frame = client.results(job, response_model=Insight)

    assert set(frame["status"]) == {"invalid_output"}
    kinds = set(frame["error_code"])
    assert {"invalid_output:not_json", "invalid_output:missing", "invalid_output:enum"} <= kinds
    assert any(code.endswith("_parsing") or code.endswith("_type") for code in kinds), kinds
    assert frame["error_message"].str.match(r"^\$(\.\w+)*: ").all()
    assert frame["mood"].isna().all()  # no typed value from an invalid answer
    # answers without a json_schema format are never broken
    plain_job = client.wait(client.submit(plain), poll_interval=0.1)
    assert set(client.results(plain_job)["status"]) == {"succeeded"}


def test_a_valid_answer_beats_an_invalid_one_and_a_later_answer_an_earlier_one():
    rows = pd.DataFrame(
        {
            "custom_id": ["a", "a", "b", "b", "c", "c"],
            "status": [
                "succeeded",
                "invalid_output",
                "invalid_output",
                "expired",
                "invalid_output",
                "invalid_output",
            ],  # fmt: skip
            "attempt": [1, 2, 1, 2, 1, 2],
        }
    )
    joined = join_results(rows, ["a", "b", "c"])
    assert joined[["status", "attempt"]].values.tolist() == [
        ["succeeded", 1],
        ["invalid_output", 1],  # an answer, even invalid, beats none
        ["invalid_output", 2],
    ]


# -------------------------------------------------------------------- Dagster


def _checks(run: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in run.get_asset_check_evaluations()}


@pytest.mark.parametrize("delete_files", [False, True], ids=["keep-files", "delete-files"])
def test_the_sensor_retries_invalid_answers_and_they_end_valid(
    batch_server, instance, delete_files
):
    """With ``delete_files_after_results`` the first attempt's files outlive the step that
    found invalid answers: the retry and the merged results still read them."""
    server = batch_server(invalid_output_rate=INVALID_RATE, seed=RETRY_SEED)
    harness = Harness(
        instance, server.base_url, rows=RETRY_ROWS, response_model=Insight,
        retry_invalid_output=True, max_attempts=2, results_wait_seconds=30,
        resource_options={"delete_files_after_results": delete_files},
    )  # fmt: skip
    keys = harness.pipeline
    first = harness.materialize(keys.input_file_key, keys.batch_key, keys.results_key)
    assert not first.asset_materializations_for_node(f"{NAME}_results")  # the retry is due
    logs = [entry.user_message for entry in instance.all_logs(first.run_id)]
    assert any("answers did not validate: the sensor" in message for message in logs)
    harness.tick_until(harness.results_done)

    batches = harness.materializations(harness.pipeline.batch_key)
    assert [m.metadata["inference_batch/attempt"].value for m in batches] == [1, 2]
    assert "did not validate" in (batches[-1].description or "")
    frame = harness.results_frame()
    retried = frame["attempt"] == 2
    assert set(frame["status"]) == {"succeeded"}
    assert 0 < retried.sum() < RETRY_ROWS  # only the invalid rows went again
    assert str(frame["mood"].dtype) == "category"
    checks = _checks(harness.collect_runs[-1])
    assert checks[f"{NAME}_results_valid_output"].passed
    sdk = openai.OpenAI(base_url=server.base_url, api_key="test-key")
    outputs = {b.output_file_id for b in sdk.batches.list()}
    kept = outputs & {f.id for f in sdk.files.list()}
    assert len(outputs) == 2
    assert kept == (set() if delete_files else outputs)  # deleted once materialized


def test_without_the_retry_the_check_warns_and_the_summary_counts_by_error(batch_server, instance):
    server = batch_server(invalid_output_rate=INVALID_RATE, seed=RETRY_SEED)
    harness = Harness(instance, server.base_url, rows=RETRY_ROWS, response_model=Insight)
    harness.submit()
    harness.tick_until(harness.results_done)

    assert len(harness.materializations(harness.pipeline.batch_key)) == 1  # no retry
    frame = harness.results_frame()
    invalid = int((frame["status"] == "invalid_output").sum())
    assert invalid > 0
    metadata = harness.materializations(harness.pipeline.results_key)[-1].metadata
    assert metadata["inference_batch/invalid_output"].value == invalid
    by_error = metadata["inference_batch/invalid_output_errors"].value
    assert sum(by_error.values()) == invalid and all(k.startswith("$") for k in by_error)
    columns = {c.name: c.type for c in metadata["dagster/column_schema"].value.columns}
    assert columns["mood"] == "category" and columns["tags"].startswith("list<")
    check = _checks(harness.collect_runs[-1])[f"{NAME}_results_valid_output"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["invalid_output_rows"].value == invalid


# ------------------------------------------------------------------ component


def test_the_component_takes_a_model_path_or_a_schema_file(tmp_path):
    from dagster_inference_batch.components.inference_batch.component import (
        InferenceBatchComponent,
        ResourceModel,
    )

    (tmp_path / "insight.json").write_text(orjson.dumps(INSIGHT_SCHEMA).decode())
    common = {
        "name": "insights", "upstream": dg.AssetKey("reviews"), "prompt_column": "text",
        "llm_model": "m", "resource": ResourceModel(use_local_server=True),
    }  # fmt: skip
    by_path = InferenceBatchComponent(
        **common, response_model="tests.test_structured_output:Insight",
        retry_invalid_output=True, max_invalid_output_rate=0.1,
    ).build_pipeline()  # fmt: skip
    by_file = InferenceBatchComponent(**common, response_model="insight.json").build_pipeline(
        tmp_path
    )

    assert by_path.spec.requests.structured.model is Insight
    assert by_path.spec.limits.retry_invalid_output
    assert by_file.spec.requests.structured.schema == INSIGHT_SCHEMA
    for pipeline in (by_path, by_file):
        assert "insights_results_valid_output" in {s.name for s in pipeline.check_specs}
        assert pipeline.spec.requests.structured.column_types().keys() == EXPECTED_DTYPES.keys()
    with pytest.raises(ValueError, match="give response_model or parse_content, not both"):
        InferenceBatchComponent(**common, response_model="insight.json", parse_content="json")
    with pytest.raises(ValueError, match="cannot import"):
        InferenceBatchComponent(**common, response_model="tests.nowhere.Model").build_pipeline()


def test_only_valid_answers_are_kept_for_reuse(batch_server, tmp_path):
    """An invalid answer is not stored: the next incremental run asks for that row again
    instead of reusing an answer that failed its schema."""
    server = batch_server(invalid_output_rate=0.5, seed=RETRY_SEED)
    client = InferenceBatchClient(
        api_key="k", base_url=str(server.base_url), answer_store=str(tmp_path / "answers")
    )
    rows = 12
    encoded = build_requests(_frame(rows), prompt_column="text", model="m", response_model=Insight)
    first = client.results(
        client.wait(client.submit(encoded), poll_interval=0.1), response_model=Insight
    )
    valid = int((first["status"] == "succeeded").sum())
    assert 0 < valid < rows

    again = client.wait(client.submit(encoded), poll_interval=0.1)
    assert again.rows_reused == valid  # the invalid rows went to the provider again
    second = client.results(again, response_model=Insight)
    reused = second["source"] == "store"
    assert set(second.loc[reused, "status"]) == {"succeeded"}
    assert reused.sum() == valid
