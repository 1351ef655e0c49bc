"""The demo, a backfill and a race under `dagster dev` on a Postgres-backed instance.

`dagster dev` (webserver + daemon) serves `tests/postgres_e2e_defs.py` (the demo and a
partitioned pipeline) on a `DAGSTER_HOME` whose run, event-log and schedule storage are
in Postgres and whose runs are queued (`tests/postgres_fixtures.py`); the default run
launcher starts every run in a process of its own. The runs share the event log, the
local Batch API server, the IO manager's folder and the answer store, which is on an S3
bucket (moto's server), not on local disk. At once:

- the demo: `review_insights_daily` submits, the daemon's sensor collects, and the
  summary follows; the answers are in the results' materialization in the event log;
- a backfill submits twenty partitions at once, and the sensor collects them all;

then two runs submit one partition at the same moment, and end on one batch per shard.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import fsspec
import pytest
from dagster_graphql import DagsterGraphQLClient

from tests.dagster_dev import REPO, start_dagster_dev, stop_group, wait_for
from tests.dagster_harness import Harness
from tests.postgres_e2e_defs import (
    BACKFILL,
    PROMPTS_JOB,
    RACE,
    RACE_JOB,
    SUBMIT_JOB,
    partitions,
)
from tests.test_graph_idempotency import (
    RACE_ROWS,
    assert_one_live_batch_per_shard_and_both_runs_agree,
)

# about 45 runs, each a Python process loading the code location: minutes on a busy machine;
# runs are launched by parallel dequeue threads (postgres_fixtures), else one at a time
pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(1200),
]
RUNS_SECONDS = 900

LOCATION_NAME = "tests.postgres_e2e_defs"
LOCATION = ("-d", str(REPO), "-m", LOCATION_NAME)
REVIEWS = 60
BACKFILL_MUTATION = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
ENDED = ("COMPLETED", "COMPLETED_SUCCESS")
STARTED = re.compile(r"Started process for run \(pid: (\d+)\)")


def launch_backfill(dev, partition_names: list[str]) -> str:
    params = {
        "selector": {
            "partitionSetName": f"{SUBMIT_JOB}_partition_set",
            "repositorySelector": {
                "repositoryLocationName": LOCATION_NAME,
                "repositoryName": "__repository__",
            },
        },
        "partitionNames": partition_names,
    }
    launched = dev.graphql(BACKFILL_MUTATION, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def backfill_ended(instance: dg.DagsterInstance, backfill_id: str) -> bool:
    backfill = instance.get_backfill(backfill_id)
    return backfill is not None and backfill.status.value in ENDED  # no public enum


def results_done(harness: Harness, names: list[str]) -> bool:
    return all(harness.results_done(p) for p in names)


UNFINISHED = dg.RunsFilter(
    statuses=[
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
)


def runs_settled(instance: dg.DagsterInstance) -> bool:
    """No run queued or running: stopping dagster dev now interrupts nothing (a results
    run still executing its checks after the materialization would end FAILURE)."""
    return not instance.get_runs(filters=UNFINISHED, limit=1)


def test_demo_backfill_and_race_on_postgres_each_run_in_its_own_process(
    postgres_home: Path, batch_server, s3_bucket: str, tmp_path: Path
) -> None:
    server = batch_server(validating_seconds=0.2, finalizing_seconds=0.2)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env.update(REVIEW_INSIGHTS_SENSOR_INTERVAL="2", POSTGRES_E2E_BARRIER=str(barrier))
    env["INFERENCE_BATCH_ANSWER_STORE"] = f"s3://{s3_bucket}/answers"  # AWS_* from s3_bucket
    # a run's launch waits for its process to load the code: on a loaded 2-CPU machine
    # (eight at once) that took over Dagster's default 60 s, and the daemon failed the run
    env["DAGSTER_GRPC_TIMEOUT_SECONDS"] = "300"
    with dg.DagsterInstance.from_config(str(postgres_home)) as instance:
        instance.get_runs(limit=1)  # the schema, made once before dagster dev's processes
        env["INFERENCE_BASE_URL"] = server.base_url
        harness = Harness(instance, server.base_url, rows=RACE_ROWS, partitions_def=partitions)
        started = time.monotonic()
        process, dev = start_dagster_dev(postgres_home, env, LOCATION)
        print(f"dagster dev up after {time.monotonic() - started:.0f} s")
        try:
            client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
            # the demo and the backfill at once, with the race's prompts (made once)
            prompts_run = client.submit_job_execution(PROMPTS_JOB, tags={"dagster/partition": RACE})
            client.submit_job_execution("review_insights_daily")
            backfill_id = launch_backfill(dev, BACKFILL)
            wait_for(
                lambda: dev.latest("review_sentiment_summary") is not None,
                "the demo's review_sentiment_summary",
                process,
                postgres_home,
                timeout=RUNS_SECONDS,
            )
            print(f"demo done after {time.monotonic() - started:.0f} s")
            wait_for(
                lambda: results_done(harness, BACKFILL) and backfill_ended(instance, backfill_id),
                "the backfill to end and the sensor to collect its twenty partitions",
                process,
                postgres_home,
                timeout=RUNS_SECONDS,
            )
            print(f"backfill collected after {time.monotonic() - started:.0f} s")
            # then the race, on an empty queue: both racers start at once
            assert client.get_run_status(prompts_run) == dg.DagsterRunStatus.SUCCESS
            racers = [
                client.submit_job_execution(RACE_JOB, tags={"dagster/partition": RACE})
                for _ in range(2)
            ]
            wait_for(
                lambda: (
                    harness.results_done(RACE)
                    and all(client.get_run_status(r) == dg.DagsterRunStatus.SUCCESS for r in racers)
                    and runs_settled(instance)
                ),
                "both racing runs, the race partition's results and every run to finish",
                process,
                postgres_home,
                timeout=RUNS_SECONDS,
            )
            print(f"race collected after {time.monotonic() - started:.0f} s")
        finally:
            stop_group(process)

        # the demo: submitted, collected by the sensor, summarized; answers in the event log
        (results,) = instance.fetch_materializations(
            dg.AssetKey("review_insights_results"), limit=10
        ).records
        metadata = results.asset_materialization.metadata
        assert metadata["inference_batch/succeeded"].value == REVIEWS
        tables = [v for v in metadata.values() if isinstance(v, dg.TableMetadataValue)]
        answers = [r.data for table in tables for r in table.records]
        assert answers and all(a.get("status") == "succeeded" for a in answers), metadata.keys()
        assert any(a.get("sentiment") or a.get("content") for a in answers), answers[:2]
        summary = instance.fetch_materializations(
            dg.AssetKey("review_sentiment_summary"), limit=1
        ).records[0]
        assert summary.asset_materialization.metadata["reviews_answered"].value == REVIEWS

        # the backfill: every partition submitted once and collected once, every row answered
        assert backfill_ended(instance, backfill_id)
        for partition in BACKFILL:
            assert len(harness.materializations(harness.pipeline.batch_key, partition)) == 1
            (collected,) = harness.materializations(harness.pipeline.results_key, partition)
            assert collected.metadata["inference_batch/succeeded"].value == RACE_ROWS

        # the race: both runs sent the rows (none was answered from the answer store), and
        # one live batch per shard is left, which both runs record
        uploads = harness.materializations(harness.pipeline.input_file_key, RACE)
        assert [u.metadata["inference_batch/rows_reused"].value for u in uploads] == [0, 0]
        duplicates = assert_one_live_batch_per_shard_and_both_runs_agree(
            server, postgres_home, server.base_url, [RACE]
        )
        print(f"race: {duplicates} duplicates made and cancelled")
        frame = harness.results_frame(RACE)
        assert Counter(frame["status"]) == {"succeeded": RACE_ROWS}

        # the answers the runs stored are in the bucket, none under the home
        assert fsspec.filesystem("s3").find(f"{s3_bucket}/answers")
        assert not (postgres_home / "inference_batch").exists()

        # every run queued, then launched in a process of its own
        runs = instance.get_runs()
        assert len(runs) >= 1 + len(BACKFILL) * 2 + 1 + 2 + 1  # + sensor and automation runs
        pids = []
        # a failed results run is requested again by the sensor (the design's retry): each
        # partition's collect must end in a success; every other run must succeed. (The
        # failed collect two CI runs saw was this test stopping dagster dev while the
        # sensor's results run still ran its checks: it now waits for every run to end.)
        failed = [r for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
        collected = {
            (r.job_name, r.tags.get("dagster/partition"))
            for r in runs
            if r.status == dg.DagsterRunStatus.SUCCESS
        }
        for run in failed:
            assert run.job_name.endswith("_collect"), (run.job_name, run.status)
            assert (run.job_name, run.tags.get("dagster/partition")) in collected, run.run_id
        print(f"{len(failed)} results run(s) failed and were requested again")
        for run in runs:
            logs = instance.all_logs(run.run_id)
            types = {e.dagster_event.event_type for e in logs if e.dagster_event}
            assert dg.DagsterEventType.RUN_ENQUEUED in types, run.job_name
            started = [STARTED.search(e.message or "") for e in logs]
            pids += [int(m.group(1)) for m in started if m]
        assert len(pids) == len(runs) == len(set(pids)), "runs shared a process"
        assert process.pid not in pids
