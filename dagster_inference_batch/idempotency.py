"""Exactly one paid batch per batch key: where to look before a create, and which of two
racing creates wins after it.

Before a create the client looks for the key's batch (``client.create``): in the ledgers
by id, then, for the keys the caller's ledger cannot rule out, in the provider's listing.
A ledger that keeps *intents* (``ledger.IntentLedger``; the Dagster event log's does)
rules a key out when it holds no intent for it: the client records one before every
create, so no intent means never tried, and no listing is scanned. The listing scan is
bounded (``list_scan_limit``); the ledger is not.

The lookup and the create are not atomic: two submissions of the same job at the same
time (a double click, two run workers, a backfill overlapping a schedule) can both find
nothing and both create. ``RaceCheck`` settles it after the create with one bounded
re-list of the most recent batches (one page in the common case): for each key the
OLDEST batch wins, in the provider's listing order (newest first, so the one listed
last); a younger duplicate is cancelled, its input file deleted once it has stopped
(unless the winner runs the same file), and the racer that made it returns the winner.
Both racers end on the same batch: the winner's create committed before the loser's, so
the loser's re-list, made after its own create, always lists it; and the winner, whether
or not it sees the loser's batch, keeps its own. The order must be the provider's
creation order: whole-second ``created_at`` ties (the usual case in a race) broken by
random ids could make each racer think its own batch is the oldest.

Without a batch listing the ledger plays this part where it can (``OrderedLedger``): the
batch whose record was written first wins. That holds when every racer writes to the
same ledger and the ledger's order is its commit order (the event log on SQLite; on
Postgres two records committed out of id order in the same instant can still split the
racers). A racer that dies between its create and its record leaves a duplicate no one
knows of; a caller's ledger without ``recorded_in_order``, or no ledger at all, settles
nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import BatchAPIError
from .ledger import Ledger

INTENT_ID = "pending"  # the id an intent record carries (what matters is its key)
RELIST_PAGE = 100  # the re-list reads the most recent batches, a page at a time
RELIST_TAIL = 50  # batches read past the last one this call created (the racers' window)
RELIST_MAX_ITEMS = 300  # bound on the re-list: three pages at most
RACE_CANCEL_WAIT_SECONDS = 10.0  # how long a cancelled duplicate is awaited before its
# input file is deleted (deleting the file of a batch still cancelling can fail it)
_STOPPED = ("completed", "failed", "expired", "cancelled")


def keeps_intents(ledger: Ledger | None) -> bool:
    """Whether ``ledger`` keeps intents (see ``ledger.IntentLedger``).

    Args:
        ledger: the caller's ledger, or None.

    Returns:
        True when it declares ``keeps_intents = True``.

    Example:
        >>> keeps_intents(None)
        False
    """
    return ledger is not None and getattr(ledger, "keeps_intents", False) is True


def possibly_tried(ledger: Ledger | None, keys: Collection[str]) -> set[str]:
    """Of ``keys``, those whose batch may exist without a record.

    Args:
        ledger: the caller's ledger, or None.
        keys: the batch keys about to be created.

    Returns:
        Every key, unless the ledger keeps intents: then only the keys it holds an
        intent for (the others were never tried).

    Example:
        >>> sorted(possibly_tried(None, ["k-0", "k-1"]))
        ['k-0', 'k-1']
    """
    if not keeps_intents(ledger):
        return set(keys)
    assert ledger is not None
    return set(ledger.recorded("intent", keys)) & set(keys)


def record_intent(ledger: Ledger | None, key: str) -> None:
    """Record, before a create, that a batch for ``key`` is about to be created.

    Does nothing unless ``ledger`` keeps intents.

    Args:
        ledger: the caller's ledger, or None.
        key: the batch key.
    """
    if keeps_intents(ledger):
        assert ledger is not None
        ledger.record("intent", key, INTENT_ID)


def key_of(batch: Any) -> str | None:
    """The idempotency key a provider batch carries in its metadata.

    Args:
        batch: a batch as the provider returns it.

    Returns:
        Its ``metadata["idempotency_key"]``, or None.
    """
    return (getattr(batch, "metadata", None) or {}).get("idempotency_key")


def batches_by_key(
    listing: Iterable[Any],
    keys: Collection[str],
    *,
    until_ids: Collection[str] | None = None,
    tail: int = RELIST_TAIL,
) -> tuple[dict[str, list[Any]], set[str]]:
    """The batches of a newest-first listing that carry one of ``keys``.

    Reading stops ``tail`` batches after every key was found (or, with ``until_ids``,
    after each of those ids was listed), or when the listing ends: duplicates of a key
    are made within moments of each other, so they sit close together in the listing.

    Args:
        listing: the provider's batches, newest first.
        keys: the batch keys looked for.
        until_ids: batch ids that must be read past, if any.
        tail: how many batches to read past the last one looked for.

    Returns:
        Each key's batches, OLDEST first, and the ids of ``until_ids`` never listed.

    Example:
        >>> from types import SimpleNamespace as Batch
        >>> listing = [Batch(id=f"b{n}", metadata={"idempotency_key": "k"}) for n in (2, 1)]
        >>> found, unseen = batches_by_key(listing, ["k"], until_ids=["b2"])
        >>> [b.id for b in found["k"]], unseen
        (['b1', 'b2'], set())
    """
    keys = set(keys)
    missing = set(until_ids or ())
    found: dict[str, list[Any]] = {}
    read_past = -1  # batches read since everything looked for was found; -1: not yet
    for batch in listing:
        key = key_of(batch)
        if key in keys:
            found.setdefault(key, []).append(batch)
        missing.discard(batch.id)
        if read_past >= 0:
            read_past += 1
        elif not missing and (until_ids is not None or keys <= found.keys()):
            read_past = 0
        if read_past >= tail:
            break
    return {key: batches[::-1] for key, batches in found.items()}, missing


@dataclass
class RaceCheck:
    """Settles racing creates after the fact (see the module's docstring).

    Built by the client from its own calls: ``relist(max_items)`` yields the most recent
    batches newest first (nothing when the provider has no listing, which
    ``has_listing()`` then says), ``retrieve`` returns a batch or None (404),
    ``cancel`` cancels one (a 409 returns it as it is), ``delete_file`` deletes one
    (logging a failure) and ``record`` records a key's batch in the ledgers.
    """

    relist: Callable[[int], Iterable[Any]]
    has_listing: Callable[[], bool]
    retrieve: Callable[[str], Any | None]
    cancel: Callable[[str], Any]
    delete_file: Callable[[str], None]
    record: Callable[[str, str], None]
    log: logging.Logger
    wait_seconds: float = RACE_CANCEL_WAIT_SECONDS

    def settle(self, created: dict[str, Any], ledger: Ledger | None) -> dict[str, Any]:
        """Settle the batches this call created against racing creates of the same keys.

        Best effort: a failed re-list or cancel is logged, never raised (the batches
        exist and are recorded).

        Args:
            created: key -> batch this call created.
            ledger: the caller's ledger, used when the provider lists no batches.

        Returns:
            Key -> the batch the key ends on: its own, or an older one created by a
            racing call (its own then cancelled).
        """
        if not created:
            return {}
        try:
            winners = self._from_listing(created)
            if winners is None:
                winners = self._from_ledger(created, ledger)
        except BatchAPIError as error:
            self.log.warning("could not check for a racing create of the same batch: %s", error)
            winners = {}
        losers = {key: w for key, w in winners.items() if w.id != created[key].id}
        if losers:
            self._lose({key: created[key] for key in losers}, losers)
        return {**created, **losers}

    def _from_listing(self, created: dict[str, Any]) -> dict[str, Any] | None:
        """Winners by the provider's listing order; None without a listing."""
        ours = {batch.id for batch in created.values()}
        groups, unseen = batches_by_key(self.relist(RELIST_MAX_ITEMS), created, until_ids=ours)
        if not groups and not self.has_listing():
            return None
        if unseen:
            self.log.warning(
                "batches %s are not among the %d most recent the provider lists; a racing "
                "create of the same key, if any, is not settled",
                sorted(unseen),
                RELIST_MAX_ITEMS,
            )
        winners: dict[str, Any] = {}
        for key, batch in created.items():
            group = groups.get(key, [])
            if batch.id not in {b.id for b in group}:
                continue
            winners[key] = group[0]
            if group[0].id == batch.id:  # ours is the oldest: stop any younger duplicate
                for younger in group[1:]:
                    if younger.status not in (*_STOPPED, "cancelling"):
                        self.log.warning(
                            "batch %s duplicates %s (key %s, a racing submission): cancelling it",
                            younger.id,
                            batch.id,
                            key,
                        )
                        self._cancel(younger.id)
        return winners

    def _from_ledger(self, created: dict[str, Any], ledger: Ledger | None) -> dict[str, Any]:
        """Winners by the order of the caller's ledger records (no listing)."""
        in_order = getattr(ledger, "recorded_in_order", None)
        if in_order is None:
            return {}
        recorded: dict[str, list[str]] = in_order("batch", list(created))
        winners: dict[str, Any] = {}
        for key, batch in created.items():
            for batch_id in recorded.get(key, []):
                if batch_id == batch.id:
                    winners[key] = batch
                    break
                earlier = self.retrieve(batch_id)
                if earlier is not None and key_of(earlier) == key:
                    winners[key] = earlier
                    break
        return winners

    def _lose(self, ours: dict[str, Any], winners: dict[str, Any]) -> None:
        """Racing calls created ``winners`` first: record them, cancel our duplicates,
        and delete their input files once they have stopped (unless a winner runs the
        same file)."""
        stopping: dict[str, Any] = {}
        for key, batch in ours.items():
            winner = winners[key]
            self.log.warning(
                "a racing submission created batch %s for %s first: cancelling this one's "
                "duplicate %s and using %s",
                winner.id,
                key,
                batch.id,
                winner.id,
            )
            self.record(key, winner.id)
            cancelled = self._cancel(batch.id)
            if cancelled is not None and batch.input_file_id != getattr(
                winner, "input_file_id", None
            ):
                stopping[batch.id] = cancelled
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.1
        while True:
            for batch_id, batch in list(stopping.items()):
                if batch.status in _STOPPED:
                    self.delete_file(batch.input_file_id)
                    del stopping[batch_id]
            if not stopping:
                return
            if time.monotonic() >= deadline:
                self.log.info(
                    "duplicates %s are still stopping after %.0fs: their input files are left",
                    sorted(stopping),
                    self.wait_seconds,
                )
                return
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            for batch_id in list(stopping):
                try:
                    batch = self.retrieve(batch_id)
                except BatchAPIError as error:
                    self.log.warning("could not read batch %s again: %s", batch_id, error)
                    batch = None
                if batch is None:
                    del stopping[batch_id]
                else:
                    stopping[batch_id] = batch

    def _cancel(self, batch_id: str) -> Any | None:
        try:
            return self.cancel(batch_id)
        except BatchAPIError as error:
            self.log.warning("could not cancel the duplicate batch %s: %s", batch_id, error)
            return None
