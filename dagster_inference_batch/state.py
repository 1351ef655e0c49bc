"""Where a pipeline's BatchJob lives: the Dagster event log, and what to do with it next.

The ``<name>_input_file`` and ``<name>_batch`` materializations carry the job as JSON
metadata (``inference_batch/job``). Every step and the sensor read it back from the
instance (SQLite locally, Postgres in production), never from an IO manager, a module
global or a local file, so any process on any host sees the same state.

A recorded job this version cannot read (written by a newer version, or broken) fails
only its own partition: ``latest_job`` raises a ``dg.Failure`` saying why, and
``uncollected_jobs`` hands it back as an ``UnreadableJob`` beside the readable ones.

Each ``<name>_results`` materialization names the ``<name>_batch`` materialization whose
job it joined (``inference_batch/collected_storage_id``, with the job's key in
``inference_batch/job_key``): a partition is collected when that link points at its
latest batch materialization. The order of storage ids alone cannot tell, because a
results run reads the job when it starts and is stored when it ends, and a new job may
be submitted in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dagster as dg

from .consistency import absent_files
from .job import BatchJob, StoredStateError

JOB_KEY = "inference_batch/job"
CANCEL_KEY = "inference_batch/cancel_requested"
COLLECTED_KEY = "inference_batch/collected_storage_id"  # on <name>_results: the batch it joined
COLLECTED_JOB_KEY = "inference_batch/job_key"  # on <name>_results: that job's idempotency key
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


def partition_of(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext | dg.OpExecutionContext,
) -> str | None:
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


def _latest(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitioned: bool
) -> tuple[dict[str | None, int], dict[int, dg.EventLogRecord]]:
    """The latest materialization's storage id per partition, and the records already
    read on the way (the unpartitioned lookup reads the record itself)."""
    if partitioned:
        latest = instance.get_latest_storage_id_by_partition(
            asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        return dict(latest), {}
    records = instance.fetch_materializations(asset_key, limit=1).records
    if not records:
        return {}, {}
    return {None: records[0].storage_id}, {records[0].storage_id: records[0]}


def _records(
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    storage_ids: list[int],
    known: dict[int, dg.EventLogRecord],
) -> list[dg.EventLogRecord]:
    """The materialization records with ``storage_ids``: one batched fetch for those not
    ``known`` already."""
    wanted = [sid for sid in storage_ids if sid not in known]
    fetched = (
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=wanted), limit=len(wanted)
        ).records
        if wanted
        else []
    )
    return [known[sid] for sid in storage_ids if sid in known] + list(fetched)


def collected_storage_id(record: dg.EventLogRecord) -> int | None:
    """The storage id of the ``<name>_batch`` materialization a ``<name>_results``
    materialization joined, or None for results written before the link existed."""
    materialization = record.asset_materialization
    value = materialization.metadata.get(COLLECTED_KEY) if materialization else None
    linked = value.value if value is not None else None
    return linked if isinstance(linked, int) and not isinstance(linked, bool) else None


def uncollected_jobs(
    instance: dg.DagsterInstance,
    batch_key: dg.AssetKey,
    results_key: dg.AssetKey,
    *,
    partitioned: bool,
) -> tuple[list[RecordedJob], list[UnreadableJob]]:
    """Jobs whose partition's latest batch materialization has not been collected.

    A partition is collected when its latest ``<name>_results`` materialization names
    (``inference_batch/collected_storage_id``) its latest ``<name>_batch``
    materialization; results written before that link existed count when they are
    newer than the batch. Only results newer than the batch are read (results older
    than it cannot have joined it): the latest storage ids of both assets, then one
    batched fetch of those results' records and one of the uncollected batches'.

    These are the batches in flight, or final and waiting for their results run; those
    whose recorded job cannot be read come second, so the rest carry on without them.
    """
    batches, known_batches = _latest(instance, batch_key, partitioned)
    results, known_results = _latest(instance, results_key, partitioned)
    newer = [results[part] for part, sid in batches.items() if results.get(part, 0) > sid]
    links = {
        record.asset_materialization.partition: collected_storage_id(record)
        for record in _records(instance, results_key, newer, known_results)
        if record.asset_materialization is not None
    }

    def collected(partition: str | None, storage_id: int) -> bool:
        if results.get(partition, 0) < storage_id:
            return False
        linked = links.get(partition)
        return linked is None or linked == storage_id

    storage_ids = [sid for part, sid in batches.items() if not collected(part, sid)]
    if not storage_ids:
        return [], []
    records = _records(instance, batch_key, storage_ids, known_batches)
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
