"""Where a pipeline's BatchJob lives: the Dagster event log, and what to do with it next.

The ``<name>_input_file`` and ``<name>_batch`` materializations carry the job as JSON
metadata (``inference_batch/job``). Every step and the sensor read it back from the
instance (SQLite locally, Postgres in production), never from an IO manager, a module
global or a local file, so any process on any host sees the same state.

A recorded job this version cannot read (written by a newer version, or broken) fails
only its own partition: ``latest_job`` raises a ``dg.Failure`` saying why, and
``uncollected_jobs`` hands it back as an ``UnreadableJob`` beside the readable ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dagster as dg

from .consistency import absent_files
from .job import BatchJob, StoredStateError

JOB_KEY = "inference_batch/job"
CANCEL_KEY = "inference_batch/cancel_requested"
RESUBMITTABLE = frozenset({"expired", "cancelled"})

Action = Literal["wait", "resubmit", "collect"]


@dataclass(frozen=True)
class RecordedJob:
    """A job as recorded by one materialization (``storage_id``) of one partition."""

    partition: str | None
    storage_id: int
    job: BatchJob
    cancel_requested: bool = False


@dataclass(frozen=True)
class UnreadableJob:
    """A materialization whose recorded job this version cannot use; ``error`` says why."""

    partition: str | None
    storage_id: int
    error: str


def _recorded(record: dg.EventLogRecord) -> RecordedJob | UnreadableJob | None:
    materialization = record.asset_materialization
    if materialization is None or JOB_KEY not in materialization.metadata:
        return None
    metadata = materialization.metadata
    cancel = metadata.get(CANCEL_KEY)
    try:
        job = BatchJob.from_dict(metadata[JOB_KEY].value)
    except StoredStateError as exc:
        return UnreadableJob(materialization.partition, record.storage_id, str(exc))
    return RecordedJob(
        partition=materialization.partition,
        storage_id=record.storage_id,
        job=job,
        cancel_requested=bool(cancel.value) if cancel is not None else False,
    )


def partition_of(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str | None:
    """The run's partition key, or None for an unpartitioned run."""
    return context.partition_key if context.has_partition_key else None


def latest_job(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None
) -> RecordedJob | None:
    """The job recorded by the latest materialization of ``asset_key`` for ``partition``.

    Raises ``dg.Failure`` when that job cannot be read (written by a newer version, or
    broken), so only this partition's run fails.

    Example:
        >>> latest_job(instance, dg.AssetKey("reviews_batch"), None)  # doctest: +SKIP
        RecordedJob(partition=None, storage_id=42, job=BatchJob(...), cancel_requested=False)
    """
    records_filter = dg.AssetRecordsFilter(
        asset_key=asset_key, asset_partitions=[partition] if partition is not None else None
    )
    records = instance.fetch_materializations(records_filter, limit=1).records
    recorded = _recorded(records[0]) if records else None
    if isinstance(recorded, UnreadableJob):
        where = f" partition {partition}" if partition is not None else ""
        raise dg.Failure(
            description=f"cannot use the job recorded by {asset_key.to_user_string()}{where} "
            f"(materialization {recorded.storage_id}): {recorded.error}",
            metadata={"inference_batch/unreadable_job": recorded.error},
        )
    return recorded


def _latest_storage_ids(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitioned: bool
) -> dict[str | None, int]:
    if partitioned:
        return dict(
            instance.get_latest_storage_id_by_partition(
                asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION
            )
        )
    records = instance.fetch_materializations(asset_key, limit=1).records
    return {None: records[0].storage_id} if records else {}


def uncollected_jobs(
    instance: dg.DagsterInstance,
    batch_key: dg.AssetKey,
    results_key: dg.AssetKey,
    *,
    partitioned: bool,
) -> tuple[list[RecordedJob], list[UnreadableJob]]:
    """Jobs whose latest batch materialization is newer than the partition's results.

    These are the batches in flight, or final and waiting for their results run; those
    whose recorded job cannot be read come second, so the rest carry on without them.
    """
    batches = _latest_storage_ids(instance, batch_key, partitioned)
    results = _latest_storage_ids(instance, results_key, partitioned)
    storage_ids = [sid for part, sid in batches.items() if results.get(part, 0) < sid]
    if not storage_ids:
        return [], []
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=batch_key, storage_ids=storage_ids),
        limit=len(storage_ids),
    ).records
    recorded = sorted(
        (r for r in map(_recorded, records) if r is not None), key=lambda r: r.partition or ""
    )
    return (
        [r for r in recorded if isinstance(r, RecordedJob)],
        [r for r in recorded if isinstance(r, UnreadableJob)],
    )


def next_action(job: BatchJob, *, max_attempts: int, cancel_requested: bool = False) -> Action:
    """What a job needs: ``wait`` while running, ``resubmit`` an expired or cancelled
    remainder, or the rows of a batch taken as final without the files its counts promise
    (the client waits for those first), while attempts remain and not after a cancel the
    user asked for; else ``collect`` its results.

    Example:
        >>> next_action(BatchJob(endpoint="/v1/chat/completions", idempotency_key="k"),
        ...             max_attempts=2)
        'wait'
    """
    if not job.is_final:
        return "wait"
    leftovers = job.status in RESUBMITTABLE or any(absent_files(s) for s in job.current_shards)
    if leftovers and job.attempt < max_attempts and not cancel_requested:
        return "resubmit"
    return "collect"
