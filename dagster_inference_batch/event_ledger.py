"""The Dagster event log as a ledger of created batches, written the moment they exist.

Each time the client creates a batch, a runless ``AssetObservation`` on ``<name>_batch``
(for the partition) records its idempotency key and batch id, written straight to the
instance, before the step does anything else. A step that dies after the create and
before its materialization leaves this record, so the re-run reuses the batch by id,
without depending on the provider's batch listing (which some providers lack, and which
only reaches the most recent batches).
"""

from __future__ import annotations

import dagster as dg

from .client import OnCreated
from .job import BatchJob

LEDGER_KEY = "inference_batch/created_batch"
_PAGE = 1000


def ledger_recorder(
    instance: dg.DagsterInstance, batch_key: dg.AssetKey, partition: str | None
) -> OnCreated:
    """A callback for ``InferenceBatchClient.create(on_created=...)`` that records each
    created batch on ``batch_key`` for ``partition``."""

    def record(idempotency_key: str, batch_id: str) -> None:
        instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=batch_key,
                partition=partition,
                description=f"created batch {batch_id}",
                metadata={
                    LEDGER_KEY: dg.MetadataValue.json(
                        {"idempotency_key": idempotency_key, "batch_id": batch_id}
                    )
                },
            )
        )

    return record


def recorded_batches(
    instance: dg.DagsterInstance,
    batch_key: dg.AssetKey,
    partition: str | None,
    job: BatchJob,
) -> dict[str, str]:
    """Batch ids by idempotency key for ``job``'s shards without a batch, as recorded in
    the event log: the ledger observations (newest first, every page until each key is
    found) and the latest ``batch_key`` materialization's job.

    Example:
        >>> recorded_batches(instance, dg.AssetKey("llm_batch"), None, job)  # doctest: +SKIP
        {'llm_batch||0123abcd#s0a1:89ef...': 'batch_abc'}
    """
    wanted = {s.idempotency_key for s in job.shards if s.batch_id is None}
    if not wanted:
        return {}
    records_filter = dg.AssetRecordsFilter(
        asset_key=batch_key, asset_partitions=[partition] if partition is not None else None
    )
    found = _from_latest_materialization(instance, records_filter, wanted)
    cursor = None
    while len(found) < len(wanted):
        page = instance.fetch_observations(records_filter, limit=_PAGE, cursor=cursor)
        for record in page.records:
            observation = record.asset_observation
            entry = observation.metadata.get(LEDGER_KEY) if observation else None
            value = entry.value if entry is not None else None
            if isinstance(value, dict) and value.get("idempotency_key") in wanted:
                found.setdefault(str(value["idempotency_key"]), str(value["batch_id"]))
        if not page.has_more:
            break
        cursor = page.cursor
    return found


def _from_latest_materialization(
    instance: dg.DagsterInstance, records_filter: dg.AssetRecordsFilter, wanted: set[str]
) -> dict[str, str]:
    records = instance.fetch_materializations(records_filter, limit=1).records
    if not records or records[0].asset_materialization is None:
        return {}
    stored = records[0].asset_materialization.metadata.get("inference_batch/job")
    shards = stored.value.get("shards", []) if stored is not None else []
    return {
        s["idempotency_key"]: s["batch_id"]
        for s in shards
        if isinstance(s, dict) and s.get("idempotency_key") in wanted and s.get("batch_id")
    }
