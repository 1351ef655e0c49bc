"""Every snippet of `docs/production.md` runs: the Postgres `dagster.yaml` opens an
instance on the test suite's Postgres server, and the Python blocks load as Definitions."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.postgres_server import SUPERUSER
from tests.test_readme import fenced_blocks

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "production.md"


def test_every_snippet_is_covered_here():
    assert len(fenced_blocks(GUIDE, "yaml")) == 1
    assert len(fenced_blocks(GUIDE, "python")) == 2


@pytest.mark.postgres
def test_postgres_dagster_yaml_opens_an_instance(postgres_server, tmp_path, monkeypatch):
    (config,) = fenced_blocks(GUIDE, "yaml")
    (tmp_path / "dagster.yaml").write_text(config)
    for name, value in {
        "DAGSTER_PG_USERNAME": SUPERUSER,
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres_server.port),
        "DAGSTER_PG_DB": postgres_server.create_database(),
    }.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_runs() == []


def run_block(block: str) -> dict:
    namespace: dict = {}
    exec(compile(block, str(GUIDE), "exec"), namespace)
    return namespace


def test_resource_snippet_reads_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("INFERENCE_API_KEY", "secret-from-the-manager")
    resource = run_block(fenced_blocks(GUIDE, "python")[0])["inference_batch"]
    assert resource.concurrency == 4
    assert resource.upload_interval_seconds == 2.0
    assert resource.answer_store == "s3://my-bucket/inference-batch/answers"
    # the key is an EnvVar until a run resolves it: not in the resource's config
    assert "secret-from-the-manager" not in repr(resource)


def test_monitoring_snippet_loads_with_the_demo():
    import definitions as demo

    namespace = run_block(fenced_blocks(GUIDE, "python")[1])
    defs = dg.Definitions.merge(
        demo.defs,
        dg.Definitions(
            asset_checks=namespace["results_fresh"],
            sensors=[namespace["freshness_sensor"], namespace["alert_on_failed_runs"]],
        ),
    )
    dg.Definitions.validate_loadable(defs)
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert any("freshness" in name for name in checks), checks
