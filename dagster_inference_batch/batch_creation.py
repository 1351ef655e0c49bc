"""Creating batches: one per uploaded shard, never two for the same batch key.

Before a create, ``find_existing`` looks for each shard's batch (ledgers by id, then the
provider's listing for keys that may have been tried); ``create_missing`` creates the rest,
recording an intent first and the batch as soon as it exists, then settles a racing create
of the same key (see ``idempotency.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .batch_record import BatchJob, BatchShard
from .errors import BatchAPIError, PartialCreateError
from .idempotency import RELIST_PAGE, RaceCheck, batches_by_key, possibly_tried, record_intent
from .ledger import Ledger
from .progress import apply_batch, copy_job
from .provider_calls import ProviderCalls

T = TypeVar("T")


@dataclass
class Existing:
    """What ``find_existing`` found: batches by key, and how it looked (``None`` when
    there was nothing to look for)."""

    batches: dict[str, Any]
    idempotency: str | None


def find_existing(
    provider: ProviderCalls, job: BatchJob, ledger: Ledger | None, *, list_scan_limit: int
) -> Existing:
    """The batches already made for the job's shards without one, by batch key.

    Looked for in ``ledger`` and this process's ledger, fetched by id; then, for keys the
    ledger cannot rule out (see ``idempotency.possibly_tried``), in the provider's listing.

    Args:
        provider: The client's calls.
        job: The job whose shards without a batch are looked for.
        ledger: The caller's record of batches and intents.
        list_scan_limit: Most recent batches scanned.

    Returns:
        The batches found by key, and how they were looked for.
    """
    pending = [s for s in job.shards if s.batch_id is None]
    found = _recorded_batches(provider, pending, ledger)
    unknown = {s.idempotency_key for s in pending if s.idempotency_key not in found}
    tried = possibly_tried(ledger, unknown) if unknown else set()
    if tried:
        found.update(find_batches(provider, tried, list_scan_limit))
        return Existing(found, _idempotency_mode(provider, has_ledger=ledger is not None))
    return Existing(found, "ledger" if pending else None)  # by recorded id, or never tried


def create_missing(
    provider: ProviderCalls,
    job: BatchJob,
    existing: dict[str, Any],
    *,
    create_options: dict[str, Any],
    ledger: Ledger | None,
    completion_window: str,
    list_scan_limit: int,
) -> BatchJob:
    """A copy of ``job`` whose shards have batches: ``existing`` ones or new ones.

    Args:
        provider: The client's calls.
        job: The job.
        existing: Batches already made, by key (from ``find_existing``).
        create_options: Optional create-body fields (``webhook_url``,
            ``output_expires_after``), already checked.
        ledger: The caller's record of batches and intents.
        completion_window: The batches' completion window.
        list_scan_limit: Most recent batches scanned when a create may have gone through.

    Returns:
        The updated copy.

    Raises:
        PartialCreateError: Some creates failed; its ``job`` records the batches made.
    """
    job = copy_job(job)
    pending = [s for s in job.shards if s.batch_id is None]
    found = dict(existing)
    to_create = [s for s in pending if s.idempotency_key not in found]

    def create(shard: BatchShard) -> Any:
        return _create_batch(
            provider, job, shard, create_options, ledger, completion_window, list_scan_limit
        )

    outcomes = provider.map(lambda s: _outcome(lambda: create(s)), to_create)
    created = {
        s.idempotency_key: o
        for s, o in zip(to_create, outcomes, strict=True)
        if not isinstance(o, BatchAPIError)
    }
    found.update(_race_check(provider, ledger).settle(created, ledger))
    for shard in pending:
        batch = found.get(shard.idempotency_key)
        if batch is None:
            continue
        if shard.idempotency_key in created and batch is not created[shard.idempotency_key]:
            shard.file_id = batch.input_file_id  # a racer's; ours is deleted with its batch
        _adopt_input_file(provider, shard, batch)
        apply_batch(shard, batch)
    errors = [o for o in outcomes if isinstance(o, BatchAPIError)]
    if errors:
        raise PartialCreateError(job, errors[0]) from errors[0]
    return job


def find_batches(provider: ProviderCalls, keys: set[str], list_scan_limit: int) -> dict[str, Any]:
    """Batches among the most recent ``list_scan_limit`` that carry one of ``keys``.

    Args:
        provider: The client's calls.
        keys: Batch keys.
        list_scan_limit: Most recent batches scanned.

    Returns:
        key -> batch, the oldest listed per key (the one a racing create settles on).
    """
    groups, _ = batches_by_key(provider.list_batches(max_items=list_scan_limit), keys)
    found = {key: batches[0] for key, batches in groups.items()}
    for key, batch in found.items():
        provider.log.info("reusing batch %s for %s", batch.id, key)
    return found


def _race_check(provider: ProviderCalls, ledger: Ledger | None) -> RaceCheck:
    return RaceCheck(
        relist=lambda max_items: provider.list_batches(limit=RELIST_PAGE, max_items=max_items),
        has_listing=provider.has_batch_listing,
        retrieve=provider.retrieve_batch_or_none,
        cancel=provider.cancel_batch,
        delete_file=provider.delete_file,
        record=lambda key, batch_id: provider.record("batch", key, batch_id, ledger),
        log=provider.log,
    )


def _recorded_batches(
    provider: ProviderCalls, shards: list[BatchShard], ledger: Ledger | None
) -> dict[str, Any]:
    """Batches recorded for the shards' keys (by the caller or by this process) that the
    provider still has under that key: fetched by id, no listing."""
    keys = [s.idempotency_key for s in shards]
    wanted = {
        **provider.process_ledger.recorded("batch", keys),
        **(ledger.recorded("batch", keys) if ledger is not None else {}),
    }

    def fetch(item: tuple[str, str]) -> Any | None:
        key, batch_id = item
        batch = provider.retrieve_batch_or_none(batch_id)
        if batch is None or (batch.metadata or {}).get("idempotency_key") != key:
            return None
        provider.log.info("reusing batch %s for %s (recorded when it was created)", batch.id, key)
        return batch

    fetched = provider.map(fetch, list(wanted.items()))
    return {key: batch for key, batch in zip(wanted, fetched, strict=True) if batch}


def _adopt_input_file(provider: ProviderCalls, shard: BatchShard, batch: Any) -> None:
    """A reused batch runs the file uploaded first: the shard takes that file, and a
    second upload of the same lines (made when no listing could find the first) is
    deleted rather than left behind."""
    input_file_id = getattr(batch, "input_file_id", None)
    if not input_file_id or input_file_id == shard.file_id:
        return
    redundant, shard.file_id = shard.file_id, input_file_id
    provider.log.info(
        "batch %s runs %s: deleting the second upload %s", batch.id, input_file_id, redundant
    )
    provider.delete_file(redundant)


def _idempotency_mode(provider: ProviderCalls, *, has_ledger: bool) -> str:
    """``listing``, ``ledger`` or ``degraded`` (logged): how created batches are found."""
    if provider.has_batch_listing():
        return "listing"
    if has_ledger:
        return "ledger"
    provider.log.warning(
        "%s offers no batch listing and no record of created batches was given: "
        "idempotency is degraded, and a crash between a create and its record can "
        "now cost a second paid batch",
        provider.base_url,
    )
    return "degraded"


def _create_batch(
    provider: ProviderCalls,
    job: BatchJob,
    shard: BatchShard,
    create_options: dict[str, Any],
    ledger: Ledger | None,
    completion_window: str,
    list_scan_limit: int,
) -> Any:
    def find() -> Any | None:  # a create that failed may still have gone through
        key = shard.idempotency_key
        return find_batches(provider, {key}, list_scan_limit).get(key)

    metadata = {
        **job.metadata,
        "idempotency_key": shard.idempotency_key,
        "shard": str(shard.index),
        "attempt": str(shard.attempt),
    }
    extra_body = dict(create_options) or None

    def create() -> Any:
        return provider.sdk.batches.create(
            input_file_id=shard.file_id,
            endpoint=job.endpoint,  # type: ignore[arg-type]
            completion_window=completion_window,  # type: ignore[arg-type]
            metadata=metadata,
            extra_body=extra_body,
        )

    record_intent(ledger, shard.idempotency_key)
    batch = provider.call(f"create batch for shard {shard.index}", create, before_retry=find)
    provider.record("batch", shard.idempotency_key, batch.id, ledger)
    provider.log.info(
        "created batch %s (shard %d, attempt %d, %d requests)",
        batch.id,
        shard.index,
        shard.attempt,
        shard.request_count,
    )
    return batch


def _outcome(fn: Callable[[], T]) -> T | BatchAPIError:
    """``fn()``, or the API error it raised: one shard's failure must not hide the
    batches created for the others."""
    try:
        return fn()
    except BatchAPIError as error:
        return error
