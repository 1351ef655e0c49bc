"""Exactly one paid batch per job, from every path through the graph.

- Two submissions of the same partition at the same moment (a double click, two run
  workers, a backfill overlapping a schedule), as two processes over one persistent
  instance and one server: one live batch per shard, and both runs record it. With a
  batch listing the oldest listed batch wins; without one, the first in the event log's
  ledger.
- After a backfill of 200 partitions, re-running the first creates nothing although the
  listing scan could not reach its batches, and a new partition's submission needs no
  listing scan: the ledger's intent records say its keys were never tried.
- A new submission of a partition with other rows cancels the job it supersedes.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_inference_batch import client as client_module
from dagster_inference_batch.ledger import ProcessLedger
from tests.dagster_harness import Harness
from tests.loopback_proxy import LoopbackProxy
from tests.processes import run_together
from tests.provider_state import provider_batches
from tests.server_fixtures import jsonl, request_line, sdk_client, wait_final

REPO = Path(__file__).resolve().parents[1]
RACE_SCRIPT = REPO / "tests" / "race_submit.py"
API_KEY = "test-key"
STOPPED = ("cancelling", "cancelled")
SUPERSEDED_KEY = "inference_batch/superseded"


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


# ------------------------------------------------------------------------- races

RACE_ROWS = 4
RACE_PER_BATCH = 2  # two shards per job


def race(home: Path, base_url: str, partitions: list[str], barrier: Path) -> None:
    """Two processes submitting `partitions` in step (see `tests/race_submit.py`)."""
    barrier.mkdir()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)  # create the storage once, not in both racers at once
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env["DAGSTER_HOME"] = str(home)
    command = [
        sys.executable,
        str(RACE_SCRIPT),
        *("--home", str(home), "--base-url", base_url),
        *("--barrier", str(barrier), "--partitions", ",".join(partitions)),
        *("--rows", str(RACE_ROWS), "--max-requests-per-batch", str(RACE_PER_BATCH)),
    ]
    racers = {name: [*command, "--name", name] for name in ("A", "B")}
    finished = run_together(racers, env, barrier.parent / "racers", timeout=280)
    for name, racer in finished.items():
        assert racer.returncode == 0, racer.describe(f"racer {name}")
        print(f"racer {name}: {' | '.join(racer.stdout.splitlines())}")


def race_harness(instance: dg.DagsterInstance, base_url: str, partitions: list[str]) -> Harness:
    return Harness(
        instance,
        base_url,
        rows=RACE_ROWS,
        partitions_def=dg.StaticPartitionsDefinition(partitions),
        resource_options={"max_requests_per_batch": RACE_PER_BATCH},
    )


def assert_one_live_batch_per_shard_and_both_runs_agree(
    server: Any, home: Path, base_url: str, partitions: list[str]
) -> int:
    """Per partition: each shard's key has exactly one batch that is not cancelled, and
    both runs' `llm_batch` materializations name exactly those. Returns how many
    duplicates were made (and cancelled) along the way."""
    by_key: dict[str, list[Any]] = {}
    for batch in provider_batches(server):
        by_key.setdefault((batch.metadata or {})["idempotency_key"], []).append(batch)
    wrong: dict[str, Any] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        harness = race_harness(instance, base_url, partitions)
        for partition in partitions:
            keys = sorted(k for k in by_key if k.split("|")[1] == partition)
            assert len(keys) == RACE_ROWS // RACE_PER_BATCH, (partition, keys)
            live = [sorted(b.id for b in by_key[key] if b.status not in STOPPED) for key in keys]
            runs = harness.materializations(harness.pipeline.batch_key, partition)
            named = [sorted(m.metadata["inference_batch/batch_ids"].value) for m in runs]
            if (
                any(len(ids) != 1 for ids in live)
                or named != [sorted(i for ids in live for i in ids)] * 2
            ):
                wrong[partition] = {"live batches per shard": live, "runs name": named}
    assert not wrong, f"{len(wrong)} of {len(partitions)} partitions paid twice: {wrong}"
    return sum(len(batches) - 1 for batches in by_key.values())


@pytest.mark.slow
def test_two_submissions_of_a_partition_at_once_pay_for_one_batch_per_shard(
    dagster_home, batch_server, tmp_path
):
    # the latency widens the window between a lookup and its create to ~300 ms; the
    # batches stay validating, so a duplicate is cancelled before it has run (and paid)
    server = batch_server(api_key=API_KEY, latency_ms=150, validating_seconds=600)
    partitions = [f"p{i}" for i in range(10)]
    started = time.monotonic()
    race(dagster_home, server.base_url, partitions, tmp_path / "barrier")
    duplicates = assert_one_live_batch_per_shard_and_both_runs_agree(
        server, dagster_home, server.base_url, partitions
    )
    print(f"10 races in {time.monotonic() - started:.1f}s; {duplicates} duplicates cancelled")


@pytest.mark.slow
def test_without_a_batch_listing_the_event_log_settles_the_race(
    dagster_home, batch_server, tmp_path
):
    server = batch_server(api_key=API_KEY, latency_ms=150, validating_seconds=600)
    provider = LoopbackProxy(server.base_url, refuse=[("GET", "/v1/batches"), ("GET", "/v1/files")])
    partitions = [f"p{i}" for i in range(4)]
    try:
        race(dagster_home, provider.base_url, partitions, tmp_path / "barrier")
        assert provider.requests["GET /v1/batches"] > 0  # it was asked, and refused
        assert_one_live_batch_per_shard_and_both_runs_agree(
            server, dagster_home, provider.base_url, partitions
        )
    finally:
        provider.close()


# ---------------------------------------------------------------------- backfill

BACKFILL = 200
BACKFILL_ROWS = 2
BACKFILL_PER_BATCH = 1  # one batch per row: 400 at the provider


def backfill_at_the_provider(server: Any, partitions: list[str]) -> None:
    """The batches a backfill of `partitions` leaves at the provider: per partition one
    batch per shard, on its own upload, with the metadata the pipeline gives them.

    Made straight through the SDK (four at a time): the batch step's lookups read the
    event log by partition, so other partitions' runs and ledger records play no part in
    them, and at ~0.5 s of event-log writes per partition on a busy 2-core machine a
    Dagster run for each would take minutes.
    """
    sdk = sdk_client(server, API_KEY, max_retries=5)

    def submit(item: tuple[str, int]) -> None:
        partition, shard = item
        line = request_line(f"{partition}-{shard}", f"Say hello to number {shard}")
        upload = sdk.files.create(file=("input.jsonl", jsonl([line])), purpose="batch")
        job_key = f"llm_batch|{partition}|{hashlib.sha256(partition.encode()).hexdigest()[:16]}"
        sdk.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={
                "dagster_asset": "llm_batch",
                "dagster_partition": partition,
                "idempotency_key": f"{job_key}#s{shard}a1:{upload.id[-16:]}",
                "shard": str(shard),
                "attempt": "1",
            },
        )

    items = [(p, shard) for p in partitions for shard in range(BACKFILL_ROWS)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(submit, items))


def test_after_a_backfill_a_rerun_pays_nothing_and_a_new_partition_scans_no_listing(
    instance, batch_server, monkeypatch
):
    server = batch_server(api_key=API_KEY, validating_seconds=0.01, finalizing_seconds=0.01)
    provider = LoopbackProxy(server.base_url)
    partitions = dg.StaticPartitionsDefinition([f"p{i:03d}" for i in range(BACKFILL + 1)])

    def harness(**resource_options: Any) -> Harness:
        return Harness(
            instance,
            provider.base_url,
            rows=BACKFILL_ROWS,
            partitions_def=partitions,
            resource_options={"max_requests_per_batch": BACKFILL_PER_BATCH, **resource_options},
        )

    try:
        started = time.monotonic()
        default = harness()
        assert default.submit("p000").success
        first = default.materializations(default.pipeline.batch_key, "p000")[-1]
        backfill_at_the_provider(server, [f"p{i:03d}" for i in range(1, BACKFILL)])
        assert len(provider_batches(server)) == BACKFILL * BACKFILL_ROWS
        print(f"backfill of {BACKFILL} partitions: {time.monotonic() - started:.1f}s")

        # the first partition's batches are far beyond a listing scan of 50, and the
        # re-run is another process: only the event log remembers them
        monkeypatch.setattr(client_module, "CREATED_IN_THIS_PROCESS", ProcessLedger())
        narrow = harness(list_scan_limit=50)
        provider.requests.clear()
        assert narrow.submit("p000").success
        assert provider.batch_creates == BACKFILL_ROWS  # p000's own; nothing new paid for
        rerun = narrow.materializations(narrow.pipeline.batch_key, "p000")[-1]
        assert (
            rerun.metadata["inference_batch/batch_ids"].value
            == first.metadata["inference_batch/batch_ids"].value
        )
        assert provider.requests["GET /v1/batches"] == 0

        # a new partition: no intent in the ledger, so no listing scan before the
        # create; one page after it, to settle a racing create
        provider.requests.clear()
        assert default.submit(f"p{BACKFILL:03d}").success
        assert provider.batch_creates == BACKFILL_ROWS * 2
        assert provider.requests["GET /v1/batches"] <= 2, provider.requests
        print(f"new partition's listing calls: {dict(provider.requests)}")
    finally:
        provider.close()


# ------------------------------------------------------------------- supersession


def test_a_new_submission_with_other_rows_cancels_the_job_it_supersedes(instance, batch_server):
    server = batch_server(api_key=API_KEY, requests_per_second=2)  # 20 rows: ~10 s
    first = Harness(instance, server.base_url, rows=20)
    assert first.submit().success
    (old_batch,) = (
        first.materializations(first.pipeline.batch_key)[-1]
        .metadata["inference_batch/batch_ids"]
        .value
    )
    old_key = (
        first.materializations(first.pipeline.batch_key)[-1]
        .metadata["inference_batch/job"]
        .value["idempotency_key"]
    )

    second = Harness(instance, server.base_url, rows=3)  # other rows: another job
    assert second.submit().success
    latest = second.materializations(second.pipeline.batch_key)[-1]
    (new_batch,) = latest.metadata["inference_batch/batch_ids"].value
    assert latest.metadata[SUPERSEDED_KEY].value == {
        "job_key": old_key,
        "batch_ids": [old_batch],
        "cancelled": [old_batch],
    }
    assert wait_final(sdk_client(server, API_KEY), old_batch).status == "cancelled"

    second.tick_until(second.results_done)
    assert len(second.collect_runs) == 1
    results = second.materializations(second.pipeline.results_key)
    assert len(results) == 1
    assert results[0].metadata["inference_batch/batch_ids"].value == [new_batch]
    frame = second.results_frame()
    assert sorted(frame["custom_id"]) == [f"row-{i}" for i in range(3)]
    assert Counter(frame["status"]) == {"succeeded": 3}


def test_without_cancel_superseded_the_earlier_job_runs_on(instance, batch_server):
    server = batch_server(api_key=API_KEY, requests_per_second=2)
    first = Harness(instance, server.base_url, rows=20, cancel_superseded=False)
    assert first.submit().success
    second = Harness(instance, server.base_url, rows=3, cancel_superseded=False)
    assert second.submit().success
    latest = second.materializations(second.pipeline.batch_key)[-1]
    assert SUPERSEDED_KEY not in latest.metadata
    statuses = {b.status for b in provider_batches(server)}
    assert not statuses & set(STOPPED), statuses
