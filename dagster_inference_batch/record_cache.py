"""What the sensor parsed from materialization records, kept between its ticks.

A stored materialization never changes, so what a tick parsed from the record with some
storage id holds on every later tick; reading and deserializing the records is most of
a tick's event-log cost (about 1 ms per record in Dagster's deserializer). A
``RecordCache`` keeps the parsed values per instance (its root directory) and asset key,
since storage ids are unique only within one event log; a value whose partition is not
the one the event log names for that id now is read again. Each read keeps only the
ids it was asked for, so the cache holds one entry per partition in flight, and a tick
reads only the records of partitions materialized since the last one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import dagster as dg

T = TypeVar("T")
FETCH_CHUNK = 1000  # storage ids in one query (SQLite limits the variables of a query)


class RecordCache(Generic[T]):
    """Values parsed from materialization records, by storage id.

    Args:
        parse: Reads the value wanted from one record.

    Example:
        >>> instance = dg.DagsterInstance.ephemeral()
        >>> instance.report_runless_asset_event(dg.AssetMaterialization("a", partition="p"))
        >>> sid = instance.fetch_materializations(dg.AssetKey("a"), limit=1).records[0].storage_id
        >>> cache = RecordCache(lambda record: record.partition_key.upper())
        >>> cache.read(instance, dg.AssetKey("a"), {sid: "p"}) == {sid: "P"}
        True
    """

    def __init__(self, parse: Callable[[dg.EventLogRecord], T]) -> None:
        self._parse = parse
        self._entries: dict[tuple[str, str], dict[int, tuple[str | None, T]]] = {}
        self._lock = threading.Lock()

    def read(
        self,
        instance: dg.DagsterInstance,
        asset_key: dg.AssetKey,
        wanted: Mapping[int, str | None],
        known: Mapping[int, dg.EventLogRecord] | None = None,
    ) -> dict[int, T]:
        """The parsed values of the materializations ``wanted``.

        Args:
            instance: The instance whose event log holds them.
            asset_key: Their asset.
            wanted: Storage id -> the partition the event log names for it.
            known: Records already read, used as they are.

        Returns:
            Storage id -> value, for each id found.
        """
        slot = (str(instance.root_directory), asset_key.to_user_string())
        with self._lock:
            cached = self._entries.get(slot, {})
        values = {
            sid: cached[sid][1]
            for sid, partition in wanted.items()
            if sid in cached and cached[sid][0] == partition
        }
        records = [r for sid, r in (known or {}).items() if sid in wanted and sid not in values]
        missing = [sid for sid in wanted if sid not in values and sid not in (known or {})]
        for start in range(0, len(missing), FETCH_CHUNK):
            chunk = missing[start : start + FETCH_CHUNK]
            records_filter = dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=chunk)
            records += instance.fetch_materializations(records_filter, limit=len(chunk)).records
        fresh = {r.storage_id: (r.partition_key, self._parse(r)) for r in records}
        values.update({sid: value for sid, (_, value) in fresh.items()})
        with self._lock:
            kept = {sid: cached[sid] for sid in values if sid not in fresh}
            self._entries[slot] = {**kept, **fresh}
        return values
