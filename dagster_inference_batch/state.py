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

from .batch_record import BatchJob, StoredStateError
from .consistency import absent_files
from .dagster_compat import latest_storage_id_by_partition
from .metadata_set import InferenceBatchMetadataSet
from .record_cache import RecordCache

_JOB_KEY = InferenceBatchMetadataSet.key("job")  # read raw: a broken job is not skipped
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
    stored = materialization.metadata.get(_JOB_KEY) if materialization is not None else None
    if materialization is None or stored is None:
        return None
    try:  # a job present but unreadable fails its partition: not read leniently
        job = BatchJob.from_dict(stored.value)
    except StoredStateError as exc:
        return UnreadableJob(materialization.partition, record.storage_id, str(exc))
    return RecordedJob(
        partition=materialization.partition,
        storage_id=record.storage_id,
        job=job,
        cancel_requested=bool(
            InferenceBatchMetadataSet.extract(materialization.metadata).cancel_requested
        ),
    )


def partition_of(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext | dg.OpExecutionContext,
) -> str | None:
    """The run's partition key, or None for an unpartitioned run.

    Args:
        context: the context of an asset, asset check or op.

    Returns:
        ``context.partition_key``, or None when the run has none.
    """
    return context.partition_key if context.has_partition_key else None


def latest_job(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None
) -> RecordedJob | None:
    """The job recorded by the latest materialization of ``asset_key`` for ``partition``.

    Args:
        instance: the Dagster instance whose event log holds the materializations.
        asset_key: ``<name>_input_file`` or ``<name>_batch``.
        partition: the partition key, or None for an unpartitioned asset.

    Returns:
        The recorded job with its materialization's storage id, or None when there is
        no materialization or the latest one holds no job.

    Raises:
        dagster.Failure: the job cannot be read (written by a newer version, or broken),
            so only this partition's run fails.

    Example:
        >>> instance = dg.DagsterInstance.ephemeral()
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> instance.report_runless_asset_event(dg.AssetMaterialization(
        ...     "llm_batch", metadata=InferenceBatchMetadataSet(job=job.to_dict()).to_metadata()))
        >>> recorded = latest_job(instance, dg.AssetKey("llm_batch"), None)
        >>> recorded.job == job, recorded.cancel_requested
        (True, False)
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
            metadata=InferenceBatchMetadataSet(unreadable_job=recorded.error).to_metadata(),
        )
    return recorded


def _latest(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitioned: bool
) -> tuple[dict[str | None, int], dict[int, dg.EventLogRecord]]:
    """The latest materialization's storage id per partition, and the records already
    read on the way (the unpartitioned lookup reads the record itself)."""
    if partitioned:
        return dict(latest_storage_id_by_partition(instance, asset_key)), {}
    records = instance.fetch_materializations(asset_key, limit=1).records
    if not records:
        return {}, {}
    return {None: records[0].storage_id}, {records[0].storage_id: records[0]}


def collected_storage_id(record: dg.EventLogRecord) -> int | None:
    """The ``<name>_batch`` materialization a ``<name>_results`` materialization joined.

    Args:
        record: a ``<name>_results`` materialization record.

    Returns:
        Its ``inference_batch/collected_storage_id``, or None for results written
        before the link existed.
    """
    materialization = record.asset_materialization
    if materialization is None:
        return None
    return InferenceBatchMetadataSet.extract(materialization.metadata).collected_storage_id


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
    than it cannot have joined it): the latest storage ids of both assets, then batched
    fetches (1,000 ids a query) of those results' records and of the uncollected
    batches', except those a ``RecordCache`` parsed on an earlier call in this process
    (a stored materialization never changes).

    Args:
        instance: the Dagster instance whose event log holds the materializations.
        batch_key: the ``<name>_batch`` asset.
        results_key: the ``<name>_results`` asset.
        partitioned: whether the assets are partitioned.

    Returns:
        The jobs in flight, or final and waiting for their results run (by partition);
        then those whose recorded job cannot be read, so the rest carry on without them.

    Example:
        >>> instance = dg.DagsterInstance.ephemeral()
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> instance.report_runless_asset_event(dg.AssetMaterialization("llm_batch",
        ...     partition="a", metadata=InferenceBatchMetadataSet(job=job.to_dict()).to_metadata()))
        >>> jobs, unreadable = uncollected_jobs(instance, dg.AssetKey("llm_batch"),
        ...     dg.AssetKey("llm_results"), partitioned=True)
        >>> [r.partition for r in jobs], unreadable
        (['a'], [])
    """
    batches, known_batches = _latest(instance, batch_key, partitioned)
    results, known_results = _latest(instance, results_key, partitioned)
    newer = {results[p]: p for p, sid in batches.items() if results.get(p, 0) > sid}
    found = _LINKS.read(instance, results_key, newer, known_results)
    links = {newer[sid]: link for sid, link in found.items()}

    def collected(partition: str | None, storage_id: int) -> bool:
        if results.get(partition, 0) < storage_id:
            return False
        linked = links.get(partition)
        return linked is None or linked == storage_id

    wanted = {sid: part for part, sid in batches.items() if not collected(part, sid)}
    jobs = _JOBS.read(instance, batch_key, wanted, known_batches)
    recorded = sorted((r for r in jobs.values() if r is not None), key=lambda r: r.partition or "")
    return (
        [r for r in recorded if isinstance(r, RecordedJob)],
        [r for r in recorded if isinstance(r, UnreadableJob)],
    )


_JOBS: RecordCache[RecordedJob | UnreadableJob | None] = RecordCache(_recorded)
_LINKS: RecordCache[int | None] = RecordCache(collected_storage_id)


def next_action(job: BatchJob, *, max_attempts: int, cancel_requested: bool = False) -> Action:
    """What a recorded job needs next.

    ``resubmit`` covers an expired or cancelled remainder, and the rows of a batch taken
    as final without the files its counts promise (the client waits for those first),
    while attempts remain and not after a cancel the user asked for.

    Args:
        job: the job as last refreshed.
        max_attempts: the attempts allowed, the first submission included.
        cancel_requested: the user cancelled the job (nothing is resubmitted).

    Returns:
        ``"wait"`` while a batch of the latest attempt runs, ``"resubmit"`` for rows
        left over, else ``"collect"`` its results.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> next_action(job, max_attempts=2)
        'wait'
        >>> from dagster_inference_batch import BatchShard
        >>> job.shards = [BatchShard(index=0, attempt=1, idempotency_key="k-0",
        ...     file_id="f", request_count=1, bytes=10, sha256="", batch_id="b",
        ...     status="expired")]
        >>> next_action(job, max_attempts=2), next_action(job, max_attempts=1)
        ('resubmit', 'collect')
    """
    if not job.is_final:
        return "wait"
    leftovers = job.status in RESUBMITTABLE or any(absent_files(s) for s in job.current_shards)
    if leftovers and job.attempt < max_attempts and not cancel_requested:
        return "resubmit"
    return "collect"


def invalid_retry_allowed(job: BatchJob, *, max_attempts: int, cancel_requested: bool) -> bool:
    """Whether a final job's invalid answers may still be retried (``retry_invalid_output``).

    Only a job whose batches ran (not one that failed validation), while attempts remain
    and not after a cancel the user asked for; whether any answer is invalid takes its
    files, so the caller looks (``InferenceBatchClient.resubmit`` with ``response_model``).

    Args:
        job: the job as last refreshed.
        max_attempts: the attempts allowed, the first submission included.
        cancel_requested: the user cancelled the job.

    Returns:
        True when a retry is allowed.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> invalid_retry_allowed(job, max_attempts=2, cancel_requested=False)
        False
    """
    return (
        job.is_final
        and job.status != "failed"
        and job.attempt < max_attempts
        and not cancel_requested
    )
