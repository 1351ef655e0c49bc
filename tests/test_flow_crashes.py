"""Crashes and restarts around the Dagster flow: nothing paid twice, nothing lost.

- The submitting process is SIGKILLed (by `tests/crash_submit.py`, a subprocess over a
  persistent `DAGSTER_HOME`) right after the upload, right after the batches were
  created, or after the step computed its materialization but before the event log
  recorded it. The user then re-runs the submission and the sensor collects: one input
  file and one batch per shard at the provider, every row answered once.
- The results run is SIGKILLed after it downloaded and joined the answers, before
  `llm_results` was recorded; once the run is marked failed (what run monitoring does
  for a run whose worker died) the sensor requests it again and the results come in.
- A sensor tick is lost after it resubmitted an expired remainder (the daemon died before
  recording the tick's events and cursor): the next tick reuses that resubmission.
- The Batch API server is SIGKILLed with batches in flight and restarted on its port and
  data dir: the sensor's ticks during the outage say so in their skip reason instead of
  failing, and after the restart the results come in complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData

from dagster_inference_batch.local_server import LocalBatchServer
from tests.dagster_harness import Harness
from tests.loopback_proxy import LoopbackProxy
from tests.provider_state import (
    assert_every_row_once,
    assert_one_batch_per_shard,
    provider_batches,
    provider_input_files,
)
from tests.server_fixtures import sdk_client, wait_final

REPO = Path(__file__).resolve().parents[1]
CRASH_SCRIPT = REPO / "tests" / "crash_submit.py"
ROWS = 10
PER_BATCH = 5  # two shards
SHARDS = 2
ROW_IDS = [f"row-{i}" for i in range(ROWS)]


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def crash_submission(home: Path, base_url: str, point: str) -> subprocess.CompletedProcess:
    """Run the submission in a subprocess that SIGKILLs itself at `point`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env["DAGSTER_HOME"] = str(home)
    command = [
        sys.executable,
        str(CRASH_SCRIPT),
        "--home",
        str(home),
        "--base-url",
        base_url,
        "--point",
        point,
        "--rows",
        str(ROWS),
        "--max-requests-per-batch",
        str(PER_BATCH),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, (
        f"the submission was to die at {point!r}; exit {done.returncode}\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture
def provider(batch_server, request) -> Iterator[tuple[LocalBatchServer, str]]:
    """(server, base URL the flow uses): the local server itself, or with `no-listing` a
    loopback proxy in front of it answering 404 to `GET /batches` and `GET /files`, so
    only the Dagster event log can tell a re-run which batches exist."""
    server = batch_server(api_key="test-key")
    if request.param == "listing":
        yield server, server.base_url
        return
    proxy = LoopbackProxy(server.base_url, refuse=[("GET", "/v1/batches"), ("GET", "/v1/files")])
    yield server, proxy.base_url
    proxy.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, provider",
    [
        ("upload", "listing"),
        ("create", "listing"),
        ("record", "listing"),
        ("create", "no-listing"),
    ],
    indirect=["provider"],
)
def test_submission_killed_then_rerun_pays_once_and_collects_everything(
    point, provider, dagster_home
):
    server, base_url = provider
    crash_submission(dagster_home, base_url, point)

    # what the crash left behind: files (and batches) at the provider, none recorded
    assert len(provider_input_files(server)) == SHARDS
    assert len(provider_batches(server)) == (0 if point == "upload" else SHARDS)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        harness = Harness(
            instance,
            base_url,
            rows=ROWS,
            resource_options={"max_requests_per_batch": PER_BATCH, "backoff_seconds": 0.05},
        )
        assert not harness.materializations(harness.pipeline.batch_key)
        recorded_uploads = harness.materializations(harness.pipeline.input_file_key)
        assert len(recorded_uploads) == (0 if point == "upload" else 1)

        # the user runs the submission again; the daemon's sensor does the rest
        assert harness.submit().success
        harness.tick_until(harness.results_done, timeout=60)

        # without a file listing the re-run cannot find its uploads: files are counted
        # only where the provider lists them
        batches = assert_one_batch_per_shard(server, SHARDS, files=base_url == server.base_url)
        recorded = harness.materializations(harness.pipeline.batch_key)
        assert len(recorded) == 1
        job = recorded[0].metadata["inference_batch/job"].value
        assert sorted(s["batch_id"] for s in job["shards"]) == sorted(b.id for b in batches)
        assert len(harness.run_keys) == 1
    assert_every_row_once(harness.results_frame(), ROW_IDS)


@pytest.mark.slow
def test_results_run_killed_then_retried_collects_everything_once(dagster_home, batch_server):
    server = batch_server(api_key="test-key")
    crash_submission(dagster_home, server.base_url, "collect")

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (dead,) = [run for run in instance.get_runs() if run.job_name == "llm_collect"]
        assert dead.status == dg.DagsterRunStatus.STARTED  # its worker is gone
        harness = Harness(
            instance,
            server.base_url,
            rows=ROWS,
            resource_options={"max_requests_per_batch": PER_BATCH},
        )
        assert not harness.results_done()
        # a fresh daemon (no cursor) finds the run already requested for this state
        waiting = harness.tick()
        assert not waiting.run_requests
        assert "waiting for a requested results run" in (waiting.skip_message or "")

        instance.report_run_failed(dead)  # what run monitoring does for a dead worker
        harness.tick_until(harness.results_done, timeout=60)

        assert [key.rsplit(":", 1)[1] for key in harness.run_keys] == ["retry1"]
        assert harness.collect_runs[0].success
        assert_one_batch_per_shard(server, SHARDS)
        assert len(harness.materializations(harness.pipeline.batch_key)) == 1
        assert len(harness.materializations(harness.pipeline.results_key)) == 1
        assert_every_row_once(harness.results_frame(), ROW_IDS)


def lost_tick(harness: Harness) -> SensorExecutionData:
    """Evaluate the sensor and drop what it returned, as when the daemon dies after the
    evaluation: whatever it did at the provider stands, its events and cursor are lost."""
    context = dg.build_sensor_context(
        instance=harness.instance,
        cursor=harness.cursor,
        resources=harness.resources,
        definitions=harness.defs,
    )
    with dg.partition_loading_context(dynamic_partitions_store=harness.instance):
        return harness.pipeline.sensor.evaluate_tick(context)


@pytest.mark.slow
def test_sensor_tick_lost_after_resubmitting_does_not_pay_twice(batch_server):
    # two shards of 10; each batch expires once 8 are answered, so attempt 2 holds the
    # 4 left over, in one batch, and completes
    server = batch_server(api_key="test-key", expire_after_requests=8)
    rows = 20
    with dg.instance_for_test() as instance:
        harness = Harness(
            instance, server.base_url, rows=rows, resource_options={"max_requests_per_batch": 10}
        )
        assert harness.submit().success
        client = sdk_client(server, "test-key")
        first = provider_batches(server)
        assert {wait_final(client, b.id).status for b in first} == {"expired"}

        lost = lost_tick(harness)
        assert any(isinstance(e, dg.AssetMaterialization) for e in lost.asset_events)
        assert len(provider_batches(server)) == 3  # the resubmission exists at the provider
        harness.tick_until(harness.results_done, timeout=60)

        batches = assert_one_batch_per_shard(server, 3)  # 2 shards of attempt 1, 1 of attempt 2
        attempts = sorted((b.metadata or {}).get("attempt") for b in batches)
        assert attempts == ["1", "1", "2"]
        assert len(harness.materializations(harness.pipeline.batch_key)) == 2
        assert len(harness.run_keys) == 1
        frame = harness.results_frame()
        assert_every_row_once(frame, [f"row-{i}" for i in range(rows)])
        assert sorted(frame["attempt"].value_counts().tolist()) == [4, 16]


def progress(harness: Harness) -> list[tuple[str, int, int]]:
    """(status, completed, total) of every progress observation of the batch so far (the
    sensor's; other observations of the asset, without a status, are left out)."""
    return [
        (
            o.metadata["inference_batch/status"].value,
            o.metadata["inference_batch/completed"].value,
            o.metadata["inference_batch/total"].value,
        )
        for o in harness.observations(harness.pipeline.batch_key)
        if "inference_batch/status" in o.metadata
    ]


@pytest.mark.slow
def test_server_killed_and_restarted_with_batches_in_flight(batch_server):
    rows = 40
    server = batch_server(api_key="test-key", requests_per_second=4)
    with dg.instance_for_test() as instance:
        harness = Harness(
            instance,
            server.base_url,
            rows=rows,
            # fail fast while the server is down: the next tick tries again
            resource_options={
                "max_requests_per_batch": rows // 2,
                "max_retries": 2,
                "backoff_seconds": 0.05,
            },
        )
        assert harness.submit().success
        harness.tick_until(lambda: any(done > 0 for _, done, _ in progress(harness)))
        status, done, total = progress(harness)[-1]
        assert status == "in_progress" and 0 < done < total

        server.kill()
        outage = [harness.tick() for _ in range(2)]
        for tick in outage:
            assert not tick.run_requests
            assert "1 could not be refreshed" in (tick.skip_message or ""), tick.skip_message
        assert not harness.results_done()

        server.start()
        harness.tick_until(harness.results_done, timeout=60)

        batches = assert_one_batch_per_shard(server, 2)
        assert {b.status for b in batches} == {"completed"}
        assert len(harness.materializations(harness.pipeline.batch_key)) == 1  # no resubmission
        assert len(harness.run_keys) == 1 and harness.collect_runs[0].success
        assert_every_row_once(harness.results_frame(), [f"row-{i}" for i in range(rows)])
