"""Asset spec customisation on the factory (issue 12, item 3): key prefix, owners, tags and
per-asset overrides; the jobs, the sensor and the checks follow the prefix, and two
pipelines of one name under different prefixes load side by side."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets


@dg.asset
def prompts() -> pd.DataFrame:
    return pd.DataFrame({"custom_id": ["a", "b"], "prompt": ["Hi", "Yo"]})


def pipeline(**options):
    return build_inference_batch_assets(
        "llm", upstream=prompts, prompt_column="prompt", model="m", **options
    )


def test_prefix_owners_tags_and_overrides_reach_every_definition():
    built = pipeline(
        key_prefix=["team", "ml"],
        owners=["team:ml"],
        tags={"domain": "reviews"},
        asset_spec_overrides={"results": {"description": "Answers.", "metadata": {"sla": "1d"}}},
    )
    keys = [a.key.to_user_string() for a in built.assets]
    assert keys == ["team/ml/llm_input_file", "team/ml/llm_batch", "team/ml/llm_results"]
    for asset in built.assets:
        spec = next(iter(asset.specs))
        assert spec.owners == ["team:ml"] and spec.tags.get("domain") == "reviews"
    results = next(iter(built.assets[2].specs))
    assert results.description == "Answers." and results.metadata["sla"] == "1d"
    assert {j.name for j in built.jobs} == {
        "team__ml__llm_submit",
        "team__ml__llm_collect",
        "team__ml__llm_cancel",
    }
    assert built.sensor.name == "team__ml__llm_sensor"
    check_keys = {key for check in built.asset_checks for key in check.check_keys}
    assert {k.asset_key.to_user_string() for k in check_keys} == {"team/ml/llm_results"}


def test_two_pipelines_of_one_name_under_two_prefixes_load_together():
    first, second = pipeline(key_prefix="a"), pipeline(key_prefix="b")
    defs = dg.Definitions.merge(
        dg.Definitions(assets=[prompts]),
        first.defs,
        second.defs,
        dg.Definitions(
            resources={"inference_batch": InferenceBatchResource(base_url="http://127.0.0.1:1/v1")}
        ),
    )
    assert len(defs.resolve_all_job_defs()) >= 6
    assert defs.resolve_sensor_def("a__llm_sensor") and defs.resolve_sensor_def("b__llm_sensor")


def test_an_override_of_an_unknown_asset_or_argument_is_refused():
    with pytest.raises(ValueError, match="unknown asset 'output'"):
        pipeline(asset_spec_overrides={"output": {"description": "x"}})
    with pytest.raises(ValueError, match=r"cannot set \['key'\]"):
        pipeline(asset_spec_overrides={"batch": {"key": "elsewhere"}})
