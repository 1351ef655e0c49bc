"""InferenceBatchComponent: loaded from YAML it defines the factory's pipeline; it runs
against the local server; `dg` checks, scaffolds and lists it; bad values are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from dagster_inference_batch import (
    InferenceBatchComponent,
    InferenceBatchResource,
    build_inference_batch_assets,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "yaml_project"
TYPE = "dagster_inference_batch.InferenceBatchComponent"
MODEL = "meta-llama/llama-3.1-8b-instruct/fp-8"
SCHEMA = {
    "type": "object",
    "properties": {"mood": {"type": "string", "enum": ["happy", "sad"]}},
    "required": ["mood"],
    "additionalProperties": False,
}
ATTRIBUTES: dict[str, Any] = {
    "name": "greetings",
    "upstream": "raw/people",
    "id_column": "person_id",
    "model": MODEL,
    "system_prompt": "Answer in JSON.",
    "prompt_template": "Say hello to {{ row.name }} from {{ row.city }}",
    "body_params": {"max_tokens": 50},
    "response_format": "mood.json",
    "parse_content": "json",
    "partitions_def": {"type": "static", "partition_keys": ["a", "b"]},
    "max_attempts": 3,
    "max_failure_rate": 0.1,
    "sensor_interval_seconds": 45,
    "group_name": "llm",
    "max_cost_usd": 2.5,
    "incremental": False,
    "resource_key": "llm_api",
    "key_prefix": ["team", "llm"],
    "owners": ["team:ml"],
    "tags": {"domain": "people"},
    "asset_spec_overrides": {"results": {"description": "Greetings, one per person."}},
}


@contextmanager
def load(attributes: dict[str, Any], files: dict[str, str] | None = None) -> Iterator[Any]:
    """(component, defs, folder) for one `defs.yaml` with these attributes (and files
    beside it)."""
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.defs_folder_path / "batch"
        path.mkdir()
        for name, text in (files or {}).items():
            (path / name).write_text(text, encoding="utf-8")
        contents = {"type": TYPE, "attributes": attributes}
        (path / "defs.yaml").write_text(yaml.safe_dump(contents), encoding="utf-8")
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            yield component, defs, path


def describe(defs: dg.Definitions) -> dict[str, Any]:
    """What a user sees of a pipeline: keys, groups, partitions, deps, checks, sensor, jobs
    (with its upstream and the resource its `llm_api` key names)."""
    bound = dg.Definitions(
        assets=[dg.AssetSpec(["raw", "people"])],
        resources={"llm_api": InferenceBatchResource(use_local_server=True)},
    )
    graph = dg.Definitions.merge(defs, bound).resolve_asset_graph()
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            assets[key.to_user_string()] = (
                node.group_name,
                node.owners,
                node.tags,
                node.description,
                node.partitions_def.get_partition_keys() if node.partitions_def else None,
                sorted(k.to_user_string() for k in node.parent_keys),
            )
    jobs = {job.name for job in defs.jobs or []}
    sensors = {s.name: s.minimum_interval_seconds for s in defs.sensors or []}
    checks = sorted(
        f"{spec.asset_key.to_user_string()}:{spec.name}:{spec.blocking}"
        for check in defs.asset_checks or []
        for spec in check.check_specs
    )
    return {"assets": assets, "jobs": jobs, "sensors": sensors, "checks": checks}


def test_yaml_defines_the_factorys_pipeline():
    with load(ATTRIBUTES, {"mood.json": json.dumps(SCHEMA)}) as (component, defs, folder):
        pipeline = component.build_pipeline(folder)
    factory = build_inference_batch_assets(
        "greetings",
        upstream=["raw", "people"],
        id_column="person_id",
        model=MODEL,
        messages=pipeline.spec.requests.messages,
        body_params=pipeline.spec.requests.body_params,
        parse_content=json.loads,
        partitions_def=dg.StaticPartitionsDefinition(["a", "b"]),
        max_attempts=3,
        max_failure_rate=0.1,
        sensor_interval_seconds=45,
        group_name="llm",
        max_cost_usd=2.5,
        incremental=False,
        resource_key="llm_api",
        key_prefix=["team", "llm"],
        owners=["team:ml"],
        tags={"domain": "people"},
        asset_spec_overrides={"results": {"description": "Greetings, one per person."}},
    )

    assert isinstance(component, InferenceBatchComponent)
    assert describe(defs) == describe(factory.defs)
    seen = describe(defs)
    assert set(seen["assets"]) == {
        "team/llm/greetings_input_file",
        "team/llm/greetings_batch",
        "team/llm/greetings_results",
    }
    group, owners, tags, description = seen["assets"]["team/llm/greetings_results"][:4]
    assert (group, owners, tags["domain"]) == ("llm", ["team:ml"], "people")
    assert description == "Greetings, one per person."
    assert seen["jobs"] == {
        f"team__llm__greetings_{job}" for job in ("submit", "collect", "cancel")
    }
    assert seen["sensors"] == {"team__llm__greetings_sensor": 45}
    assert pipeline.spec.limits == factory.spec.limits
    assert pipeline.spec.parse_content is json.loads


def test_results_format_and_location_reach_the_spec():
    attributes = {k: v for k, v in ATTRIBUTES.items() if k not in ("parse_content",)}
    attributes |= {"results_format": "parquet_dataset", "results_location": "s3://b/results"}
    with load(attributes, {"mood.json": json.dumps(SCHEMA)}) as (component, defs, folder):
        spec = component.build_pipeline(folder).spec
    assert (spec.results_format, spec.results_location) == ("parquet_dataset", "s3://b/results")


def test_templates_render_per_row_and_the_schema_file_becomes_the_response_format():
    with load(ATTRIBUTES, {"mood.json": json.dumps(SCHEMA)}) as (component, _, folder):
        requests = component.build_pipeline(folder).spec.requests
    frame = pd.DataFrame({"person_id": ["p1"], "name": ["Ada"], "city": ["London"]})
    body = json.loads(requests.build(frame).lines[0])["body"]

    assert body["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Say hello to Ada from London"},
    ]
    assert body["max_tokens"] == 50
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "greetings", "strict": True, "schema": SCHEMA},
    }


def test_messages_are_templates_over_the_row_and_a_missing_column_is_named():
    attributes = {**ATTRIBUTES, "response_format": SCHEMA, "prompt_template": None}
    attributes["messages"] = [
        {"role": "user", "content": "I am {{ row.name }}."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Greet {{ row.city }}."},
    ]
    with load({k: v for k, v in attributes.items() if v is not None}) as (component, _, folder):
        requests = component.build_pipeline(folder).spec.requests
    frame = pd.DataFrame({"person_id": ["p1"], "name": ["Ada"], "city": ["London"]})
    body = json.loads(requests.build(frame).lines[0])["body"]

    assert [m["content"] for m in body["messages"]] == [
        "Answer in JSON.",
        "I am Ada.",
        "Hello!",
        "Greet London.",
    ]
    with pytest.raises(ValueError, match="has no attribute 'city' .*columns: person_id, name"):
        requests.build(frame.drop(columns="city"))


PEOPLE = """
import dagster as dg
import pandas as pd


@dg.asset(key=["raw", "people"])
def people() -> pd.DataFrame:
    return pd.DataFrame(
        {"person_id": ["p1", "p2", "p3"], "name": ["Ada", "Alan", "Grace"],
         "city": ["London", "Wilmslow", "Arlington"]}
    )
"""


def test_materializes_end_to_end_through_the_local_server(batch_server):
    server = batch_server(api_key="test-key")
    attributes = {
        key: value
        for key, value in ATTRIBUTES.items()
        if key
        not in ("partitions_def", "resource_key", "max_cost_usd", "key_prefix", "tags", "owners")
    }
    attributes["resource"] = {"api_key": "test-key", "base_url": server.base_url}
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "batch"
        folder.mkdir()
        (folder / "mood.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
        (folder / "defs.yaml").write_text(
            yaml.safe_dump({"type": TYPE, "attributes": attributes}), encoding="utf-8"
        )
        (sandbox.defs_folder_path / "people.py").write_text(PEOPLE, encoding="utf-8")
        with sandbox.build_all_defs() as defs, dg.instance_for_test() as instance:
            result = defs.get_implicit_global_asset_job_def().execute_in_process(instance=instance)
            results = result.output_for_node("greetings_results")

    assert result.success
    assert sorted(results["custom_id"]) == ["p1", "p2", "p3"]
    assert set(results["status"]) == {"succeeded"}
    assert set(results["mood"]) <= {"happy", "sad"}
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "greetings_batch_on_time": True,  # on time when submitted
        "greetings_results_complete": True,
        "greetings_results_failure_rate": True,
    }


def test_the_example_project_runs_end_to_end_through_the_local_server(
    project, batch_server, monkeypatch
):
    server = batch_server(api_key="test-key")
    defs_yaml = project / "src" / "yaml_project" / "defs" / "review_insights" / "defs.yaml"
    local = f"api_key: test-key\n    base_url: {server.base_url}"
    defs_yaml.write_text(defs_yaml.read_text().replace("use_local_server: true", local))
    monkeypatch.syspath_prepend(str(project / "src"))
    try:
        defs = dg.load_from_defs_folder(project_root=project)
        with dg.instance_for_test() as instance:
            result = defs.get_implicit_global_asset_job_def().execute_in_process(instance=instance)
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == "yaml_project"]:
            sys.modules.pop(module)
    results = result.output_for_node("review_insights_results")

    assert result.success
    assert len(results) == len(result.output_for_node("reviews"))
    assert set(results["status"]) == {"succeeded"}
    assert list(results["sentiment"].cat.categories) == ["positive", "neutral", "negative"]
    assert all(isinstance(topics, list) for topics in results["topics"])  # Arrow lists


def test_an_env_template_api_key_is_read_when_a_run_starts_not_stored(monkeypatch):
    monkeypatch.setenv("MY_BATCH_KEY", "sk-not-for-config")
    attributes = {**ATTRIBUTES, "response_format": SCHEMA, "resource_key": "inference_batch"}
    attributes["resource"] = {"api_key": "{{ env.MY_BATCH_KEY }}", "provider": "openai"}
    with load(attributes) as (_, defs, _):
        resource = defs.resources["inference_batch"]

    assert isinstance(resource.api_key, dg.EnvVar)
    assert resource.api_key.env_var_name == "MY_BATCH_KEY"
    assert "sk-not-for-config" not in repr(resource)
    assert resource.provider == "openai"


ONE_PROMPT = "give exactly one of prompt_column, prompt_template, messages"
BAD_VALUES = [
    ({"max_attempts": 0}, "attributes.max_attempts", "greater than or equal to 1"),
    ({"parse_content": "yaml"}, "attributes.parse_content", "Input should be 'json'"),
    ({"prompt_column": "name"}, "attributes.prompt_template", ONE_PROMPT),
    ({"prompt_template": None}, "attributes", ONE_PROMPT),
    ({"prompt_template": "Hi {{ row.name }"}, "attributes.prompt_template", "unexpected '}'"),
    ({"response_format": "missing.json"}, "response_format", "no file"),
    ({"body_params": {"response_format": {}}}, "response_format", "give response_format once"),
    ({"partitions_def": {"type": "monthly"}}, "attributes.partitions_def", "Input should be"),
    ({"modle": MODEL}, "modle", "Extra inputs are not permitted"),
    ({"asset_spec_overrides": {"answers": {}}}, "asset_spec_overrides", "unknown asset"),
    ({"schedule": "daily"}, "schedule", "not a valid cron string"),
    ({"on_time": {"warn_fraction": 2}}, "attributes.on_time", "less than or equal to 1"),
]


def test_yaml_schedule_and_on_time_reach_the_factory():
    attributes = {
        **ATTRIBUTES,
        "schedule": {"cron": "0 6 * * *", "timezone": "Europe/Paris", "partition_keys": ["b"]},
        "on_time": {"warn_fraction": 0.5, "error_margin_seconds": 60},
    }
    with load(attributes, {"mood.json": json.dumps(SCHEMA)}) as (component, defs, folder):
        pipeline = component.build_pipeline(folder)
        schedules = {s.name: s for s in defs.schedules or []}
    schedule = schedules["team__llm__greetings_schedule"]
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 6 * * *", "Europe/Paris")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert list(pipeline.spec.schedule.partition_keys) == ["b"]
    assert (pipeline.spec.on_time.warn_fraction, pipeline.spec.on_time.error_margin_seconds) == (
        0.5,
        60,
    )
    with load({**ATTRIBUTES, "on_time": False}, {"mood.json": json.dumps(SCHEMA)}) as loaded:
        assert loaded[0].build_pipeline(loaded[2]).spec.on_time is None


@pytest.mark.parametrize(("change", "field", "reason"), BAD_VALUES)
def test_bad_values_are_refused_naming_the_field_and_the_file(change, field, reason):
    attributes = {k: v for k, v in {**ATTRIBUTES, **change}.items() if v is not None}
    with pytest.raises(Exception) as refused:
        with load(attributes, {"mood.json": json.dumps(SCHEMA)}):
            pass
    message = "\n".join(str(e) for e in iter_causes(refused.value))
    assert field in message and reason in message
    assert "/batch/defs.yaml" in message


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of examples/yaml_project."""
    return Path(shutil.copytree(EXAMPLE, tmp_path / "yaml_project"))


def dg_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`dg ARGS` in `project`, on this interpreter's environment, offline."""
    executable = Path(sys.executable).parent / "dg"
    if not executable.exists():
        pytest.skip("dagster-dg-cli is not installed")
    env = {k: v for k, v in os.environ.items() if k != "INFERENCE_API_KEY"}
    env.update(
        PATH=f"{executable.parent}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=sys.prefix,
        PYTHONPATH=str(project / "src"),
        PYTHONWARNINGS="ignore",
        NO_COLOR="1",
    )
    return subprocess.run(
        [str(executable), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
def test_dg_checks_and_lists_the_example(project):
    checked = dg_cli(project, "check", "defs")
    listed = dg_cli(project, "list", "defs", "--json")

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    assert listed.returncode == 0, listed.stderr
    defs = json.loads(listed.stdout)
    assert {a["asset_key"] for a in defs["assets"]} == {
        "reviews",
        "review_insights_input_file",
        "review_insights_batch",
        "review_insights_results",
    }
    assert {j["name"] for j in defs["jobs"]} == {
        "review_insights_submit",
        "review_insights_collect",
        "review_insights_cancel",
    }
    assert [s["name"] for s in defs["sensors"]] == ["review_insights_sensor"]
    assert {c["name"] for c in defs["asset_checks"]} == {
        "review_insights_batch_on_time",
        "review_insights_results_complete",
        "review_insights_results_failure_rate",
        "review_insights_results_valid_output",  # the example has a response_model
    }


@pytest.mark.slow
def test_dg_scaffolds_a_defs_yaml_that_checks_on_a_new_project(project):
    shutil.rmtree(project / "src" / "yaml_project" / "defs" / "review_insights")
    scaffolded = dg_cli(project, "scaffold", "defs", TYPE, "my_batch")
    checked = dg_cli(project, "check", "defs")

    assert scaffolded.returncode == 0, scaffolded.stdout + scaffolded.stderr
    written = (project / "src" / "yaml_project" / "defs" / "my_batch" / "defs.yaml").read_text()
    assert f"type: {TYPE}" in written and "name: my_batch" in written
    assert "# The prompt: exactly one of prompt_column, prompt_template or messages." in written
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
def test_dg_check_refuses_a_bad_value_naming_the_field_and_the_file(project):
    defs_yaml = project / "src" / "yaml_project" / "defs" / "review_insights" / "defs.yaml"
    lines = defs_yaml.read_text().splitlines()
    line = lines.index("  group_name: reviews") + 1
    lines.insert(line, "  parse_content: yaml")  # the next line
    defs_yaml.write_text("\n".join(lines))
    checked = dg_cli(project, "check", "defs")

    assert checked.returncode != 0
    output = checked.stdout + checked.stderr
    assert f"review_insights/defs.yaml:{line + 1} - attributes.parse_content" in output
    assert "Input should be 'json'" in output


def iter_causes(error: BaseException | None) -> Iterator[BaseException]:
    """The error and the errors it was raised from."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__
