"""The README's Python example runs as written against the local server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def fenced_blocks(document: Path = README, language: str = "python") -> list[str]:
    """The code blocks fenced as `language` in `document`, in order."""
    return re.findall(rf"```{language}\n(.*?)```", document.read_text(), flags=re.S)


def python_blocks() -> list[str]:
    return fenced_blocks(README, "python")


def test_use_it_without_dagster_example_runs(tmp_path, monkeypatch):
    (example,) = [block for block in python_blocks() if "LocalBatchServer(" in block]
    script = tmp_path / "example.py"
    script.write_text(example)
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    ran = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    rows = [line for line in ran.stdout.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert len(rows) == 3
    assert all("succeeded" in row for row in rows)


def test_dagster_example_loads():
    import dagster as dg

    (example,) = [b for b in python_blocks() if '"ticket_triage"' in b]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec", dont_inherit=True), namespace)
    defs = namespace["defs"]
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"ticket_triage_input_file", "ticket_triage_batch", "ticket_triage_results"} <= keys


def test_scheduling_example_adds_a_partition_aware_schedule():
    import dagster as dg

    (example,) = [b for b in python_blocks() if "schedule=" in b and "daily =" in b]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    schedule = namespace["daily"].schedule
    assert schedule.name == "review_insights_schedule"
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def project_snippet() -> dict:
    """The README's project snippet, run as a module would be (its names)."""
    (example,) = [b for b in python_blocks() if '"ticket_triage"' in b]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec", dont_inherit=True), namespace)
    return namespace


def materialize_everything(namespace: dict, partition: str) -> dict:
    """Materialize the snippet's whole graph for one partition, as "Materialize all"
    does; returns the results' materialization metadata and frame."""
    import dagster as dg

    triage = namespace["triage"]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [namespace["tickets"], *triage.assets, *triage.asset_checks],
            partition_key=partition,
            instance=instance,
            resources={"inference_batch": namespace["inference_batch"]},
        )
        assert result.success
        (materialization,) = result.asset_materializations_for_node("ticket_triage_results")
        frame = result.output_for_node("ticket_triage_results")
        checks = result.get_asset_check_evaluations()
    return {"metadata": materialization.metadata, "frame": frame, "checks": checks}


def test_the_project_snippet_runs_without_a_key_then_with_one(
    local_state_dir, monkeypatch, shared_batch_server
):
    """The same snippet: with no key on the local server (saying so), with a key on the
    provider the key is for (here a local server standing in for it)."""
    without = materialize_everything(project_snippet(), "2026-11-02")
    assert without["metadata"]["inference_batch/provider"].value == "local (synthetic answers)"
    assert list(without["frame"]["status"]) == ["succeeded", "succeeded"]
    assert list(without["frame"]["ticket_id"]) == ["2026-11-02-1", "2026-11-02-2"]
    assert all(check.passed for check in without["checks"])

    monkeypatch.setenv("INFERENCE_API_KEY", "test-key")
    monkeypatch.setenv("INFERENCE_BASE_URL", shared_batch_server.base_url)
    with_key = materialize_everything(project_snippet(), "2026-11-03")
    provider = with_key["metadata"]["inference_batch/provider"].value
    assert provider == shared_batch_server.base_url
    assert list(with_key["frame"]["status"]) == ["succeeded", "succeeded"]
