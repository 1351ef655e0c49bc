"""A new submission of a partition supersedes the job it held: stop that job's batches.

The sensor and the results step follow only a partition's latest ``<name>_batch``
materialization, so once the batch step records a new job (other request lines, so
another idempotency key) nobody collects the one before it. Left alone its batches would
run, and be paid for, until they end. The batch step therefore cancels them (factory
option ``cancel_superseded``, on by default): it refreshes the old job first and cancels
only what still runs (a batch that finished meanwhile answers 409 and is left as it is),
and records what it did as ``inference_batch/superseded`` on the new materialization.
"""

from __future__ import annotations

import logging
from typing import Any

import dagster as dg

from .batch_record import BatchJob
from .client import InferenceBatchClient
from .errors import BatchAPIError
from .state import latest_job

_CANCELLING = ("cancelling", "cancelled")


def recorded_job(
    instance: dg.DagsterInstance,
    batch_key: dg.AssetKey,
    partition: str | None,
    log: logging.Logger | dg.DagsterLogManager,
) -> BatchJob | None:
    """The job the partition's latest batch materialization holds.

    Args:
        instance: the Dagster instance.
        batch_key: the ``<name>_batch`` asset.
        partition: the partition key, or None.
        log: where a job this version cannot read is reported (it is left alone).

    Returns:
        The job, or None when there is none or it cannot be read.

    Example:
        >>> recorded_job(dg.DagsterInstance.ephemeral(), dg.AssetKey("llm_batch"), None,
        ...     logging.getLogger()) is None
        True
    """
    try:
        recorded = latest_job(instance, batch_key, partition)
    except dg.Failure as failure:
        log.warning(f"cannot tell whether an earlier job is superseded: {failure.description}")
        return None
    return recorded.job if recorded is not None else None


def cancel_superseded_batches(
    client: InferenceBatchClient,
    previous: BatchJob,
    job: BatchJob,
    log: logging.Logger | dg.DagsterLogManager,
) -> dict[str, Any] | None:
    """Cancel what still runs of ``previous`` when ``job`` supersedes it.

    ``job`` supersedes ``previous`` when its idempotency key differs and ``previous``
    was not final as recorded. The cancel is best effort: a provider error is logged
    and reported in the returned value, not raised.

    Args:
        client: the client of the batch step.
        previous: the job the partition held.
        job: the job just submitted.
        log: where what was done is reported.

    Returns:
        The ``inference_batch/superseded`` value (``job_key``, ``batch_ids``,
        ``cancelled``, and ``error`` if the cancel failed), or None when nothing was
        superseded.

    Example:
        >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "old"}}]
        >>> old = client.submit(lines, endpoint="/v1/completions")
        >>> new = client.submit([{"custom_id": "a", "body": {"model": "m", "prompt": "new"}}],
        ...     endpoint="/v1/completions")
        >>> superseded = cancel_superseded_batches(client, old, new, logging.getLogger())
        >>> superseded["job_key"] == old.idempotency_key
        True
    """
    if previous.idempotency_key == job.idempotency_key or previous.is_final:
        return None
    superseded: dict[str, Any] = {
        "job_key": previous.idempotency_key,
        "batch_ids": previous.batch_ids,
        "cancelled": [],
    }
    try:
        refreshed = client.refresh(previous)
        live = {s.batch_id for s in refreshed.current_shards if s.batch_id and not s.is_final}
        if live:
            cancelled = client.cancel(refreshed)
            superseded["cancelled"] = [
                s.batch_id
                for s in cancelled.current_shards
                if s.batch_id in live and s.status in _CANCELLING
            ]
    except BatchAPIError as error:
        log.warning(
            f"job {previous.idempotency_key} is superseded but its batches could not be "
            f"cancelled: {error}; they run on at the provider until they end"
        )
        superseded["error"] = str(error)
        return superseded
    log.info(
        f"job {previous.idempotency_key} is superseded by {job.idempotency_key}: "
        + (
            f"cancelled {', '.join(superseded['cancelled'])}"
            if superseded["cancelled"]
            else "its batches had already finished"
        )
    )
    return superseded
