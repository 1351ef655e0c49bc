"""Ledgers: records of the files and batches a job created, found again without a listing.

The provider's listings are the usual way to find an upload or a batch made by a step
that died before recording it, but some providers lack them and they only reach the most
recent items. A ledger is written the moment a file or batch exists, so a re-run finds
it by id. Two kinds:

- ``ProcessLedger``: what this process created (``CREATED_IN_THIS_PROCESS``), always
  consulted, so a second ``submit`` of a job in the same process never pays twice;
- a caller's ledger, any object with ``recorded`` and ``record`` (the Dagster event log's
  is ``event_ledger.EventLogLedger``), which outlives the process.

Only positive facts are kept (an id that a create returned, an intent to create), never
"this provider lacks an endpoint", so a hiccup can make nothing less safe.

A caller's ledger may also keep *intents* (``keeps_intents = True``, see
``IntentLedger``): the client records ``("intent", batch key)`` before each create, so a
key with no intent was never tried and needs no listing scan. It may also answer
``recorded_in_order`` (every id recorded per key, oldest first), which settles two
racing creates where the provider has no batch listing (see ``idempotency.py``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Collection
from typing import Literal, Protocol

Kind = Literal["file", "batch", "intent"]


class Ledger(Protocol):
    """Where a caller records the files and batches it created.

    ``kind`` is ``"file"`` (keyed by upload file name) or ``"batch"`` (keyed by the
    batch's idempotency key); ``"intent"`` (keyed like a batch) only for ledgers that
    declare ``keeps_intents`` (see ``IntentLedger``). ``ProcessLedger`` sections and
    ``event_ledger.EventLogLedger`` implement it; pass one as ``ledger=`` to
    ``InferenceBatchClient.upload``, ``create``, ``submit`` or ``resubmit``.

    Example:
        >>> ledger = ProcessLedger().for_account(local_server_url, "test-key")
        >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "ledger"}}]
        >>> job = client.submit(lines, endpoint="/v1/completions", ledger=ledger)
        >>> ledger.recorded("batch", [job.shards[0].idempotency_key]) == {
        ...     job.shards[0].idempotency_key: job.batch_ids[0]}
        True
    """

    def recorded(self, kind: Kind, keys: Collection[str]) -> dict[str, str]:
        """The ids recorded for those of ``keys`` that have one.

        Args:
            kind: ``file``, ``batch`` or ``intent``.
            keys: Upload file names or batch keys.

        Returns:
            key -> id, for the keys with a record.
        """
        ...

    def record(self, kind: Kind, key: str, object_id: str) -> None:
        """Record ``object_id`` for ``key``; called as soon as the object exists.

        Args:
            kind: ``file``, ``batch`` or ``intent``.
            key: The upload's file name or the batch's key.
            object_id: The provider's id.
        """
        ...


class IntentLedger(Ledger, Protocol):
    """A ledger that also keeps intents, and so can say a key was never tried.

    ``keeps_intents`` is True, and the client gives it ``record("intent", key, ...)``
    before every create of a batch for ``key``. ``recorded("intent", keys)`` then returns
    the keys that *may* have been tried: a ledger that cannot tell for some key (records
    written before it kept intents) returns that key too, which costs a listing scan,
    never a second batch.
    """

    keeps_intents: bool


class OrderedLedger(Ledger, Protocol):
    """A ledger that can list every id recorded for a key, in the order recorded."""

    def recorded_in_order(self, kind: Kind, keys: Collection[str]) -> dict[str, list[str]]:
        """Every id recorded per key, oldest record first.

        Args:
            kind: ``file``, ``batch`` or ``intent``.
            keys: The keys asked about.

        Returns:
            key -> ids, for the keys with a record.
        """
        ...


class ProcessLedger:
    """A thread-safe ledger in memory, one section per provider account.

    Example:
        >>> ledger = ProcessLedger().for_account("http://127.0.0.1:8787/v1", "key")
        >>> ledger.record("batch", "job#s0a1:abc", "batch_1")
        >>> ledger.recorded("batch", ["job#s0a1:abc", "other"])
        {'job#s0a1:abc': 'batch_1'}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str, str], str] = {}

    def for_account(self, base_url: str, api_key: str) -> AccountLedger:
        """The section for one provider account.

        Args:
            base_url: The provider's base URL.
            api_key: The account's key (only its sha256 is kept).

        Returns:
            A ``Ledger`` over that section.
        """
        return AccountLedger(self, f"{base_url}|{hashlib.sha256(api_key.encode()).hexdigest()}")

    def _recorded(self, scope: str, kind: Kind, keys: Collection[str]) -> dict[str, str]:
        with self._lock:
            return {k: self._ids[(scope, kind, k)] for k in keys if (scope, kind, k) in self._ids}

    def _record(self, scope: str, kind: Kind, key: str, object_id: str | None) -> None:
        with self._lock:
            if object_id is None:
                self._ids.pop((scope, kind, key), None)
            else:
                self._ids[(scope, kind, key)] = object_id


class AccountLedger:
    """One provider account's section of a ``ProcessLedger`` (a ``Ledger``)."""

    def __init__(self, ledger: ProcessLedger, scope: str) -> None:
        self._ledger = ledger
        self._scope = scope

    def recorded(self, kind: Kind, keys: Collection[str]) -> dict[str, str]:
        """See ``Ledger.recorded``."""
        return self._ledger._recorded(self._scope, kind, keys)

    def record(self, kind: Kind, key: str, object_id: str) -> None:
        """See ``Ledger.record``."""
        self._ledger._record(self._scope, kind, key, object_id)

    def forget(self, kind: Kind, key: str) -> None:
        """Drop a record (the object was withdrawn).

        Args:
            kind: ``file``, ``batch`` or ``intent``.
            key: The key whose record goes.
        """
        self._ledger._record(self._scope, kind, key, None)


CREATED_IN_THIS_PROCESS = ProcessLedger()
