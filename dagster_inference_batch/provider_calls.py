"""The provider as the client calls it: the openai SDK with this package's retries.

``ProviderCalls`` holds what every part of the client shares: one retried call, listings a
provider may lack (remembered per client), a bounded thread pool, the batch and file calls
used by more than one part (retrieve, cancel, delete, list) and the ledger of what this
process created. It knows nothing of jobs or shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import openai
import orjson

from .errors import BatchAPIError
from .ledger import AccountLedger, Kind, Ledger
from .retries import RetryPolicy

T = TypeVar("T")
BATCH_LISTING = "GET /batches"
FILE_LISTING = "GET /files"
LISTING_PAGE = 100  # batches per listing call (the most providers allow)
# A listing answered 404 is asked once more before it counts as absent; these answers
# say "not offered" outright.
NOT_OFFERED = (405, 501)


class ProviderCalls:
    """One client's calls to the provider, retried by ``retry``.

    Args:
        sdk: The openai SDK client (its own retries off).
        base_url: The provider's base URL, for log messages.
        api_key: Redacted from every error message.
        retry: The retry policy.
        concurrency: At most this many calls at once in ``map``.
        log: Where retries and notices go.
        process_ledger: This process's record of created files and batches.
    """

    def __init__(
        self,
        sdk: openai.OpenAI,
        *,
        base_url: str,
        api_key: str,
        retry: RetryPolicy,
        concurrency: int,
        log: logging.Logger,
        process_ledger: AccountLedger,
    ) -> None:
        self.sdk = sdk
        self.base_url = base_url
        self.retry = retry
        self.concurrency = max(1, concurrency)
        self.log = log
        self.process_ledger = process_ledger
        self._api_key = api_key
        # Listings this provider answered "not offered" (twice, or 405/501): this client
        # only, so that one hiccup never switches idempotency off for anyone else.
        self.absent_endpoints: set[str] = set()

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def call(
        self, what: str, fn: Callable[[], T], before_retry: Callable[[], T | None] | None = None
    ) -> T:
        """``fn()`` with retries (see ``RetryPolicy.call``).

        Args:
            what: Names the call in messages.
            fn: The call.
            before_retry: Runs before each retry; a value it returns is the answer.

        Returns:
            What ``fn`` (or ``before_retry``) returned.

        Raises:
            BatchAPIError: A refusal, or every try failed.
        """
        return self.retry.call(
            fn, what=what, before_retry=before_retry, logger=self.log, redact=self.redact
        )

    def listing(self, endpoint: str, fetch: Callable[[], T]) -> T | None:
        """One page of a listing, or None when the provider does not offer it.

        A 404 is asked once more before the endpoint counts as absent (for this client
        only); 405 and 501 say so outright. Any other failure is raised: a lookup that
        could not be made must not pass for "nothing there".

        Args:
            endpoint: Names the listing (``GET /batches``, ``GET /files``).
            fetch: Reads one page.

        Returns:
            The page, or None when the listing is absent.

        Raises:
            BatchAPIError: The listing failed otherwise.
        """
        if endpoint in self.absent_endpoints:
            return None
        for asked in (1, 2):
            try:
                return self.call(endpoint, fetch)
            except BatchAPIError as error:
                if error.status_code in NOT_OFFERED:
                    break
                if error.status_code != 404:
                    raise
                if asked == 1:
                    time.sleep(self.retry.backoff_seconds)
        self.absent_endpoints.add(endpoint)
        self.log.warning("%s does not offer %s; carrying on without it", self.base_url, endpoint)
        return None

    def has_batch_listing(self) -> bool:
        """False once the provider was found to offer no batch listing."""
        return BATCH_LISTING not in self.absent_endpoints

    def map(self, fn: Callable[[Any], T], items: list[Any]) -> list[T]:
        """``[fn(item) for item in items]``, at most ``concurrency`` at once."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def record(self, kind: Kind, key: str, object_id: str, ledger: Ledger | None) -> None:
        """Record a created file or batch in this process's ledger and the caller's."""
        self.process_ledger.record(kind, key, object_id)
        if ledger is not None:
            ledger.record(kind, key, object_id)

    def retrieve_batch(self, batch_id: str) -> Any:
        """The provider's batch object."""
        return self.call(f"retrieve {batch_id}", lambda: self.sdk.batches.retrieve(batch_id))

    def retrieve_batch_or_none(self, batch_id: str) -> Any | None:
        """The provider's batch object, or None when it answers 404."""
        try:
            return self.retrieve_batch(batch_id)
        except BatchAPIError as error:
            if error.status_code == 404:
                return None
            raise

    def cancel_batch(self, batch_id: str) -> Any:
        """Cancel one batch; one that finished meanwhile (409) is returned as it is."""
        try:
            return self.call(f"cancel {batch_id}", lambda: self.sdk.batches.cancel(batch_id))
        except BatchAPIError as error:
            if error.status_code != 409:  # 409: it finished meanwhile; nothing to cancel
                raise
            return self.retrieve_batch(batch_id)

    def delete_file(self, file_id: str) -> None:
        """Delete one file; a failure is logged, not raised."""
        try:
            self.call(f"delete {file_id}", lambda: self.sdk.files.delete(file_id))
        except BatchAPIError as error:
            self.log.warning("could not delete %s: %s", file_id, error)

    def list_batches(
        self,
        *,
        limit: int = 100,
        after: str | None = None,
        max_items: int | None = None,
        as_dicts: bool = False,
    ) -> Iterator[Any]:
        """Batches, newest first, following pages (see ``InferenceBatchClient.list_batches``).

        Args:
            limit: Batches per page (at most 100).
            after: Start after this batch id.
            max_items: Stop after this many.
            as_dicts: Yield each batch as the JSON dict the provider sent, parsed with
                orjson, instead of the SDK's object (building those costs about a
                millisecond a batch: most of a 10,000-batch listing's CPU).

        Yields:
            The provider's batch objects (or dicts); nothing when there is no batch listing.
        """
        seen = 0
        while True:
            page = self.listing(BATCH_LISTING, lambda a=after: self._batch_page(limit, a, as_dicts))
            if page is None:
                return
            data, has_more = page
            for batch in data:
                yield batch
                seen += 1
                if max_items is not None and seen >= max_items:
                    return
            if not data or not has_more:
                return
            after = data[-1]["id"] if as_dicts else data[-1].id

    def _batch_page(self, limit: int, after: str | None, as_dicts: bool) -> tuple[list[Any], bool]:
        """One page of the batch listing: its batches and whether more follow."""
        query: dict[str, Any] = {"limit": min(limit, 100), **({"after": after} if after else {})}
        if not as_dicts:
            page = self.sdk.batches.list(**query)
            return page.data, bool(getattr(page, "has_more", False))
        body = orjson.loads(self.sdk.batches.with_raw_response.list(**query).content)
        return list(body.get("data") or []), bool(body.get("has_more", False))

    def find_listed_batches(
        self,
        batch_ids: Collection[str],
        *,
        created_since: int | None,
        deadline: float,
        newest_first: Sequence[tuple[str, int]] = (),
    ) -> dict[str, Any]:
        """The batches of ``batch_ids`` found in the provider's listing, 100 per call.

        The listing runs newest first, so a scan stops at the first batch created before
        ``created_since`` (none of ``batch_ids`` can come after it), once every id was
        found, after reading twice as many batches as asked for plus a page (other
        batches of the account must not make it dearer than the retrieves it replaces),
        at ``deadline`` (``time.monotonic()``), or when the listing is not offered or
        fails (logged). A listed batch that is not asked for is ignored; one not found
        is left for the caller to retrieve.

        With ``newest_first`` (the wanted ``(id, created_at)``, newest first) over more
        than two pages, the listing is read in up to ``concurrency`` slices at once: each
        starts ``after`` the last id of the slice before it, so a full pass takes about
        ``pages / concurrency`` round trips instead of ``pages``.

        Args:
            batch_ids: The batches wanted.
            created_since: The oldest ``created_at`` among them (unix seconds), if known.
            deadline: When to stop reading pages.
            newest_first: The wanted batches' ids and ``created_at``, newest first.

        Returns:
            The provider's batches found (the JSON dicts it sent), by id.
        """
        wanted = set(batch_ids)
        if len(newest_first) <= 2 * LISTING_PAGE or self.concurrency < 2:
            return self._scan_listing(wanted, wanted, None, created_since, deadline)
        slices = min(self.concurrency, -(-len(newest_first) // LISTING_PAGE))
        size = -(-len(newest_first) // slices)
        parts = [newest_first[i : i + size] for i in range(0, len(newest_first), size)]
        starts = [None] + [part[-1][0] for part in parts[:-1]]
        # a slice but the last ends at its own last id; created_at is only roughly in
        # listing order (batches created at once), so only the last stops on it
        oldest = [None] * (len(parts) - 1) + [created_since]
        with ThreadPoolExecutor(len(parts)) as pool:
            scans = pool.map(
                lambda part, after, since: self._scan_listing(
                    wanted, {i for i, _ in part}, after, since, deadline
                ),
                parts,
                starts,
                oldest,
            )
            return {k: v for scan in scans for k, v in scan.items()}

    def _scan_listing(
        self,
        wanted: set[str],
        own: set[str],
        after: str | None,
        created_since: int | None,
        deadline: float,
    ) -> dict[str, Any]:
        """The batches of ``wanted`` listed from ``after`` on, until every one of ``own``
        was seen or another stop of ``find_listed_batches``."""
        found: dict[str, Any] = {}
        left, budget = len(own), 2 * len(own) + LISTING_PAGE
        try:
            listing = self.list_batches(limit=LISTING_PAGE, after=after, as_dicts=True)
            for read, batch in enumerate(listing, start=1):
                if batch["id"] in wanted:
                    found[batch["id"]] = batch
                    left -= batch["id"] in own
                created = batch.get("created_at")
                too_old = created_since is not None and created is not None
                if left == 0 or (too_old and created < created_since):
                    break
                if read >= budget or (read % LISTING_PAGE == 0 and time.monotonic() >= deadline):
                    break
        except BatchAPIError as error:
            self.log.warning("%s: reading it one batch at a time instead", error)
        return found
