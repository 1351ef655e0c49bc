"""Uploads paced to the provider, through Dagster (issue 10).

Five partitions submitted at once, each in its own process over one persistent instance,
against the local server's `inference.net` profile with its one-file-a-minute limit
scaled down to `INTERVAL` seconds (`--upload-interval`, `upload_interval_seconds`): every
run succeeds, the five uploads reach the server `INTERVAL` apart, some step logs its wait
for the upload limit with its place in the upload queue, and the sensor then collects
every row of every partition.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.paced_submit import pacing_harness
from tests.processes import run_together
from tests.server_fixtures import sdk_client

REPO = Path(__file__).resolve().parents[1]
SUBMIT_SCRIPT = REPO / "tests" / "paced_submit.py"
API_KEY = "test-key"
INTERVAL = 2.0
CREATED_AT_SLACK = 1.0  # `created_at` is whole seconds
PARTITIONS = [f"p{i}" for i in range(5)]


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)  # create the storage once, not in five processes at once
    return home


def submit_all_at_once(home: Path, base_url: str, barrier: Path) -> dict[str, str]:
    """One `tests/paced_submit.py` per partition, all released together; returns each
    partition's run id, after asserting every process succeeded."""
    barrier.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env["DAGSTER_HOME"] = str(home)
    command = [
        sys.executable,
        str(SUBMIT_SCRIPT),
        *("--home", str(home), "--base-url", base_url, "--partitions", ",".join(PARTITIONS)),
        *("--barrier", str(barrier), "--upload-interval", str(INTERVAL)),
    ]
    finished = run_together(
        {p: [*command, "--partition", p] for p in PARTITIONS},
        env,
        barrier.parent / "submitters",
        timeout=120,
    )
    run_ids, failures = {}, {}
    for partition, process in finished.items():
        if process.returncode != 0:
            failures[partition] = process.describe(partition)
            continue
        line = process.stdout.strip().splitlines()[-1]
        assert line.split()[:2] == [partition, "ok"], line
        run_ids[partition] = line.split()[2]
    assert not failures, failures
    return run_ids


@pytest.mark.slow
def test_five_partitions_at_once_upload_paced_to_the_profile_and_all_reach_results(
    dagster_home, batch_server, tmp_path
):
    server = batch_server(
        api_key=API_KEY, profile="inference.net", upload_interval=INTERVAL, model=["test-model"]
    )
    started = time.monotonic()
    run_ids = submit_all_at_once(dagster_home, server.base_url, tmp_path / "barrier")

    uploads = sorted(
        f.created_at for f in sdk_client(server, API_KEY).files.list() if f.purpose == "batch"
    )
    assert len(uploads) == len(PARTITIONS), uploads
    gaps = [later - earlier for earlier, later in zip(uploads[:-1], uploads[1:], strict=True)]
    assert all(gap >= INTERVAL - CREATED_AT_SLACK for gap in gaps), uploads
    assert uploads[-1] - uploads[0] >= (len(PARTITIONS) - 1) * INTERVAL - CREATED_AT_SLACK

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        logs = {p: instance.all_logs(run_id) for p, run_id in run_ids.items()}
        failed_steps = [
            (p, e.step_key)
            for p, entries in logs.items()
            for e in entries
            if e.is_dagster_event and e.dagster_event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        assert not failed_steps
        waits = [
            e.user_message
            for entries in logs.values()
            for e in entries
            if "for the provider's upload limit" in e.user_message
        ]
        assert waits and all(w.startswith("waiting") for w in waits), waits
        assert any("in the upload queue" in w for w in waits), waits
        # the queue, not the provider's 429s, spaced them: at most a straggler's retry
        assert sum("429" in w for w in waits) <= 1, waits
        submitted = time.monotonic() - started

        harness = pacing_harness(instance, server.base_url, PARTITIONS, INTERVAL)
        harness.tick_until(lambda: all(harness.results_done(p) for p in PARTITIONS))
        for partition in PARTITIONS:
            frame = harness.results_frame(partition)
            assert len(frame) == 2 and (frame["status"] == "succeeded").all(), frame
    print(
        f"uploads at {uploads}; {len(waits)} waits logged: {waits}; submitted in "
        f"{submitted:.1f}s, results in {time.monotonic() - started:.1f}s"
    )
