"""`dagster dev` stopped (SIGTERM to its process group) while batches are in flight and
started again on the same `DAGSTER_HOME`: the sensor carries on where it was and the
results come in once, complete, with one batch per shard at the provider.

The code location is `tests/dagster_dev_restart_defs.py` (the harness pipeline in two
shards); the local server answers a request every two seconds per batch, so the batches
are still running when `dagster dev` goes down. Helpers come from
`tests/test_e2e_dagster_dev.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient

from dagster_inference_batch.local_server import LocalBatchServer
from tests.dagster_dev import REPO, DagsterDev, start_dagster_dev, wait_for
from tests.dagster_harness import NAME, Harness
from tests.provider_state import (
    assert_every_row_once,
    assert_one_batch_per_shard,
    provider_batches,
)
from tests.test_e2e_dagster_dev import HISTORY, entries

SUBMIT_JOB = f"{NAME}_daily"  # as tests/dagster_dev_restart_defs.py names it
ROWS = 20
PER_BATCH = 10
SHARDS = 2
API_KEY = "test-key"
FINAL = ("completed", "failed", "expired", "cancelled")
LOCATION = ("-d", str(REPO), "-m", "tests.dagster_dev_restart_defs")


# dagster dev stops its daemon and code server in turn after SIGTERM; late in the full
# suite (a 1.13.27 install, about 400 tests in) that took longer than 30 s twice, while
# the test alone stopped well within it. A clean stop, not its speed, is what counts here.
STOP_TIMEOUT_SECONDS = 90.0


def terminate_group(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """SIGTERM the process group; SIGKILL what is left after `timeout`. True if it all
    ended on SIGTERM."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
        clean = True
    except subprocess.TimeoutExpired:
        clean = False
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the daemon's and code server's children
    except ProcessLookupError:
        pass
    process.wait()
    return clean


def batch_history(dev: DagsterDev) -> tuple[list[dict], list[dict]]:
    """(materializations, observations) of `llm_batch`, metadata by label."""
    data = dev.graphql(HISTORY, key={"path": [f"{NAME}_batch"]})["assetOrError"]
    return (
        [entries(m) for m in data.get("assetMaterializations") or []],
        [entries(o) for o in data.get("assetObservations") or []],
    )


@pytest.mark.slow
def test_dagster_dev_restarted_while_batches_run(tmp_path: Path) -> None:
    server = LocalBatchServer(
        tmp_path / "server",
        api_key=API_KEY,
        validating_seconds=0.2,
        finalizing_seconds=0.2,
        requests_per_second=0.5,  # per batch: 10 requests each, about 20 s
    )
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_queue:\n  dequeue_interval_seconds: 1\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env.update(
        DAGSTER_HOME=str(home),
        RESTART_TEST_API_KEY=API_KEY,
        RESTART_TEST_ROWS=str(ROWS),
        RESTART_TEST_PER_BATCH=str(PER_BATCH),
    )
    with server:
        env["RESTART_TEST_BASE_URL"] = server.base_url
        process, dev = start_dagster_dev(home, env, LOCATION)
        try:
            client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
            run_id = client.submit_job_execution(SUBMIT_JOB)
            wait_for(
                lambda: client.get_run_status(run_id) == dg.DagsterRunStatus.SUCCESS,
                f"{SUBMIT_JOB} to succeed",
                process,
                home,
            )
            # the daemon's sensor is watching the batches
            wait_for(
                lambda: any(
                    o.get("inference_batch/status") == "in_progress" for o in batch_history(dev)[1]
                ),
                "the sensor to see the batches in progress",
                process,
                home,
            )
            running = [b for b in provider_batches(server) if b.status not in FINAL]
            assert running, "the batches finished before dagster dev was stopped"
        finally:
            stopped_cleanly = terminate_group(process)
        assert stopped_cleanly, (
            f"dagster dev did not stop within {STOP_TIMEOUT_SECONDS:.0f} s of SIGTERM"
        )

        process, dev = start_dagster_dev(home, env, LOCATION)
        try:
            wait_for(
                lambda: dev.latest(f"{NAME}_results") is not None,
                f"{NAME}_results after the restart",
                process,
                home,
            )
            results = dev.latest(f"{NAME}_results")
            assert results is not None
            assert results["metadata"]["dagster/row_count"] == ROWS
            assert results["metadata"]["inference_batch/succeeded"] == ROWS
            materializations, observations = batch_history(dev)
            assert len(materializations) == 1  # no resubmission
            assert "completed" in {o.get("inference_batch/status") for o in observations}
        finally:
            terminate_group(process)

        batches = assert_one_batch_per_shard(server, SHARDS, api_key=API_KEY)
        assert {b.status for b in batches} == {"completed"}

    with dg.DagsterInstance.from_config(str(home)) as instance:
        harness = Harness(instance, "http://127.0.0.1:1/v1", rows=ROWS)  # loads; calls nothing
        assert len(harness.materializations(harness.pipeline.results_key)) == 1
        collect_runs = instance.get_runs(
            filters=dg.RunsFilter(tags={"dagster/sensor_name": f"{NAME}_sensor"})
        )
        assert len(collect_runs) == 1, [(r.run_id, r.status) for r in collect_runs]
        assert_every_row_once(harness.results_frame(), [f"row-{i}" for i in range(ROWS)])
