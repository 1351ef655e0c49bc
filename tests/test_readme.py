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
    exec(compile(example, "README.md", "exec"), namespace)
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
