"""InferenceBatchClient: submit, watch and collect Batch API jobs with the openai SDK.

Usable without Dagster. Every call to the provider goes through the openai SDK with the
SDK's own retries switched off: this module retries instead, so that a create that may
have gone through is looked up by its idempotency key before it is tried again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import openai
import orjson
import pandas as pd

from .consistency import DEFAULT_FINAL_STATE_WAIT_SECONDS, absent_files
from .create_options import check_create_options, is_loopback
from .errors import (
    BatchAPIError,
    BatchFailedError,
    BatchWaitTimeout,
    InvalidBatchInput,
    PartialCreateError,
)
from .idempotency import (
    RELIST_PAGE,
    RaceCheck,
    batches_by_key,
    possibly_tried,
    record_intent,
)
from .job import BatchJob, BatchShard
from .ledger import CREATED_IN_THIS_PROCESS, Ledger
from .request_lines import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_REQUESTS,
    EncodedRequests,
    encode_requests,
    shard_requests,
    write_jsonl,
)
from .results import (
    ResultFile,
    collect_results,
    leftover_custom_ids,
    mark_unanswered,
    parse_result_files,
)
from .retries import DEFAULT_BACKOFF_SECONDS, DEFAULT_MAX_RETRIES, RetryPolicy

DEFAULT_BASE_URL = "https://batch.inference.net/v1"
API_KEY_ENV = "INFERENCE_API_KEY"
BASE_URL_ENV = "INFERENCE_BASE_URL"
DEFAULT_TIMEOUT_SECONDS = 120.0
DEFAULT_LIST_SCAN_LIMIT = 500
DEFAULT_CONCURRENCY = 8
LOCAL_SERVER_BEARER = "local-server"  # the local server takes any non-empty bearer
_FINAL_TIME_FIELDS = ("completed_at", "failed_at", "expired_at", "cancelled_at")
MAX_IDEMPOTENCY_KEY_CHARS = 256  # batch keys must fit a 512-character metadata value
# A listing answered 404 is asked once more before it counts as absent; these answers
# say "not offered" outright.
_NOT_OFFERED = (405, 501)
SHORT_DOWNLOAD_RETRIES = 2  # extra downloads of result files holding fewer lines than counted
_T = TypeVar("_T")

RequestsLike = pd.DataFrame | Iterable[dict[str, Any]] | str | Path | EncodedRequests


def _batch_key(job_key: str, shard_index: int, attempt: int, sha256: str) -> str:
    """The key one batch carries: job, shard, attempt and the shard's content, so a batch
    is reused only for the very same request lines."""
    return f"{job_key}#s{shard_index}a{attempt}:{sha256[:16]}"


def _upload_name(batch_key: str) -> str:
    return f"dib-{hashlib.sha256(batch_key.encode()).hexdigest()[:32]}.jsonl"


class InferenceBatchClient:
    """A Batch API client that never pays twice and never loses a finished result.

    It takes plain values and reads no environment: ``from_env()`` does that. Without
    ``api_key`` it talks only to a server on loopback (the package's local server).

    Example:
        >>> client = InferenceBatchClient(base_url="http://127.0.0.1:8787/v1")  # doctest: +SKIP
        >>> job = client.submit([{"custom_id": "a", "method": "POST",
        ...     "url": "/v1/chat/completions",
        ...     "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}])
        ... # doctest: +SKIP
        >>> client.results(client.wait(job, poll_interval=1)).status.tolist()  # doctest: +SKIP
        ['succeeded']
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        *,
        max_requests_per_batch: int = DEFAULT_MAX_REQUESTS,
        max_bytes_per_batch: int = DEFAULT_MAX_BYTES,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        list_scan_limit: int = DEFAULT_LIST_SCAN_LIMIT,
        concurrency: int = DEFAULT_CONCURRENCY,
        completion_window: str = "24h",
        final_state_wait_seconds: float = DEFAULT_FINAL_STATE_WAIT_SECONDS,
        delete_files_after_results: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        if not api_key:
            if not is_loopback(base_url):
                raise ValueError(
                    f"no API key for {base_url}: pass api_key=, or build the client with "
                    f"InferenceBatchClient.from_env() to read {API_KEY_ENV}"
                )
            api_key = LOCAL_SERVER_BEARER
        self._api_key = api_key
        self.base_url = base_url
        self.max_requests_per_batch = max_requests_per_batch
        self.max_bytes_per_batch = max_bytes_per_batch
        self.list_scan_limit = list_scan_limit
        self.concurrency = max(1, concurrency)
        self.completion_window = completion_window
        self.final_state_wait_seconds = final_state_wait_seconds
        self.delete_files_after_results = delete_files_after_results
        self.retry = RetryPolicy(max_retries=max_retries, backoff_seconds=backoff_seconds)
        self.log = logger or logging.getLogger("dagster_inference_batch")
        self._openai = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        # Listings this provider answered "not offered" (twice, or 405/501): this client
        # only, so that one hiccup never switches idempotency off for anyone else.
        self._absent_endpoints: set[str] = set()
        self._process_ledger = CREATED_IN_THIS_PROCESS.for_account(base_url, api_key)
        # When this client first saw a final batch whose files disagree with its counts.
        self._unsettled_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self.idempotency = "listing"
        """How the last ``create`` looked for batches already made: ``listing`` (the
        provider's batch listing), ``ledger`` (no listing; the caller's record of created
        batches) or ``degraded`` (neither: a crash between create and its record could
        cost a second batch)."""

    @classmethod
    def from_env(cls, **options: Any) -> InferenceBatchClient:
        """A client configured from the environment: ``INFERENCE_API_KEY`` and, if set,
        ``INFERENCE_BASE_URL`` (else Inference.net). ``options`` are the other keyword
        arguments of the constructor.

        Example:
            >>> client = InferenceBatchClient.from_env(max_retries=3)  # doctest: +SKIP
        """
        api_key = os.environ.get(API_KEY_ENV) or None
        base_url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if api_key is None and not is_loopback(base_url):
            raise ValueError(
                f"{API_KEY_ENV} is not set: export the key for {base_url} "
                f"(or set {BASE_URL_ENV} to a local Batch API server)"
            )
        return cls(api_key=api_key, base_url=base_url, **options)

    def __repr__(self) -> str:
        return f"InferenceBatchClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._openai.close()

    def __enter__(self) -> InferenceBatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _call(
        self, what: str, fn: Callable[[], _T], before_retry: Callable[[], _T | None] | None = None
    ) -> _T:
        return self.retry.call(
            fn, what=what, before_retry=before_retry, logger=self.log, redact=self._redact
        )

    def _listing(self, endpoint: str, fetch: Callable[[], _T]) -> _T | None:
        """One page of a listing, or None when the provider does not offer it.

        A 404 is asked once more before the endpoint counts as absent (for this client
        only); 405 and 501 say so outright. Any other failure is raised: a lookup that
        could not be made must not pass for "nothing there".
        """
        if endpoint in self._absent_endpoints:
            return None
        for asked in (1, 2):
            try:
                return self._call(endpoint, fetch)
            except BatchAPIError as error:
                if error.status_code in _NOT_OFFERED:
                    break
                if error.status_code != 404:
                    raise
                if asked == 1:
                    time.sleep(self.retry.backoff_seconds)
        self._absent_endpoints.add(endpoint)
        self.log.warning("%s does not offer %s; carrying on without it", self.base_url, endpoint)
        return None

    def _map(self, fn: Callable[[Any], _T], items: list[Any]) -> list[_T]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    # --------------------------------------------------------------- submission

    def prepare(self, requests: RequestsLike, *, endpoint: str | None = None) -> EncodedRequests:
        """Validate and encode request lines (raises ``InvalidBatchInput``)."""
        if isinstance(requests, EncodedRequests):
            if endpoint is not None and endpoint != requests.endpoint:
                raise InvalidBatchInput(
                    [f"endpoint {endpoint!r} differs from the requests' {requests.endpoint!r}"]
                )
            return requests
        return encode_requests(requests, endpoint=endpoint)

    def check_create_options(
        self, metadata: dict[str, str] | None = None, *, webhook_url: str | None = None
    ) -> None:
        """Raise ``InvalidBatchInput`` for metadata, ``completion_window`` or
        ``webhook_url`` that the provider would refuse at create, before any upload."""
        check_create_options(
            metadata or {},
            completion_window=self.completion_window,
            webhook_url=webhook_url,
            base_url=self.base_url,
        )

    def upload(
        self,
        requests: RequestsLike,
        *,
        endpoint: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        ledger: Ledger | None = None,
    ) -> BatchJob:
        """Validate, shard and upload the request lines; no batch is created yet.

        Nothing is uploaded when the lines or the create options (metadata, completion
        window) are invalid. A shard already uploaded under the same idempotency key (by
        an earlier, interrupted call) is reused: found in ``ledger`` (see ``ledger.py``),
        among this process's uploads, or in the provider's file listing.

        Example:
            >>> job = client.upload(frame, metadata={"team": "search"})  # doctest: +SKIP
            >>> job = client.create(job)  # doctest: +SKIP
        """
        encoded = self.prepare(requests, endpoint=endpoint)
        metadata = dict(metadata or {})
        self.check_create_options(metadata)
        digest = encoded.sha256()
        job_key = idempotency_key or f"sha256:{digest[:32]}"
        if len(job_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidBatchInput(
                [
                    f"idempotency_key has {len(job_key)} characters; at most "
                    f"{MAX_IDEMPOTENCY_KEY_CHARS} fit in the provider's metadata"
                ]
            )
        job = BatchJob(
            endpoint=encoded.endpoint,
            idempotency_key=job_key,
            metadata=metadata,
            request_count=len(encoded),
            submitted_at=time.time(),
            sha256=digest,
        )
        job.shards = self._upload_shards(encoded, job_key, attempt=1, ledger=ledger)
        return job

    def _upload_shards(
        self, encoded: EncodedRequests, job_key: str, attempt: int, ledger: Ledger | None
    ) -> list[BatchShard]:
        shards = shard_requests(
            encoded, max_requests=self.max_requests_per_batch, max_bytes=self.max_bytes_per_batch
        )
        keys = [_batch_key(job_key, s.index, attempt, s.sha256) for s in shards]
        wanted = {_upload_name(key): s.nbytes for key, s in zip(keys, shards, strict=True)}
        uploaded = self._recorded_files(wanted, ledger)
        if len(uploaded) < len(wanted):
            listed = self._uploaded_files()  # one listing for every shard
            uploaded.update(
                {name: listed[(name, n)] for name, n in wanted.items() if (name, n) in listed}
            )
        with tempfile.TemporaryDirectory(prefix="dib-upload-") as tmp:

            def upload_one(numbered: tuple[str, Any]) -> BatchShard:
                key, shard = numbered
                path = Path(tmp) / _upload_name(key)
                file_id = uploaded.get(path.name)
                if file_id:
                    self.log.info("reusing uploaded file %s (%s)", file_id, path.name)
                else:
                    write_jsonl(encoded, path, shard.positions)
                    file_id = self._upload_file(path, shard.nbytes, ledger)
                return BatchShard(
                    index=shard.index,
                    attempt=attempt,
                    idempotency_key=key,
                    file_id=file_id,
                    request_count=shard.request_count,
                    bytes=shard.nbytes,
                    sha256=shard.sha256,
                    model=shard.model,
                )

            return self._map(upload_one, list(zip(keys, shards, strict=True)))

    def _recorded_files(self, wanted: dict[str, int], ledger: Ledger | None) -> dict[str, str]:
        """Uploads recorded under these names (by the caller or by this process) that
        the provider still holds with the same size: fetched by id, no listing."""
        recorded = {
            **self._process_ledger.recorded("file", list(wanted)),
            **(ledger.recorded("file", list(wanted)) if ledger is not None else {}),
        }

        def still_there(item: tuple[str, str]) -> bool:
            name, file_id = item
            try:
                stored = self._call(
                    f"retrieve {file_id}", lambda: self._openai.files.retrieve(file_id)
                )
            except BatchAPIError as error:
                if error.status_code == 404:
                    return False
                raise
            return stored.filename == name and stored.bytes == wanted[name]

        kept = self._map(still_there, list(recorded.items()))
        return {
            name: file_id for (name, file_id), ok in zip(recorded.items(), kept, strict=True) if ok
        }

    def _upload_file(self, path: Path, nbytes: int, ledger: Ledger | None) -> str:
        def find() -> str | None:  # an upload that failed may still have gone through
            return self._uploaded_files().get((path.name, nbytes))

        def create() -> str:
            with path.open("rb") as handle:
                return self._openai.files.create(file=(path.name, handle), purpose="batch").id

        file_id = self._call(f"upload {path.name}", create, before_retry=find)
        self._record("file", path.name, file_id, ledger)
        self.log.info("uploaded %s as %s (%d bytes)", path.name, file_id, nbytes)
        return file_id

    def _record(self, kind: Any, key: str, object_id: str, ledger: Ledger | None) -> None:
        self._process_ledger.record(kind, key, object_id)
        if ledger is not None:
            ledger.record(kind, key, object_id)

    def _uploaded_files(self) -> dict[tuple[str, int], str]:
        """Recent batch input files (one page), by (filename, bytes)."""
        page = self._listing(
            "GET /files", lambda: self._openai.files.list(purpose="batch", limit=100)
        )
        if page is None:
            return {}
        return {(item.filename, item.bytes): item.id for item in reversed(page.data)}

    def create(
        self,
        job: BatchJob,
        *,
        webhook_url: str | None = None,
        ledger: Ledger | None = None,
    ) -> BatchJob:
        """Create a batch for every uploaded shard that has none, idempotently.

        A shard's batch is looked for first in ``ledger`` (the caller's record, such as
        the Dagster event log's) and among the batches this process created, fetched by
        id; then in the provider's listing, unless ``ledger`` keeps intents and holds
        none for the key (never tried: see ``idempotency.py``). Only a shard found
        nowhere gets a new batch: an intent is recorded first, the batch as soon as the
        create returns. One re-list of the most recent batches then settles a racing
        create of the same key (the oldest batch wins; a younger duplicate made here is
        cancelled). ``self.idempotency`` says how the lookup was made.

        Example:
            >>> job = client.create(client.upload(frame, ledger=ledger), ledger=ledger)
            ... # doctest: +SKIP
        """
        self.check_create_options(webhook_url=webhook_url)
        job = _copy(job)
        pending = [s for s in job.shards if s.batch_id is None]
        found = self._recorded_batches(pending, ledger)
        unknown = {s.idempotency_key for s in pending if s.idempotency_key not in found}
        tried = possibly_tried(ledger, unknown) if unknown else set()
        if tried:
            found.update(self._find_batches(tried))
            self._note_idempotency(ledger is not None)
        elif pending:
            self.idempotency = "ledger"  # found by recorded id, or never tried
        to_create = [s for s in pending if s.idempotency_key not in found]
        outcomes = self._map(
            lambda s: _outcome(lambda: self._create_batch(job, s, webhook_url, ledger)), to_create
        )
        created = {
            s.idempotency_key: o
            for s, o in zip(to_create, outcomes, strict=True)
            if not isinstance(o, BatchAPIError)
        }
        found.update(self._race_check(ledger).settle(created, ledger))
        errors = [o for o in outcomes if isinstance(o, BatchAPIError)]
        for shard in pending:
            batch = found.get(shard.idempotency_key)
            if batch is None:
                continue
            if shard.idempotency_key in created and batch is not created[shard.idempotency_key]:
                shard.file_id = batch.input_file_id  # a racer's; ours is deleted with its batch
            self._adopt_input_file(shard, batch)
            _apply_batch(shard, batch)
        if errors:
            raise PartialCreateError(job, errors[0]) from errors[0]
        return job

    def _race_check(self, ledger: Ledger | None) -> RaceCheck:
        def retrieve(batch_id: str) -> Any | None:
            try:
                return self._retrieve(batch_id)
            except BatchAPIError as error:
                if error.status_code == 404:
                    return None
                raise

        return RaceCheck(
            relist=lambda max_items: self.list_batches(limit=RELIST_PAGE, max_items=max_items),
            has_listing=lambda: "GET /batches" not in self._absent_endpoints,
            retrieve=retrieve,
            cancel=self._cancel_batch,
            delete_file=self._delete_file,
            record=lambda key, batch_id: self._record("batch", key, batch_id, ledger),
            log=self.log,
        )

    def _recorded_batches(self, shards: list[BatchShard], ledger: Ledger | None) -> dict[str, Any]:
        """Batches recorded for the shards' keys (by the caller or by this process) that
        the provider still has under that key: fetched by id, no listing."""
        keys = [s.idempotency_key for s in shards]
        wanted = {
            **self._process_ledger.recorded("batch", keys),
            **(ledger.recorded("batch", keys) if ledger is not None else {}),
        }

        def fetch(item: tuple[str, str]) -> Any | None:
            key, batch_id = item
            try:
                batch = self._retrieve(batch_id)
            except BatchAPIError as error:
                if error.status_code == 404:
                    return None
                raise
            if (batch.metadata or {}).get("idempotency_key") != key:
                return None
            self.log.info("reusing batch %s for %s (recorded when it was created)", batch.id, key)
            return batch

        fetched = self._map(fetch, list(wanted.items()))
        return {key: batch for key, batch in zip(wanted, fetched, strict=True) if batch}

    def _adopt_input_file(self, shard: BatchShard, batch: Any) -> None:
        """A reused batch runs the file uploaded first: the shard takes that file, and a
        second upload of the same lines (made when no listing could find the first) is
        deleted rather than left behind."""
        input_file_id = getattr(batch, "input_file_id", None)
        if not input_file_id or input_file_id == shard.file_id:
            return
        redundant, shard.file_id = shard.file_id, input_file_id
        self.log.info(
            "batch %s runs %s: deleting the second upload %s", batch.id, input_file_id, redundant
        )
        self._delete_file(redundant)

    def _note_idempotency(self, has_ledger: bool) -> None:
        if "GET /batches" not in self._absent_endpoints:
            self.idempotency = "listing"
        elif has_ledger:
            self.idempotency = "ledger"
        else:
            self.idempotency = "degraded"
            self.log.warning(
                "%s offers no batch listing and no record of created batches was given: "
                "idempotency is degraded, and a crash between a create and its record can "
                "now cost a second paid batch",
                self.base_url,
            )

    def _create_batch(
        self,
        job: BatchJob,
        shard: BatchShard,
        webhook_url: str | None,
        ledger: Ledger | None,
    ) -> Any:
        def find() -> Any | None:  # a create that failed may still have gone through
            return self._find_batches({shard.idempotency_key}).get(shard.idempotency_key)

        metadata = {
            **job.metadata,
            "idempotency_key": shard.idempotency_key,
            "shard": str(shard.index),
            "attempt": str(shard.attempt),
        }
        extra_body = {"webhook_url": webhook_url} if webhook_url else None

        def create() -> Any:
            return self._openai.batches.create(
                input_file_id=shard.file_id,
                endpoint=job.endpoint,  # type: ignore[arg-type]
                completion_window=self.completion_window,  # type: ignore[arg-type]
                metadata=metadata,
                extra_body=extra_body,
            )

        record_intent(ledger, shard.idempotency_key)
        batch = self._call(f"create batch for shard {shard.index}", create, before_retry=find)
        self._record("batch", shard.idempotency_key, batch.id, ledger)
        self.log.info(
            "created batch %s (shard %d, attempt %d, %d requests)",
            batch.id,
            shard.index,
            shard.attempt,
            shard.request_count,
        )
        return batch

    def _find_batches(self, keys: set[str]) -> dict[str, Any]:
        """Batches among the most recent ``list_scan_limit`` that carry one of ``keys``:
        for each key the oldest listed (the one a racing create settles on)."""
        groups, _ = batches_by_key(self.list_batches(max_items=self.list_scan_limit), keys)
        found = {key: batches[0] for key, batches in groups.items()}
        for key, batch in found.items():
            self.log.info("reusing batch %s for %s", batch.id, key)
        return found

    def submit(
        self,
        requests: RequestsLike,
        *,
        endpoint: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        ledger: Ledger | None = None,
    ) -> BatchJob:
        """Validate, shard, upload and create: the one-call path. Idempotent (see
        ``upload`` and ``create`` for how earlier files and batches are found again).

        Everything the provider would refuse is checked before the upload. Should the
        provider still refuse a create (a 4xx), nothing is left behind: batches this call
        created are cancelled and the uploaded files deleted before the error is raised.
        """
        self.check_create_options(metadata, webhook_url=webhook_url)
        job = self.upload(
            requests,
            endpoint=endpoint,
            metadata=metadata,
            idempotency_key=idempotency_key,
            ledger=ledger,
        )
        try:
            return self.create(job, webhook_url=webhook_url, ledger=ledger)
        except PartialCreateError as error:
            if _is_refusal(error):
                self._withdraw(error.job)
            raise

    def _withdraw(self, job: BatchJob) -> None:
        """Cancel the job's batches and delete its input files: a refused submission."""
        self.log.warning(
            "the provider refused a create: cancelling batches %s and deleting %d uploaded file(s)",
            job.batch_ids,
            len(job.shards),
        )
        for shard in job.shards:
            self._process_ledger.forget("batch", shard.idempotency_key)
            self._process_ledger.forget("file", _upload_name(shard.idempotency_key))
        if job.batch_ids:
            self.cancel(job)
        self.delete_files(job, inputs_only=True)

    # ------------------------------------------------------------------ progress

    def refresh(self, job: BatchJob) -> BatchJob:
        """Fetch every unfinished shard's batch (concurrently); returns an updated copy.

        A final status is taken only when the batch's files agree with its counts (see
        ``consistency.absent_files``); until then, for at most
        ``final_state_wait_seconds`` after the provider's final timestamp, the shard
        stays ``finalizing`` and is read again on the next refresh.
        """
        job = _copy(job)
        live = [s for s in job.shards if s.batch_id and not s.is_final]
        batches = self._map(lambda s: self._retrieve(s.batch_id), live)
        for shard, batch in zip(live, batches, strict=True):
            _apply_batch(shard, batch)
            self._settle(shard)
        return job

    def _settle(self, shard: BatchShard) -> None:
        """Hold back a final status whose files disagree with its counts, for a while."""
        absent = absent_files(shard)
        batch_id = shard.batch_id or ""
        if not absent:
            self._unsettled_since.pop(batch_id, None)
            return
        with self._lock:
            first_seen = self._unsettled_since.setdefault(batch_id, time.time())
        waited = time.time() - min(first_seen, shard.finished_at or first_seen)
        counts = shard.request_counts
        said = (
            f"batch {batch_id} is {shard.status} with {counts.get('completed', 0)} completed "
            f"and {counts.get('failed', 0)} failed requests but no {' or '.join(absent)}"
        )
        if waited < self.final_state_wait_seconds:
            self.log.info("%s yet; reading it again (waited %.0fs)", said, waited)
            shard.status = "finalizing"
            return
        self.log.warning(
            "%s after %.0fs; taking it as final: requests without a line count as missing",
            said,
            waited,
        )

    def _retrieve(self, batch_id: str) -> Any:
        return self._call(f"retrieve {batch_id}", lambda: self._openai.batches.retrieve(batch_id))

    def wait(
        self, job: BatchJob, *, poll_interval: float = 10.0, timeout: float | None = None
    ) -> BatchJob:
        """Refresh until every shard is final.

        Raises ``BatchWaitTimeout`` after ``timeout`` seconds; the batches keep running.
        """
        if any(s.batch_id is None for s in job.current_shards):
            raise ValueError("the job has uploaded files but no batches yet: create(job) first")
        started = time.monotonic()
        job = self.refresh(job)
        while not job.is_final:
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                raise BatchWaitTimeout(
                    f"batches {', '.join(job.batch_ids)} still {job.status} after "
                    f"{waited:.1f}s (timeout {timeout}s); they keep running at the provider"
                )
            time.sleep(poll_interval if timeout is None else min(poll_interval, timeout - waited))
            job = self.refresh(job)
        return job

    def cancel(self, job: BatchJob) -> BatchJob:
        """Ask the provider to cancel every unfinished batch; finished results are kept.

        Example:
            >>> job = client.wait(client.cancel(job))  # doctest: +SKIP
            >>> client.results(job).status.value_counts()  # doctest: +SKIP
        """
        job = _copy(job)
        live = [s for s in job.current_shards if s.batch_id and not s.is_final]
        batches = self._map(lambda s: self._cancel_batch(s.batch_id), live)
        for shard, batch in zip(live, batches, strict=True):
            _apply_batch(shard, batch)
        return job

    def _cancel_batch(self, batch_id: str) -> Any:
        """Cancel one batch; one that finished meanwhile (409) is returned as it is."""
        try:
            return self._call(f"cancel {batch_id}", lambda: self._openai.batches.cancel(batch_id))
        except BatchAPIError as error:
            if error.status_code != 409:  # 409: it finished meanwhile; nothing to cancel
                raise
            return self._retrieve(batch_id)

    def list_batches(
        self, *, limit: int = 100, after: str | None = None, max_items: int | None = None
    ) -> Iterator[Any]:
        """Batches at the provider, newest first, following ``limit``/``after`` pages.

        Yields nothing when the provider does not offer a batch listing.
        """
        seen = 0
        while True:
            page = self._listing(
                "GET /batches",
                lambda a=after: self._openai.batches.list(
                    limit=min(limit, 100), **({"after": a} if a else {})
                ),
            )
            if page is None:
                return
            for batch in page.data:
                yield batch
                seen += 1
                if max_items is not None and seen >= max_items:
                    return
            if not page.data or not getattr(page, "has_more", False):
                return
            after = page.data[-1].id

    # ------------------------------------------------------------------- results

    def _download(self, file_id: str, path: Path) -> Path:
        def fetch() -> Path:
            with self._openai.files.with_streaming_response.content(file_id) as response:
                with path.open("wb") as handle:
                    for chunk in response.iter_bytes(chunk_size=1 << 20):
                        handle.write(chunk)
            return path

        return self._call(f"download {file_id}", fetch)

    def _download_result_files(self, shards: list[BatchShard], folder: Path) -> list[ResultFile]:
        """Each shard's output and error files. Files holding fewer lines than the
        shard's counts promise are downloaded again (``SHORT_DOWNLOAD_RETRIES`` times)."""

        def fetch(numbered: tuple[int, BatchShard]) -> list[ResultFile]:
            number, shard = numbered
            promised = sum(
                int(shard.request_counts.get(k, 0) or 0) for k in ("completed", "failed")
            )
            for tries in range(SHORT_DOWNLOAD_RETRIES + 1):
                files = [
                    ResultFile(
                        path=self._download(file_id, folder / f"result-{number}-{kind}.jsonl"),
                        kind=kind,
                        batch_id=shard.batch_id or "",
                        attempt=shard.attempt,
                    )
                    for kind, file_id in (
                        ("output", shard.output_file_id),
                        ("error", shard.error_file_id),
                    )
                    if file_id
                ]
                lines = sum(_count_lines(f.path) for f in files)
                if lines >= promised:
                    return files
                if tries < SHORT_DOWNLOAD_RETRIES:
                    self.log.info(
                        "batch %s: its files hold %d lines, its counts say %d; downloading "
                        "them again",
                        shard.batch_id,
                        lines,
                        promised,
                    )
                    time.sleep(self.retry.delay(tries, BatchAPIError("short download")))
            self.log.warning(
                "batch %s: its files still hold %d lines where its counts say %d; the "
                "requests without a line count as missing",
                shard.batch_id,
                lines,
                promised,
            )
            return files

        return [f for files in self._map(fetch, list(enumerate(shards))) for f in files]

    def _download_inputs(self, shards: list[BatchShard], folder: Path) -> list[Path]:
        """The shards' input files, downloaded (named by position, never by provider id)."""
        return self._map(
            lambda numbered: self._download(
                numbered[1].file_id, folder / f"input-{numbered[0]}-{numbered[1].index}.jsonl"
            ),
            list(enumerate(shards)),
        )

    def _custom_ids(self, job: BatchJob, folder: Path) -> list[str]:
        first = [s for s in job.shards if s.attempt == 1]
        return [custom_id for custom_id, _ in _input_records(self._download_inputs(first, folder))]

    def _mark_unanswered(self, job: BatchJob, frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
        """Requests an expired or cancelled batch never answered take that batch's status
        (a batch cancelled while validating has no error file to say so)."""
        ended = [s for s in job.shards if s.status in ("expired", "cancelled")]
        missing = set(frame.loc[frame["status"] == "missing", "custom_id"])
        if not ended or not missing:
            return frame
        owners: dict[str, tuple[str, str, int]] = {}
        for shard, path in zip(ended, self._download_inputs(ended, folder), strict=True):
            for custom_id, _ in _input_records([path]):
                if custom_id in missing:  # later attempts come later and win
                    owners[custom_id] = (shard.status, shard.batch_id or "", shard.attempt)
        return mark_unanswered(frame, owners)

    def _raise_if_failed(self, job: BatchJob) -> None:
        if job.status == "failed":
            failed = [s.batch_id for s in job.current_shards if s.status == "failed"]
            raise BatchFailedError(
                f"batch {', '.join(str(b) for b in failed)} failed at the provider", job.errors()
            )

    def results(
        self, job: BatchJob, inputs: pd.DataFrame | None = None, *, id_column: str = "custom_id"
    ) -> pd.DataFrame:
        """One row per request, joined by custom_id across every shard and attempt.

        ``inputs`` (the rows the requests were built from) adds their columns; its
        ``id_column`` must hold the custom_ids. Raises ``BatchFailedError`` when a batch
        of the latest attempt failed (the provider's ``errors.data`` is in the error).
        """
        self._raise_if_failed(job)
        if not job.is_final:
            raise BatchAPIError(f"job {job.idempotency_key} is still {job.status}")
        with tempfile.TemporaryDirectory(prefix="dib-results-") as tmp:
            folder = Path(tmp)
            files = self._download_result_files(job.shards, folder)
            if inputs is not None:
                custom_ids = inputs[id_column].astype(str).tolist()
            else:
                custom_ids = self._custom_ids(job, folder)
            frame = collect_results(files, custom_ids, inputs, id_column=id_column)
            frame = self._mark_unanswered(job, frame, folder)
        if self.delete_files_after_results:
            self.delete_files(job)
        return frame

    # ---------------------------------------------------------- submitted lines

    def submitted_lines(self, job: BatchJob) -> Iterator[tuple[str, bytes]]:
        """(custom_id, line) of every request line the job submitted, in file order.

        Streams the job's first-attempt input files (every later attempt resubmits a
        subset of them) from the provider; each line without its line ending, byte for
        byte as uploaded. Raises ``BatchAPIError`` when a file cannot be downloaded (for
        example after ``delete_files``).

        Example:
            >>> ids = [custom_id for custom_id, _ in client.submitted_lines(job)]  # doctest: +SKIP
        """
        first = [s for s in job.shards if s.attempt == 1]
        with tempfile.TemporaryDirectory(prefix="dib-submitted-") as tmp:
            for custom_id, line in _input_records(self._download_inputs(first, Path(tmp))):
                yield custom_id, line.rstrip(b"\r\n")

    def delete_files(self, job: BatchJob, *, inputs_only: bool = False) -> None:
        """Delete the job's input, output and error files (only the input files with
        ``inputs_only``) from the provider; a file that cannot be deleted is logged."""
        file_ids = [
            file_id
            for s in job.shards
            for file_id in (
                (s.file_id,) if inputs_only else (s.file_id, s.output_file_id, s.error_file_id)
            )
            if file_id
        ]

        self._map(self._delete_file, file_ids)

    def _delete_file(self, file_id: str) -> None:
        try:
            self._call(f"delete {file_id}", lambda: self._openai.files.delete(file_id))
        except BatchAPIError as error:
            self.log.warning("could not delete %s: %s", file_id, error)

    # ---------------------------------------------------------------- resubmit

    def resubmit(
        self,
        job: BatchJob,
        *,
        include_failed: bool = False,
        webhook_url: str | None = None,
        ledger: Ledger | None = None,
    ) -> BatchJob:
        """Start a new attempt holding only what expired, was cancelled or is missing.

        Example:
            >>> job = client.wait(job)  # doctest: +SKIP
            >>> if job.status in ("expired", "cancelled"):  # doctest: +SKIP
            ...     job = client.wait(client.resubmit(job))

        With ``include_failed`` retryable failures (408, 409, 429, 5xx) go too. Returns
        the job unchanged when nothing is left. Idempotent: the new attempt's batches
        carry keys derived from the job key, shard and attempt.
        """
        if not job.is_final:
            raise BatchAPIError(f"job {job.idempotency_key} is still {job.status}")
        statuses = {"expired", "cancelled", *(["completed"] if include_failed else [])}
        # a shard taken as final without the files its counts promise has missing rows
        shards = [s for s in job.current_shards if s.status in statuses or absent_files(s)]
        if not shards:
            return job
        with tempfile.TemporaryDirectory(prefix="dib-resubmit-") as tmp:
            folder = Path(tmp)
            frame = parse_result_files(self._download_result_files(job.shards, folder))
            inputs = self._download_inputs(shards, folder)
            ids = [custom_id for custom_id, _ in _input_records(inputs)]
            left = set(leftover_custom_ids(frame, ids, include_failed=include_failed))
            if not left:
                return job
            remainder = encode_requests(
                (
                    orjson.loads(line)
                    for custom_id, line in _input_records(inputs)
                    if custom_id in left
                ),
                endpoint=job.endpoint,
            )
        new_job = _copy(job)
        attempt = job.attempt + 1
        self.log.info("resubmitting %d requests as attempt %d", len(remainder), attempt)
        new_job.shards.extend(
            self._upload_shards(remainder, job.idempotency_key, attempt, ledger=ledger)
        )
        return self.create(new_job, webhook_url=webhook_url, ledger=ledger)


def _input_records(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(custom_id, line) of each request line in the files, streamed."""
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield orjson.loads(line)["custom_id"], line


def _count_lines(path: Path) -> int:
    """Lines in a JSONL file (a last line without its newline counts too)."""
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _outcome(fn: Callable[[], _T]) -> _T | BatchAPIError:
    """``fn()``, or the API error it raised: one shard's failure must not hide the
    batches created for the others."""
    try:
        return fn()
    except BatchAPIError as error:
        return error


def _is_refusal(error: BatchAPIError) -> bool:
    """A 4xx that says the call was refused, not that it should be tried again."""
    code = error.status_code
    return code is not None and 400 <= code < 500 and code not in (408, 409, 429)


def _copy(job: BatchJob) -> BatchJob:
    return BatchJob.from_dict(dataclasses.asdict(job))


def _apply_batch(shard: BatchShard, batch: Any) -> None:
    """Copy a provider batch object's state onto the shard."""
    data = batch.model_dump() if hasattr(batch, "model_dump") else dict(batch)
    shard.batch_id = data["id"]
    shard.status = data["status"]
    shard.request_counts = dict(data.get("request_counts") or {})
    shard.output_file_id = data.get("output_file_id")
    shard.error_file_id = data.get("error_file_id")
    shard.errors = list((data.get("errors") or {}).get("data") or [])
    usage = data.get("usage") or {}
    shard.usage = {
        k: int(usage[k]) for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage
    }
    shard.created_at = data.get("created_at")
    shard.expires_at = data.get("expires_at")
    shard.finished_at = next((data[f] for f in _FINAL_TIME_FIELDS if data.get(f)), None)
