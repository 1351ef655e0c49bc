"""Benchmark: the sensor's tick with 1,000 and 10,000 in-flight batches, one per partition.

Setup, per size N, built once and kept under ``CACHE`` (``prepare``; ``--prepare`` builds
it alone), each run working on a fresh copy:

- the local server (``LocalBatchServer``, ``--latency-ms 50``; batches stay ``validating``
  and ``cancelling`` for the whole run, so the bench decides when they change);
- one input file and N batches over it, created through the server's HTTP API with the
  openai SDK (32 at a time; 10,000 in about 2 minutes);
- a Dagster instance (``dg.instance_for_test``: a temp DAGSTER_HOME, SQLite, on tmpfs when
  there is one) with N dynamic partitions and a history written with public APIs
  (``report_runless_asset_event`` and the pipeline's own ``EventLogLedger``; see
  ``write_history``): each partition's earlier attempt and its current job, in flight.

Then the pipeline's real sensor is evaluated tick after tick
(``dg.build_sensor_context(instance=..., cursor=..., resources=...)``), each tick timed
(wall clock and this process's CPU time). Progress counts as seen when the tick's result
holds the partition's progress observation (what the daemon then stores; the sensor never
reads them back, so the bench does not store them). The ticks go on until every batch was
seen (``validating``; a tick stops at its budget and carries the rest to the next), which
must take at most 3 ticks; then every batch moves to ``cancelling`` in the server's store
(one SQL update: the provider's progress), and the ticks go on until every partition's
change was observed, which must take at most 3 ticks too.

Baseline, same run: the N batches read by one ``client.batches.retrieve`` after another
(openai SDK); past 1,000 the first 1,000 are timed and the total extrapolated (about 9
minutes otherwise), which the row says.

``measure`` ticks on the fixture's SQLite instance unless given another
(``instance_for``): ``bench_sensor_postgres.py`` gives it one on PostgreSQL.

    PYTHONPATH=. .venv/bin/python bench/bench_sensor.py [--quick] [--sizes N ...] [--prepare]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import openai
import orjson
from common import BenchRow
from machine import describe_machine

from dagster_inference_batch import (
    InferenceBatchDefinitions,
    InferenceBatchResource,
    build_inference_batch_assets,
)
from dagster_inference_batch.batch_record import BatchJob, BatchShard
from dagster_inference_batch.dagster_compat import latest_storage_id_by_partition
from dagster_inference_batch.local_server import LocalBatchServer
from dagster_inference_batch.metadata import batch_metadata, progress_metadata
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet

ENDPOINT = "/v1/chat/completions"
MODEL = "bench-model"
LATENCY_MS = 50
FOREVER = 1e6  # seconds a batch stays validating / cancelling: the bench moves it on
BASELINE_SAMPLE = 1000  # retrieves timed at most; beyond, the total is extrapolated
MAX_TICKS_TO_SEE = 3
API_KEY = "bench-key"
ITEMS = dg.DynamicPartitionsDefinition(name="items")
# tmpfs when there is one: on disk each event the fixture (or the daemon) stores costs a fsync
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
CACHE = SCRATCH / "dagster-inference-batch-bench-sensor"
FULL_HISTORY_MAX = 1000  # partitions given the full history (see write_history)
FIXTURE_VERSION = 1  # bump when the history written changes
SMALL_BAR = (5.0, f"max tick <= 5 s, every batch seen within {MAX_TICKS_TO_SEE} ticks")
LARGE_BAR = (30.0, f"max tick <= 30 s, every batch seen within {MAX_TICKS_TO_SEE} ticks")


@dataclass
class SensorRun:
    """What one size measured."""

    partitions: int
    setup: dict[str, float] = field(default_factory=dict)
    tick_seconds: list[float] = field(default_factory=list)
    tick_cpu_seconds: list[float] = field(default_factory=list)  # the sensor process's
    first_tick_seen: int = 0
    ticks_to_see_all: int | None = None
    ticks_to_see_change: int | None = None
    baseline_seconds: float = 0.0
    baseline_extrapolated: bool = False


def partition_keys(n: int) -> list[str]:
    """The ``n`` dynamic partitions, one batch in flight each."""
    return [f"item-{i:05d}" for i in range(n)]


def _request_file() -> bytes:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
        for i in range(2)
    ]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def create_batches(sdk: openai.OpenAI, n: int) -> tuple[str, list[Any]]:
    """One input file and ``n`` batches over it, 32 creates at a time, over HTTP."""
    upload = sdk.files.create(file=("bench.jsonl", _request_file()), purpose="batch")
    with ThreadPoolExecutor(32) as pool:
        batches = list(
            pool.map(
                lambda _: sdk.batches.create(
                    input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
                ),
                range(n),
            )
        )
    return upload.id, batches


def _job(partition: str, file_id: str, batch: Any, status: str) -> BatchJob:
    key = f"llm-{partition}"
    shard = BatchShard(
        index=0,
        attempt=1,
        idempotency_key=f"{key}-0",
        file_id=file_id,
        request_count=2,
        bytes=len(_request_file()),
        sha256="",
        model=MODEL,
        batch_id=batch.id,
        status=status,
        request_counts={"total": 2, "completed": 2 if status == "completed" else 0, "failed": 0},
        created_at=batch.created_at,
        expires_at=batch.expires_at,
    )
    return BatchJob(endpoint=ENDPOINT, idempotency_key=key, shards=[shard])


def write_history(
    instance: dg.DagsterInstance,
    pipeline: InferenceBatchDefinitions,
    file_id: str,
    batches: list[Any],
    partitions: list[str],
) -> None:
    """Each partition's earlier attempt, then its current one (in flight).

    Up to ``FULL_HISTORY_MAX`` partitions the earlier attempt is recorded as a run leaves
    it (its ``<name>_batch`` materialization, a progress observation, the
    ``<name>_results`` materialization that collected it) and the current batch has its
    ledger record; beyond, only the two ``<name>_batch`` materializations, because each
    event stored costs a SQLite commit (20-80 ms on the shared 2-CPU machine).
    """
    report = instance.report_runless_asset_event
    batch_key, results_key = pipeline.batch_key, pipeline.results_key
    full = len(partitions) <= FULL_HISTORY_MAX
    for partition, batch in zip(partitions, batches, strict=True):
        old = _job(partition, file_id, batch, "completed")
        old.shards[0].batch_id = "batch_" + batch.id[-24:][::-1]  # an older batch
        report(
            dg.AssetMaterialization(batch_key, partition=partition, metadata=batch_metadata(old))
        )
        if full:
            metadata = progress_metadata(old)
            report(dg.AssetObservation(batch_key, partition=partition, metadata=metadata))
    collected = latest_storage_id_by_partition(instance, batch_key)
    for partition, batch in zip(partitions, batches, strict=True):
        job = _job(partition, file_id, batch, "validating")
        job.idempotency_key += "-new"
        if full:
            link = InferenceBatchMetadataSet(collected_storage_id=collected[partition])
            report(
                dg.AssetMaterialization(
                    results_key, partition=partition, metadata=link.to_metadata()
                )
            )
            pipeline.spec.ledger(instance, partition).record("batch", job.idempotency_key, batch.id)
        report(
            dg.AssetMaterialization(batch_key, partition=partition, metadata=batch_metadata(job))
        )


def statuses_reported(asset_events: list[Any]) -> dict[str, str]:
    """The status each partition's progress observation in a tick's result says."""
    status_key = InferenceBatchMetadataSet.key("status")
    return {
        event.partition: event.metadata[status_key].value
        for event in asset_events
        if isinstance(event, dg.AssetObservation) and status_key in event.metadata
    }


def baseline(sdk: openai.OpenAI, batch_ids: list[str]) -> tuple[float, bool]:
    """Seconds to read every batch by one ``retrieve`` after another (extrapolated past
    ``BASELINE_SAMPLE``)."""
    sample = batch_ids[:BASELINE_SAMPLE]
    start = time.perf_counter()
    for batch_id in sample:
        sdk.batches.retrieve(batch_id)
    seconds = time.perf_counter() - start
    return seconds * len(batch_ids) / len(sample), len(sample) < len(batch_ids)


def move_all(server: LocalBatchServer, status: str) -> None:
    """The provider's progress: every batch moves to ``status`` (one SQL update)."""
    with sqlite3.connect(server.data_dir / "state.sqlite3", timeout=30) as db:
        db.execute(
            "UPDATE batches SET status = ?, cancelling_at = ?, phase_ts = ?",
            (status, int(time.time()), time.time()),
        )


def _server(data_dir: Path) -> LocalBatchServer:
    return LocalBatchServer(
        data_dir,
        latency_ms=LATENCY_MS,
        validating_seconds=FOREVER,
        finalizing_seconds=FOREVER,
        expire_after=FOREVER,
        api_key=API_KEY,
    )


def bench_pipeline() -> InferenceBatchDefinitions:
    """The pipeline the sensor belongs to: ``llm`` over ``prompts``, on ``ITEMS``."""

    @dg.asset(name="prompts", partitions_def=ITEMS)
    def prompts() -> None:
        return None

    return build_inference_batch_assets(
        "llm", upstream=prompts, partitions_def=ITEMS, prompt_column="prompt", model=MODEL
    )


def prepare(n: int, log: Callable[[str], None] = print) -> Path:
    """The server's state and the Dagster home for ``n`` partitions, built once and kept
    under ``CACHE`` (writing the history costs one SQLite commit per event)."""
    fixture = CACHE / f"{n}-v{FIXTURE_VERSION}"
    if (fixture / "ready.json").exists():
        return fixture
    shutil.rmtree(fixture, ignore_errors=True)
    (fixture / "dagster").mkdir(parents=True)
    partitions = partition_keys(n)
    setup: dict[str, float] = {}
    with (
        _server(fixture / "server") as server,
        dg.instance_for_test(temp_dir=str(fixture / "dagster")) as instance,
    ):
        sdk = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=5)
        start = time.perf_counter()
        file_id, batches = create_batches(sdk, n)
        setup["create_batches_http_s"] = time.perf_counter() - start
        log(f"{n}: created {n} batches over HTTP in {setup['create_batches_http_s']:.1f} s")
        start = time.perf_counter()
        instance.add_dynamic_partitions(ITEMS.name, partitions)
        write_history(instance, bench_pipeline(), file_id, batches, partitions)
        setup["event_log_history_s"] = time.perf_counter() - start
        log(f"{n}: wrote the event-log history in {setup['event_log_history_s']:.1f} s")
    ready = {"batch_ids": [b.id for b in batches], "setup": setup}
    (fixture / "ready.json").write_bytes(orjson.dumps(ready))
    return fixture


InstanceFor = Callable[
    [Path, Path, LocalBatchServer, SensorRun, Callable[[str], None]],
    AbstractContextManager[dg.DagsterInstance],
]
"""Opens the instance a run ticks on: ``(fixture, workdir, server, run, log)``, with the
fixture's history in it (see ``sqlite_instance``)."""


@contextmanager
def sqlite_instance(
    fixture: Path,
    workdir: Path,
    server: LocalBatchServer,
    run: SensorRun,
    log: Callable[[str], None],
) -> Iterator[dg.DagsterInstance]:
    """A fresh copy of the fixture's SQLite instance (its history written by ``prepare``)."""
    shutil.copytree(fixture / "dagster", workdir / "dagster")
    with dg.instance_for_test(temp_dir=str(workdir / "dagster")) as instance:
        yield instance


def measure(
    n: int,
    workdir: Path,
    log: Callable[[str], None] = print,
    instance_for: InstanceFor = sqlite_instance,
) -> SensorRun:
    """Tick the sensor over a fresh copy of ``n`` partitions' fixture, and time it; the
    Dagster instance is ``instance_for``'s (default: the fixture's SQLite one)."""
    fixture = prepare(n, log)
    ready = orjson.loads((fixture / "ready.json").read_bytes())
    run = SensorRun(n, setup=dict(ready["setup"]))
    shutil.copytree(fixture / "server", workdir / "server")
    pipeline = bench_pipeline()
    with (
        _server(workdir / "server") as server,
        instance_for(fixture, workdir, server, run, log) as instance,
    ):
        resources = {
            "inference_batch": InferenceBatchResource(base_url=server.base_url, api_key=API_KEY)
        }
        cursor: str | None = None

        def tick() -> dict[str, str]:
            nonlocal cursor
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            start, cpu = time.perf_counter(), time.process_time()
            with dg.partition_loading_context(dynamic_partitions_store=instance):
                result = pipeline.sensor.evaluate_tick(context)
            run.tick_seconds.append(time.perf_counter() - start)
            run.tick_cpu_seconds.append(time.process_time() - cpu)
            cursor = result.cursor
            log(
                f"{n}: tick {len(run.tick_seconds)}: {run.tick_seconds[-1]:.2f} s "
                f"({run.tick_cpu_seconds[-1]:.2f} s CPU), "
                f"{len(result.asset_events)} events; {result.skip_message}"
            )
            statuses = statuses_reported(result.asset_events)
            if len(run.tick_seconds) == 1:
                first_seen.update(statuses)
            return statuses

        first_seen: dict[str, str] = {}

        run.ticks_to_see_all = ticks_until_seen(tick, "validating", n)
        run.first_tick_seen = sum(s == "validating" for s in first_seen.values())
        move_all(server, "cancelling")
        run.ticks_to_see_change = ticks_until_seen(tick, "cancelling", n)
        sdk = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=5)
        run.baseline_seconds, run.baseline_extrapolated = baseline(sdk, ready["batch_ids"])
    return run


def ticks_until_seen(tick: Callable[[], dict[str, str]], status: str, n: int) -> int | None:
    """Ticks until every one of the ``n`` partitions was reported in ``status`` (None
    when not within ``MAX_TICKS_TO_SEE`` + 1)."""
    seen: set[str] = set()
    for count in range(1, MAX_TICKS_TO_SEE + 2):
        seen |= {p for p, s in tick().items() if s == status}
        if len(seen) == n:
            return count
    return None


def to_row(
    run: SensorRun, *, bar_seconds: float, bar_rule: str, storage: str | None = None
) -> BenchRow:
    """The row of one size: the slowest tick against its bar, every batch seen in time;
    ``storage`` names the instance's storage in the row's name when it is not SQLite."""
    worst = max(run.tick_seconds)
    seen_all = all(
        ticks is not None and ticks <= MAX_TICKS_TO_SEE
        for ticks in (run.ticks_to_see_all, run.ticks_to_see_change)
    )
    how = "extrapolated from 1,000 retrieves" if run.baseline_extrapolated else "measured"
    return BenchRow(
        benchmark=f"sensor tick, {run.partitions:,} in-flight batches (latency {LATENCY_MS} ms)"
        + (f", {storage}" if storage else ""),
        ours=f"{worst:.1f} s",
        baseline=f"{run.baseline_seconds:.1f} s ({how})",
        ratio=run.baseline_seconds / worst if worst else None,
        bar=bar_rule,
        passed=worst <= bar_seconds and seen_all,
        detail={
            "tick_seconds": [round(s, 3) for s in run.tick_seconds],
            "tick_cpu_seconds": [round(s, 3) for s in run.tick_cpu_seconds],
            "first_tick_saw": run.first_tick_seen,
            "ticks_to_see_every_batch": run.ticks_to_see_all,
            "ticks_to_see_every_change": run.ticks_to_see_change,
            "baseline_seconds": round(run.baseline_seconds, 2),
            "baseline_extrapolated": run.baseline_extrapolated,
            **{k: round(v, 2) for k, v in run.setup.items()},
        },
    )


def run(quick: bool) -> list[BenchRow]:
    """The sensor-at-scale rows: 1,000 and 10,000 partitions (40 and 120 when quick)."""
    small, large = (40, 120) if quick else (1000, 10000)
    rows = []
    for n, bar_seconds, rule in ((small, *SMALL_BAR), (large, *LARGE_BAR)):
        with tempfile.TemporaryDirectory(dir=SCRATCH) as workdir:
            rows.append(to_row(measure(n, Path(workdir)), bar_seconds=bar_seconds, bar_rule=rule))
    return rows


def prepare_only(sizes: list[int]) -> None:
    """Build the fixtures of ``sizes`` (the slow part) ahead of a run."""
    for n in sizes:
        print(prepare(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 and 120 partitions")
    parser.add_argument("--sizes", type=int, nargs="*", help="only these sizes (bar: 30 s)")
    parser.add_argument("--prepare", action="store_true", help="only build the fixtures")
    args = parser.parse_args()
    if args.prepare:
        prepare_only(args.sizes or ([40, 120] if args.quick else [1000, 10000]))
        return
    print(describe_machine())
    if args.sizes:
        rows = []
        for n in args.sizes:
            with tempfile.TemporaryDirectory(dir=SCRATCH) as workdir:
                rows.append(to_row(measure(n, Path(workdir)), bar_seconds=30.0, bar_rule="30 s"))
    else:
        rows = run(args.quick)
    for row in rows:
        print(orjson.dumps(row.to_json(), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
