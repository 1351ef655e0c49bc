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
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai
import orjson
import pandas as pd

from .errors import BatchAPIError, BatchFailedError, BatchWaitTimeout
from .job import BatchJob, BatchShard
from .requests import (
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
from .retries import RetryPolicy

DEFAULT_BASE_URL = "https://batch.inference.net/v1"
MAX_CALLER_METADATA_KEYS = 13  # providers allow 16; three are ours
_FINAL_TIME_FIELDS = ("completed_at", "failed_at", "expired_at", "cancelled_at")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_IDEMPOTENCY_KEY_CHARS = 256  # batch keys must fit a 512-character metadata value
# Endpoints a provider turned out not to offer, by base URL: said once per process.
_missing_endpoints: dict[str, set[str]] = {}
_T = TypeVar("_T")

RequestsLike = pd.DataFrame | Iterable[dict[str, Any]] | str | Path | EncodedRequests


def _is_loopback(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "") in _LOOPBACK_HOSTS


def _batch_key(job_key: str, shard_index: int, attempt: int, sha256: str) -> str:
    """The key one batch carries: job, shard, attempt and the shard's content, so a batch
    is reused only for the very same request lines."""
    return f"{job_key}#s{shard_index}a{attempt}:{sha256[:16]}"


def _upload_name(batch_key: str) -> str:
    return f"dib-{hashlib.sha256(batch_key.encode()).hexdigest()[:32]}.jsonl"


class InferenceBatchClient:
    """A Batch API client that never pays twice and never loses a finished result.

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
        max_retries: int = 6,
        backoff_seconds: float = 0.5,
        timeout: float = 120.0,
        list_scan_limit: int = 500,
        concurrency: int = 8,
        delete_files_after_results: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        if api_key is None and base_url in (
            DEFAULT_BASE_URL,
            os.environ.get("INFERENCE_BASE_URL"),
        ):
            api_key = os.environ.get("INFERENCE_API_KEY")
        if not api_key:
            if not _is_loopback(base_url):
                raise ValueError(
                    f"no API key for {base_url}: pass api_key= (INFERENCE_API_KEY is used "
                    f"only for {DEFAULT_BASE_URL} or INFERENCE_BASE_URL)"
                )
            api_key = "local-server"  # the local server takes any non-empty bearer
        self._api_key = api_key
        self.base_url = base_url
        self.max_requests_per_batch = max_requests_per_batch
        self.max_bytes_per_batch = max_bytes_per_batch
        self.list_scan_limit = list_scan_limit
        self.concurrency = max(1, concurrency)
        self.delete_files_after_results = delete_files_after_results
        self.retry = RetryPolicy(max_retries=max_retries, backoff_seconds=backoff_seconds)
        self.log = logger or logging.getLogger("dagster_inference_batch")
        self._openai = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self._missing_endpoints = _missing_endpoints.setdefault(base_url, set())

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

    def _lacks(self, endpoint: str, error: BatchAPIError) -> bool:
        """True (and say so once) when the provider does not offer ``endpoint``."""
        if error.status_code not in (404, 405, 501):
            return False
        if endpoint not in self._missing_endpoints:
            self._missing_endpoints.add(endpoint)
            self.log.warning(
                "%s does not offer %s; carrying on without it", self.base_url, endpoint
            )
        return True

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
                raise ValueError(
                    f"endpoint {endpoint!r} differs from the requests' {requests.endpoint!r}"
                )
            return requests
        return encode_requests(requests, endpoint=endpoint)

    def upload(
        self,
        requests: RequestsLike,
        *,
        endpoint: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> BatchJob:
        """Validate, shard and upload the request lines; no batch is created yet.

        Nothing is uploaded when validation fails. A shard already uploaded under the
        same idempotency key (by an earlier, interrupted call) is reused.

        Example:
            >>> job = client.upload(frame, metadata={"team": "search"})  # doctest: +SKIP
            >>> job = client.create(job)  # doctest: +SKIP
        """
        encoded = self.prepare(requests, endpoint=endpoint)
        metadata = dict(metadata or {})
        if len(metadata) > MAX_CALLER_METADATA_KEYS:
            raise ValueError(
                f"metadata has {len(metadata)} keys; at most {MAX_CALLER_METADATA_KEYS} "
                "are allowed (the provider's 16 less three used for idempotency)"
            )
        job_key = idempotency_key or f"sha256:{encoded.sha256()[:32]}"
        if len(job_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise ValueError(
                f"idempotency_key has {len(job_key)} characters; at most "
                f"{MAX_IDEMPOTENCY_KEY_CHARS} fit in the provider's metadata"
            )
        job = BatchJob(
            endpoint=encoded.endpoint,
            idempotency_key=job_key,
            metadata=metadata,
            request_count=len(encoded),
            submitted_at=time.time(),
        )
        job.shards = self._upload_shards(encoded, job_key, attempt=1)
        return job

    def _upload_shards(
        self, encoded: EncodedRequests, job_key: str, attempt: int
    ) -> list[BatchShard]:
        shards = shard_requests(
            encoded, max_requests=self.max_requests_per_batch, max_bytes=self.max_bytes_per_batch
        )
        uploaded = self._uploaded_files()  # one listing for every shard
        with tempfile.TemporaryDirectory(prefix="dib-upload-") as tmp:

            def upload_one(shard: Any) -> BatchShard:
                key = _batch_key(job_key, shard.index, attempt, shard.sha256)
                path = Path(tmp) / _upload_name(key)
                file_id = uploaded.get((path.name, shard.nbytes))
                if file_id:
                    self.log.info("reusing uploaded file %s (%s)", file_id, path.name)
                else:
                    write_jsonl(encoded, path, shard.positions)
                    file_id = self._upload_file(path, shard.nbytes)
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

            return self._map(upload_one, shards)

    def _upload_file(self, path: Path, nbytes: int) -> str:
        def find() -> str | None:  # an upload that failed may still have gone through
            return self._uploaded_files().get((path.name, nbytes))

        def create() -> str:
            with path.open("rb") as handle:
                return self._openai.files.create(file=(path.name, handle), purpose="batch").id

        file_id = self._call(f"upload {path.name}", create, before_retry=find)
        self.log.info("uploaded %s as %s (%d bytes)", path.name, file_id, nbytes)
        return file_id

    def _uploaded_files(self) -> dict[tuple[str, int], str]:
        """Recent batch input files (one page), by (filename, bytes)."""
        if "GET /files" in self._missing_endpoints:
            return {}
        try:
            page = self._call(
                "list files", lambda: self._openai.files.list(purpose="batch", limit=100)
            )
        except BatchAPIError as error:
            if self._lacks("GET /files", error):
                return {}
            raise
        return {(item.filename, item.bytes): item.id for item in reversed(page.data)}

    def create(self, job: BatchJob, *, webhook_url: str | None = None) -> BatchJob:
        """Create a batch for every uploaded shard that has none, idempotently.

        Before each create the client looks for a batch already carrying the shard's
        idempotency key and reuses it, so re-running never pays twice.
        """
        job = _copy(job)
        pending = [s for s in job.shards if s.batch_id is None]
        existing = self._find_batches({s.idempotency_key for s in pending}) if pending else {}
        created = self._map(
            lambda s: existing.get(s.idempotency_key) or self._create_batch(job, s, webhook_url),
            pending,
        )
        for shard, batch in zip(pending, created, strict=True):
            _apply_batch(shard, batch)
        return job

    def _create_batch(self, job: BatchJob, shard: BatchShard, webhook_url: str | None) -> Any:
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
                completion_window="24h",
                metadata=metadata,
                extra_body=extra_body,
            )

        batch = self._call(f"create batch for shard {shard.index}", create, before_retry=find)
        self.log.info(
            "created batch %s (shard %d, attempt %d, %d requests)",
            batch.id,
            shard.index,
            shard.attempt,
            shard.request_count,
        )
        return batch

    def _find_batches(self, keys: set[str]) -> dict[str, Any]:
        """Batches among the most recent ``list_scan_limit`` that carry one of ``keys``."""
        found: dict[str, Any] = {}
        for batch in self.list_batches(max_items=self.list_scan_limit):
            key = (batch.metadata or {}).get("idempotency_key")
            if key in keys and key not in found:
                found[key] = batch
                self.log.info("reusing batch %s for %s", batch.id, key)
                if len(found) == len(keys):
                    break
        return found

    def submit(
        self,
        requests: RequestsLike,
        *,
        endpoint: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> BatchJob:
        """Validate, shard, upload and create: the one-call path. Idempotent."""
        job = self.upload(
            requests, endpoint=endpoint, metadata=metadata, idempotency_key=idempotency_key
        )
        return self.create(job, webhook_url=webhook_url)

    # ------------------------------------------------------------------ progress

    def refresh(self, job: BatchJob) -> BatchJob:
        """Fetch every unfinished shard's batch (concurrently); returns an updated copy."""
        job = _copy(job)
        live = [s for s in job.shards if s.batch_id and not s.is_final]
        batches = self._map(lambda s: self._retrieve(s.batch_id), live)
        for shard, batch in zip(live, batches, strict=True):
            _apply_batch(shard, batch)
        return job

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

        def cancel_one(shard: BatchShard) -> Any:
            try:
                return self._call(
                    f"cancel {shard.batch_id}", lambda: self._openai.batches.cancel(shard.batch_id)
                )
            except BatchAPIError as error:
                if error.status_code != 409:  # 409: it finished meanwhile; nothing to cancel
                    raise
                return self._retrieve(shard.batch_id)

        for shard, batch in zip(live, self._map(cancel_one, live), strict=True):
            _apply_batch(shard, batch)
        return job

    def list_batches(
        self, *, limit: int = 100, after: str | None = None, max_items: int | None = None
    ) -> Iterator[Any]:
        """Batches at the provider, newest first, following ``limit``/``after`` pages."""
        if "GET /batches" in self._missing_endpoints:
            return
        seen = 0
        while True:
            try:
                page = self._call(
                    "list batches",
                    lambda a=after: self._openai.batches.list(
                        limit=min(limit, 100), **({"after": a} if a else {})
                    ),
                )
            except BatchAPIError as error:
                if self._lacks("GET /batches", error):
                    return
                raise
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
        wanted = [
            (shard, kind, file_id)
            for shard in shards
            for kind, file_id in (("output", shard.output_file_id), ("error", shard.error_file_id))
            if file_id
        ]

        def fetch(numbered: tuple[int, tuple[BatchShard, str, str]]) -> ResultFile:
            number, (shard, kind, file_id) = numbered
            path = self._download(file_id, folder / f"result-{number}.jsonl")
            return ResultFile(
                path=path, kind=kind, batch_id=shard.batch_id or "", attempt=shard.attempt
            )

        return self._map(fetch, list(enumerate(wanted)))

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

    def delete_files(self, job: BatchJob) -> None:
        """Delete the job's input, output and error files from the provider."""
        file_ids = [
            file_id
            for s in job.shards
            for file_id in (s.file_id, s.output_file_id, s.error_file_id)
            if file_id
        ]

        def delete(file_id: str) -> None:
            try:
                self._call(f"delete {file_id}", lambda: self._openai.files.delete(file_id))
            except BatchAPIError as error:
                self.log.warning("could not delete %s: %s", file_id, error)

        self._map(delete, file_ids)

    # ---------------------------------------------------------------- resubmit

    def resubmit(
        self, job: BatchJob, *, include_failed: bool = False, webhook_url: str | None = None
    ) -> BatchJob:
        """Start a new attempt holding only what expired or was cancelled.

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
        shards = [s for s in job.current_shards if s.status in statuses]
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
        new_job.shards.extend(self._upload_shards(remainder, job.idempotency_key, attempt))
        return self.create(new_job, webhook_url=webhook_url)


def _input_records(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(custom_id, line) of each request line in the files, streamed."""
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield orjson.loads(line)["custom_id"], line


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
