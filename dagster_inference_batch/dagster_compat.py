"""The one Dagster call this package makes outside Dagster's public API, with a public fallback.

The sensor asks, every tick, for the latest materialization of each partition of
``<name>_batch`` and ``<name>_results``. Dagster's public event-log queries can only
answer by reading every materialization ever recorded (``fetch_materializations``
paged over the whole history, each record with its ``inference_batch/job`` JSON):
with 1,000 partitions materialized twice on SQLite that took 2.9 s against 31 ms for
``DagsterInstance.get_latest_storage_id_by_partition`` (one grouped query returning
ids only), and it grows with the history. So the internal method is used while it
exists with the signature this package was tested against, and the public paging
takes over (with a warning, once) when an upgrade removes or changes it.
``tests/test_dagster_compat.py`` fails when that happens, so the slower route never
ships unnoticed.
"""

from __future__ import annotations

import dagster as dg

INTERNAL_METHOD = "get_latest_storage_id_by_partition"
"""The non-public ``DagsterInstance`` method used when present (tested with Dagster 1.13)."""
PAGE = 1000
_warned: set[str] = set()


def latest_storage_id_by_partition(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey
) -> dict[str, int]:
    """The storage id of the latest materialization of each partition of ``asset_key``.

    Args:
        instance: the Dagster instance whose event log is read.
        asset_key: a partitioned asset.

    Returns:
        ``{partition: storage id}`` for every partition materialized at least once.

    Example:
        >>> instance = dg.DagsterInstance.ephemeral()
        >>> for partition in ("a", "b", "a"):
        ...     instance.report_runless_asset_event(
        ...         dg.AssetMaterialization("llm_batch", partition=partition))
        >>> latest = latest_storage_id_by_partition(instance, dg.AssetKey("llm_batch"))
        >>> sorted(latest), latest["a"] > latest["b"]
        (['a', 'b'], True)
    """
    internal = getattr(instance, INTERNAL_METHOD, None)
    if internal is not None:
        try:
            return dict(internal(asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION))
        except TypeError as error:
            _warn_once(f"DagsterInstance.{INTERNAL_METHOD} changed ({error})")
    else:
        _warn_once(f"DagsterInstance.{INTERNAL_METHOD} is gone")
    return latest_storage_id_by_partition_public(instance, asset_key)


def latest_storage_id_by_partition_public(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey
) -> dict[str, int]:
    """``latest_storage_id_by_partition`` through public queries only: every
    materialization of ``asset_key``, newest first, a page of ``PAGE`` at a time.

    Args:
        instance: the Dagster instance whose event log is read.
        asset_key: a partitioned asset.

    Returns:
        ``{partition: storage id}`` for every partition materialized at least once.
    """
    latest: dict[str, int] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(asset_key, limit=PAGE, cursor=cursor)
        for record in page.records:
            partition = record.partition_key
            if partition is not None:
                latest.setdefault(partition, record.storage_id)
        if not page.has_more:
            return latest
        cursor = page.cursor


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        dg.get_dagster_logger().warning(
            f"{reason}: reading every materialization instead, which is slower; "
            "dagster-inference-batch has not been tested with this Dagster version"
        )
