"""``bench/run.py``: a quick run writes a valid results.json; the READMEs show the committed one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "run.py"


def bench_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_quick_run_of_one_module_writes_results_json(tmp_path):
    output = tmp_path / "results.json"
    done = bench_run("--quick", "--only", "bench_requests", "--output", str(output))
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert report["quick"] is True
    assert report["crashed"] == []
    assert (
        report["command"] == f"python bench/run.py --quick --only bench_requests --output {output}"
    )
    assert "cpus" in report["machine"]
    (row,) = report["rows"]
    assert row["module"] == "bench_requests"
    assert row["detail"]["rows"] == 50_000
    assert row["ratio"] > 0 and isinstance(row["pass"], bool)
    assert row["benchmark"] in done.stdout and str(output) in done.stdout


def test_readmes_show_the_committed_full_run():
    done = bench_run("--markdown")
    assert done.returncode == 0, done.stderr
    table = done.stdout.strip()
    assert table.startswith("Full run, ")
    for readme in (ROOT / "bench" / "README.md", ROOT / "README.md"):
        assert table in readme.read_text(), f"{readme}: run `python bench/run.py --write-readmes`"


def test_run_py_doctests_pass():
    done = subprocess.run(
        [sys.executable, "-m", "doctest", str(RUN)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
