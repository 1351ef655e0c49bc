"""The Dagster event log as a ledger of uploaded files and created batches.

Each time the client uploads a shard or creates a batch, a runless ``AssetObservation``
records its key and id, written straight to the instance before the step does anything
else: uploads on ``<name>_input_file``, batches on ``<name>_batch``, for the partition.
A step that dies after the call and before its materialization leaves this record, so
the re-run reuses the file or batch by id, without depending on the provider's listings
(which some providers lack, and which only reach the most recent items).

Before each create the client also records an *intent* for the batch key (on
``<name>_batch``). The ledger is the primary, unbounded source: a key without an intent
was never tried, so the client creates its batch without scanning the provider's
listing; only a key with an intent and no created batch (a step that died mid-create)
is looked for in the listing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import dagster as dg

from .ledger import Kind
from .metadata_set import InferenceBatchMetadataSet

LEDGER_KEY = InferenceBatchMetadataSet.key("ledger")  # alias for the tests' harness
_PAGE = 1000
INTENT_UNKNOWN = "unknown"
"""The id ``recorded("intent", ...)`` gives a key it cannot vouch for (see there)."""


class EventLogLedger:
    """A ``Ledger`` (see ``ledger.py``) kept in the event log of one partition.

    It keeps intents (``IntentLedger``) and lists ids in the order recorded
    (``OrderedLedger``).

    Args:
        instance: the Dagster instance whose event log holds the records.
        partition: the partition the records belong to, or None.
        input_file_key: the asset uploads are recorded on (``<name>_input_file``).
        batch_key: the asset batches and intents are recorded on (``<name>_batch``).

    Example:
        >>> instance = dg.DagsterInstance.ephemeral()
        >>> ledger = EventLogLedger(instance, partition=None,
        ...     input_file_key=dg.AssetKey("llm_input_file"), batch_key=dg.AssetKey("llm_batch"))
        >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "hi"}}]
        >>> job = client.create(client.upload(lines, endpoint="/v1/completions", ledger=ledger),
        ...     ledger=ledger)
        >>> ledger.recorded("batch", [job.shards[0].idempotency_key]) == {
        ...     job.shards[0].idempotency_key: job.batch_ids[0]}
        True
    """

    keeps_intents = True

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
        self._asset_keys: dict[Kind, dg.AssetKey] = {
            "file": input_file_key,
            "batch": batch_key,
            "intent": batch_key,
        }

    def record(self, kind: Kind, key: str, object_id: str) -> None:
        """Record ``object_id`` for ``key`` as a runless observation, written at once.

        Args:
            kind: ``"file"``, ``"batch"`` or ``"intent"``.
            key: the shard's idempotency key.
            object_id: the file or batch id (an intent's is a placeholder).
        """
        described = {"file": "uploaded", "batch": "created", "intent": "creating"}[kind]
        self._instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=self._asset_keys[kind],
                partition=self._partition,
                description=f"{described} {object_id if kind != 'intent' else key}",
                metadata=InferenceBatchMetadataSet(
                    ledger={"kind": kind, "key": key, "id": object_id}
                ).to_metadata(),
            )
        )

    def recorded(self, kind: Kind, keys: Collection[str]) -> dict[str, str]:
        """Ids recorded for ``keys``.

        Reads the ledger observations newest first, page by page until each key is
        found; for batches also the latest materialization's job. For ``"intent"``, the
        keys that may have been tried: those with an intent, or every key (id
        ``INTENT_UNKNOWN``) when the partition holds batches recorded without one (by a
        version that wrote no intents), which the client then looks for in the
        provider's listing as before.

        Args:
            kind: ``"file"``, ``"batch"`` or ``"intent"``.
            keys: the idempotency keys looked for.

        Returns:
            ``{key: id}`` for the keys found (the newest record of each).
        """
        wanted = set(keys)
        if not wanted:
            return {}
        if kind == "intent":
            return self._intents(wanted)
        found = self._from_latest_job(wanted) if kind == "batch" else {}
        for entry in self._entries(kind):
            if entry["kind"] == kind and entry["key"] in wanted:
                found.setdefault(entry["key"], entry["id"])
                if len(found) == len(wanted):
                    break
        return found

    def recorded_in_order(self, kind: Kind, keys: Collection[str]) -> dict[str, list[str]]:
        """Every id recorded for each of ``keys``, oldest record first.

        Args:
            kind: ``"file"`` or ``"batch"``.
            keys: the idempotency keys looked for.

        Returns:
            ``{key: [id, ...]}`` in the event log's storage order (with SQLite, the order
            the records were committed).
        """
        wanted = set(keys)
        ordered: dict[str, list[str]] = {}
        for entry in self._entries(kind, ascending=True):
            if entry["kind"] == kind and entry["key"] in wanted:
                ordered.setdefault(entry["key"], []).append(entry["id"])
        return ordered

    def _intents(self, wanted: set[str]) -> dict[str, str]:
        intents: set[str] = set()
        created: set[str] = set()
        for entry in self._entries("intent"):
            (intents if entry["kind"] == "intent" else created).add(entry["key"])
            if wanted <= intents:
                break
        unvouched = (created | set(self._from_latest_job(None))) - intents
        if unvouched and not wanted <= intents:
            return dict.fromkeys(wanted, INTENT_UNKNOWN)
        return {key: "intent" for key in wanted & intents}

    def _entries(self, kind: Kind, *, ascending: bool = False) -> Iterator[dict[str, str]]:
        """The ledger records on ``kind``'s asset for this partition, newest first (or
        oldest first), page by page as they are consumed."""
        records_filter = self._filter(kind)
        cursor = None
        while True:
            page = self._instance.fetch_observations(
                records_filter, limit=_PAGE, cursor=cursor, ascending=ascending
            )
            for record in page.records:
                value = _ledger_value(record.asset_observation)
                if value is not None:
                    yield value
            if not page.has_more:
                return
            cursor = page.cursor

    def _filter(self, kind: Kind) -> dg.AssetRecordsFilter:
        return dg.AssetRecordsFilter(
            asset_key=self._asset_keys[kind],
            asset_partitions=[self._partition] if self._partition is not None else None,
        )

    def _from_latest_job(self, wanted: set[str] | None) -> dict[str, str]:
        """Batch ids of the job the latest materialization recorded (older versions of
        this package wrote no ledger, only that); every one when ``wanted`` is None."""
        records = self._instance.fetch_materializations(self._filter("batch"), limit=1).records
        materialization = records[0].asset_materialization if records else None
        metadata = materialization.metadata if materialization is not None else None
        value = InferenceBatchMetadataSet.extract(metadata).job
        shards = value.get("shards", []) if isinstance(value, dict) else []
        return {
            s["idempotency_key"]: s["batch_id"]
            for s in shards
            if isinstance(s, dict)
            and s.get("batch_id")
            and isinstance(s.get("idempotency_key"), str)
            and (wanted is None or s["idempotency_key"] in wanted)
        }


def _ledger_value(observation: Any) -> dict[str, str] | None:
    """A ledger record's ``{kind, key, id}``, or None for any other observation."""
    value = InferenceBatchMetadataSet.extract(observation.metadata).ledger if observation else None
    if not isinstance(value, dict) or "key" not in value or "id" not in value:
        return None
    return {"kind": str(value.get("kind", "")), "key": str(value["key"]), "id": str(value["id"])}
