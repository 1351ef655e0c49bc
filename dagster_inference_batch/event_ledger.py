"""The Dagster event log as a ledger of uploaded files and created batches.

Each time the client uploads a shard or creates a batch, a runless ``AssetObservation``
records its key and id, written straight to the instance before the step does anything
else: uploads on ``<name>_input_file``, batches on ``<name>_batch``, for the partition.
A step that dies after the call and before its materialization leaves this record, so
the re-run reuses the file or batch by id, without depending on the provider's listings
(which some providers lack, and which only reach the most recent items).
"""

from __future__ import annotations

from collections.abc import Collection

import dagster as dg

from .ledger import Kind

LEDGER_KEY = "inference_batch/ledger"
_PAGE = 1000


class EventLogLedger:
    """A ``Ledger`` (see ``ledger.py``) kept in the event log of one partition.

    Example:
        >>> ledger = EventLogLedger(instance, partition=None,  # doctest: +SKIP
        ...     input_file_key=dg.AssetKey("llm_input_file"), batch_key=dg.AssetKey("llm_batch"))
        >>> job = client.create(client.upload(frame, ledger=ledger), ledger=ledger)
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        *,
        partition: str | None,
        input_file_key: dg.AssetKey,
        batch_key: dg.AssetKey,
    ) -> None:
        self._instance = instance
        self._partition = partition
        self._asset_keys: dict[Kind, dg.AssetKey] = {"file": input_file_key, "batch": batch_key}

    def record(self, kind: Kind, key: str, object_id: str) -> None:
        self._instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=self._asset_keys[kind],
                partition=self._partition,
                description=f"{'uploaded' if kind == 'file' else 'created'} {object_id}",
                metadata={
                    LEDGER_KEY: dg.MetadataValue.json({"kind": kind, "key": key, "id": object_id})
                },
            )
        )

    def recorded(self, kind: Kind, keys: Collection[str]) -> dict[str, str]:
        """Ids recorded for ``keys``: the ledger observations, newest first, every page
        until each key is found; for batches also the latest materialization's job."""
        wanted = set(keys)
        if not wanted:
            return {}
        records_filter = dg.AssetRecordsFilter(
            asset_key=self._asset_keys[kind],
            asset_partitions=[self._partition] if self._partition is not None else None,
        )
        found = self._from_latest_job(records_filter, wanted) if kind == "batch" else {}
        cursor = None
        while len(found) < len(wanted):
            page = self._instance.fetch_observations(records_filter, limit=_PAGE, cursor=cursor)
            for record in page.records:
                observation = record.asset_observation
                entry = observation.metadata.get(LEDGER_KEY) if observation else None
                value = entry.value if entry is not None else None
                if isinstance(value, dict) and value.get("key") in wanted:
                    found.setdefault(str(value["key"]), str(value["id"]))
            if not page.has_more:
                break
            cursor = page.cursor
        return found

    def _from_latest_job(
        self, records_filter: dg.AssetRecordsFilter, wanted: set[str]
    ) -> dict[str, str]:
        """Batch ids of the job the latest materialization recorded (older versions of
        this package wrote no ledger, only that)."""
        records = self._instance.fetch_materializations(records_filter, limit=1).records
        materialization = records[0].asset_materialization if records else None
        stored = materialization.metadata.get("inference_batch/job") if materialization else None
        value = stored.value if stored is not None else None
        shards = value.get("shards", []) if isinstance(value, dict) else []
        return {
            s["idempotency_key"]: s["batch_id"]
            for s in shards
            if isinstance(s, dict) and s.get("idempotency_key") in wanted and s.get("batch_id")
        }
