"""The batches this process created, by idempotency key: found again without a listing.

A provider whose batch listing is missing or failing cannot tell the client that a
batch for a key already exists. What this process created itself it knows for sure, so
a second ``submit`` of the same job in the same process reuses those batches whatever
the listing says. Only positive facts are kept (a batch id that a create returned), never
"this provider lacks an endpoint", so a hiccup can make nothing less safe. Across
processes the Dagster event log plays this part (``event_ledger.py``).
"""

from __future__ import annotations

import hashlib
import threading


class CreatedBatches:
    """Thread-safe map of (provider scope, batch idempotency key) to batch id.

    Example:
        >>> ledger = CreatedBatches()
        >>> scope = ledger.scope("http://127.0.0.1:8787/v1", "key")
        >>> ledger.add(scope, "job#s0a1:abc", "batch_1")
        >>> ledger.get(scope, "job#s0a1:abc")
        'batch_1'
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], str] = {}

    @staticmethod
    def scope(base_url: str, api_key: str) -> str:
        """One provider account: its URL and a digest of the key (never the key)."""
        return f"{base_url}|{hashlib.sha256(api_key.encode()).hexdigest()[:16]}"

    def get(self, scope: str, key: str) -> str | None:
        with self._lock:
            return self._ids.get((scope, key))

    def add(self, scope: str, key: str, batch_id: str) -> None:
        with self._lock:
            self._ids[(scope, key)] = batch_id

    def discard(self, scope: str, key: str) -> None:
        with self._lock:
            self._ids.pop((scope, key), None)


CREATED_IN_THIS_PROCESS = CreatedBatches()
