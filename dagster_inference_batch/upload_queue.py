"""The upload queue in the Dagster event log: who waits for the provider's upload limit.

Steps that must wait for the upload limit (Inference.net: one file a minute per key)
join a queue kept as runless observations on ``<name>_input_file``: ``joined`` when a
step starts waiting, ``left`` once its upload is done (or has failed). The event log's
storage order is the queue's order, shared by every process and machine on the
instance, so simultaneous waiters take the upload slots one after the other instead of
all aiming at the same one, and each step logs its place ("place 2 of 4 in the upload
queue"). The pacer in ``upload_pacing.py`` reads it; the provider's file list and its
429s still enforce the limit.

A place is dropped when it is left, when its run has ended (failed, cancelled or
terminated: a step that died mid-wait), or ``stale_after`` seconds after it was taken
(no upload waits longer than ``max_upload_wait``).
"""

from __future__ import annotations

import time
import uuid

import dagster as dg

from .metadata_set import InferenceBatchMetadataSet

_ENDED = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
_PAGE = 1000
UPLOAD_SECONDS_ALLOWED = 600.0
"""How long a place may stay taken after its wait, for the upload itself."""


class EventLogUploadQueue:
    """An ``UploadQueue`` (see ``upload_pacing.py``) on one asset's event log.

    Args:
        instance: The Dagster instance shared by the waiting steps.
        asset_key: The asset the places are recorded on (``<name>_input_file``).
        partition: The waiting step's partition, or None.
        run_id: The waiting step's run (a place whose run has ended is dropped).
        stale_after: Seconds after which a place not left is dropped anyway.

    Example:
        >>> instance = dg.DagsterInstance.ephemeral()
        >>> queue = EventLogUploadQueue(instance, dg.AssetKey("llm_input_file"), None, "", 60)
        >>> first, second = queue.join(), queue.join()
        >>> [ticket for ticket, _ in queue.waiting()] == [first, second]
        True
        >>> queue.leave(first)
        >>> [ticket for ticket, _ in queue.waiting()] == [second]
        True
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        asset_key: dg.AssetKey,
        partition: str | None,
        run_id: str,
        stale_after: float,
    ) -> None:
        self._instance = instance
        self._asset_key = asset_key
        self._partition = partition
        self._run_id = run_id
        self._stale_after = stale_after

    def join(self) -> str:
        """Take a place at the end of the queue.

        Returns:
            The place's ticket.
        """
        ticket = f"{self._run_id or 'runless'}:{uuid.uuid4().hex[:12]}"
        self._record("joined", ticket)
        return ticket

    def leave(self, ticket: str) -> None:
        """Give up the place ``ticket``.

        Args:
            ticket: What ``join`` returned.
        """
        self._record("left", ticket)

    def waiting(self) -> list[tuple[str, float]]:
        """The places held now, first in line first.

        Returns:
            ``(ticket, joined at)`` per place, the time in Unix seconds.
        """
        joined: dict[str, tuple[float, str]] = {}
        left: set[str] = set()
        records_filter = dg.AssetRecordsFilter(
            asset_key=self._asset_key, after_timestamp=time.time() - self._stale_after
        )
        cursor = None
        while True:
            page = self._instance.fetch_observations(
                records_filter, limit=_PAGE, cursor=cursor, ascending=True
            )
            for record in page.records:
                observation = record.asset_observation
                entry = InferenceBatchMetadataSet.extract(
                    observation.metadata if observation else None
                ).upload_queue
                if not isinstance(entry, dict) or not isinstance(entry.get("ticket"), str):
                    continue
                if entry.get("event") == "joined":
                    joined[entry["ticket"]] = (record.timestamp, str(entry.get("run_id", "")))
                else:
                    left.add(entry["ticket"])
            if not page.has_more:
                break
            cursor = page.cursor
        return [
            (ticket, at)
            for ticket, (at, run_id) in joined.items()
            if ticket not in left and not self._run_ended(run_id)
        ]

    def _run_ended(self, run_id: str) -> bool:
        if not run_id:
            return False
        run = self._instance.get_run_by_id(run_id)
        return run is None or run.status in _ENDED

    def _record(self, event: str, ticket: str) -> None:
        self._instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=self._asset_key,
                partition=self._partition,
                description=f"upload queue: {event} ({ticket})",
                metadata=InferenceBatchMetadataSet(
                    upload_queue={"event": event, "ticket": ticket, "run_id": self._run_id}
                ).to_metadata(),
            )
        )
