"""Following batches: refresh a job's shards from the provider, and cancel them.

A final status is taken only once the batch's files agree with its counts
(``consistency.absent_files``); ``FinalStateCheck`` remembers, per batch, since when it
has not, and holds the status back as ``finalizing`` for a while.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .batch_record import BatchJob, BatchShard
from .consistency import absent_files
from .provider_calls import ProviderCalls

_FINAL_TIME_FIELDS = ("completed_at", "failed_at", "expired_at", "cancelled_at")
LISTING_MIN_BATCHES = 20
"""From this many unfinished batches on, a tick reads them from the listing (100 a call)."""


def copy_job(job: BatchJob) -> BatchJob:
    """A deep copy of ``job``, so that a call never changes the caller's record.

    Args:
        job: The job.

    Returns:
        The copy.
    """
    return BatchJob.from_dict(dataclasses.asdict(job))


def apply_batch(shard: BatchShard, batch: Any) -> None:
    """Copy a provider batch object's state onto the shard.

    Args:
        shard: The shard, changed in place.
        batch: The provider's batch object (or its dict).
    """
    data = batch.model_dump() if hasattr(batch, "model_dump") else dict(batch)
    shard.batch_id = data["id"]
    shard.status = data["status"]
    shard.request_counts = dict(data.get("request_counts") or {})
    shard.output_file_id = data.get("output_file_id")
    shard.error_file_id = data.get("error_file_id")
    shard.errors = list((data.get("errors") or {}).get("data") or [])
    usage = data.get("usage") or {}
    shard.usage = {
        k: int(usage[k]) for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage
    }
    shard.created_at = data.get("created_at")
    shard.expires_at = data.get("expires_at")
    shard.finished_at = next((data[f] for f in _FINAL_TIME_FIELDS if data.get(f)), None)


class FinalStateCheck:
    """Holds back a final status whose files disagree with its counts, for a while.

    Args:
        log: Where the wait and the giving up are reported.
    """

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        # When this client first saw a final batch whose files disagree with its counts.
        self._unsettled_since: dict[str, float] = {}
        self._lock = threading.Lock()

    def settle(self, shard: BatchShard, wait_seconds: float) -> None:
        """Set the shard ``finalizing`` while its files lag its counts.

        Args:
            shard: A shard just refreshed, changed in place.
            wait_seconds: How long after its final timestamp (or after first seen so) the
                status is held back.
        """
        absent = absent_files(shard)
        batch_id = shard.batch_id or ""
        if not absent:
            self._unsettled_since.pop(batch_id, None)
            return
        with self._lock:
            first_seen = self._unsettled_since.setdefault(batch_id, time.time())
        waited = time.time() - min(first_seen, shard.finished_at or first_seen)
        counts = shard.request_counts
        said = (
            f"batch {batch_id} is {shard.status} with {counts.get('completed', 0)} completed "
            f"and {counts.get('failed', 0)} failed requests but no {' or '.join(absent)}"
        )
        if waited < wait_seconds:
            self.log.info("%s yet; reading it again (waited %.0fs)", said, waited)
            shard.status = "finalizing"
            return
        self.log.warning(
            "%s after %.0fs; taking it as final: requests without a line count as missing",
            said,
            waited,
        )


def listed_batches(
    provider: ProviderCalls, jobs: Sequence[BatchJob], seconds: float
) -> dict[str, Any]:
    """The unfinished batches of ``jobs`` read from the provider's listing, 100 per call.

    Only when they are ``LISTING_MIN_BATCHES`` or more and the provider offers a batch
    listing: fewer are cheaper one retrieve each (and refresh as they always did).

    Args:
        provider: The client's calls.
        jobs: The jobs about to be refreshed.
        seconds: Time the listing may take.

    Returns:
        The batch objects found, by id; those missing are for ``refresh_job`` to retrieve.
    """
    live = [s for job in jobs for s in job.shards if s.batch_id and not s.is_final]
    if len(live) < LISTING_MIN_BATCHES or not provider.has_batch_listing():
        return {}
    created = [s.created_at for s in live]
    known = None not in created
    return provider.find_listed_batches(
        {s.batch_id for s in live if s.batch_id},
        created_since=min(c for c in created if c is not None) if known else None,
        deadline=time.monotonic() + seconds,
        newest_first=sorted(((s.batch_id, s.created_at) for s in live), key=lambda b: -b[1])
        if known
        else (),
    )


def refresh_job(
    provider: ProviderCalls,
    job: BatchJob,
    check: FinalStateCheck,
    wait_seconds: float,
    known: Mapping[str, Any] | None = None,
) -> BatchJob:
    """A copy of ``job`` with every unfinished shard's batch fetched again, concurrently.

    Args:
        provider: The client's calls.
        job: The job.
        check: The client's memory of final batches whose files lag.
        wait_seconds: How long such a batch is held back (``final_state_wait_seconds``).
        known: Batch objects read already (``listed_batches``), by id: used instead of
            a retrieve.

    Returns:
        The updated copy.

    Raises:
        BatchAPIError: A batch could not be read.
    """
    job = copy_job(job)
    known = known or {}
    live = [s for s in job.shards if s.batch_id and not s.is_final]
    missing = [s for s in live if s.batch_id not in known]
    fetched = provider.map(lambda s: provider.retrieve_batch(s.batch_id), missing)
    batches = {**known, **{s.batch_id: b for s, b in zip(missing, fetched, strict=True)}}
    for shard in live:
        apply_batch(shard, batches[shard.batch_id])
        check.settle(shard, wait_seconds)
    return job


def cancel_job(provider: ProviderCalls, job: BatchJob) -> BatchJob:
    """A copy of ``job`` after asking the provider to cancel every unfinished batch.

    Args:
        provider: The client's calls.
        job: The job.

    Returns:
        The updated copy.

    Raises:
        BatchAPIError: A cancel was refused (other than 409) or kept failing.
    """
    job = copy_job(job)
    live = [s for s in job.current_shards if s.batch_id and not s.is_final]
    batches = provider.map(lambda s: provider.cancel_batch(s.batch_id), live)
    for shard, batch in zip(live, batches, strict=True):
        apply_batch(shard, batch)
    return job
