"""InferenceBatchClient: submit, watch and collect Batch API jobs with the openai SDK.

Usable without Dagster. Every call to the provider goes through the openai SDK with the
SDK's own retries switched off: ``retries.py`` retries instead, so that a create that may
have gone through is looked up by its idempotency key before it is tried again.

This module holds the public class and its settings; the work is done by one module per
job: ``provider_calls`` (retried calls), ``uploads``, ``batch_creation``, ``progress``
(refresh and cancel), ``downloads``, ``job_results`` and ``resubmission``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
import openai
import pandas as pd

from . import job_results
from .answer_store import AnswerStore, default_store_url, namespace_for
from .batch_creation import create_missing, find_existing
from .batch_record import BatchJob, BatchShard
from .consistency import DEFAULT_FINAL_STATE_WAIT_SECONDS
from .cost_estimate import CostEstimate, check_budget, estimate_cost, resolve_prices
from .create_options import check_create_options, is_loopback
from .errors import BatchAPIError, BatchWaitTimeout, InvalidBatchInput, PartialCreateError
from .incremental import SendPlan, plan_sending
from .job_manifest import manifest_url, write_manifest
from .ledger import CREATED_IN_THIS_PROCESS, Ledger
from .model_check import ModelCheck
from .progress import FinalStateCheck, cancel_job, copy_job, listed_batches, refresh_job
from .provider_calls import ProviderCalls
from .provider_settings import (
    check_endpoint_offered,
    require_base_url,
    resolve_profile,
)
from .providers import DEFAULT_PROVIDER, ProviderProfile, provider_profile
from .request_lines import EncodedRequests, encode_requests
from .resubmission import leftover_requests
from .results_stream import ResultsDataset
from .retries import DEFAULT_BACKOFF_SECONDS, DEFAULT_MAX_RETRIES, RetryPolicy
from .structured_output import structured_output
from .upload_pacing import (
    DEFAULT_MAX_UPLOAD_WAIT_SECONDS,
    UploadPacer,
    UploadQueue,
    UploadWaitHook,
)
from .uploads import latest_upload_time, new_job, upload_name, upload_shards

DEFAULT_BASE_URL = require_base_url(provider_profile(DEFAULT_PROVIDER))
API_KEY_ENV = "INFERENCE_API_KEY"
BASE_URL_ENV = "INFERENCE_BASE_URL"
DEFAULT_TIMEOUT_SECONDS = 120.0
DEFAULT_LIST_SCAN_LIMIT = 500
DEFAULT_CONCURRENCY = 8
LOCAL_SERVER_BEARER = "local-server"  # the local server takes any non-empty bearer

RequestsLike = pd.DataFrame | Iterable[dict[str, Any]] | str | Path | EncodedRequests


class InferenceBatchClient:
    """A Batch API client that never pays twice and never loses a finished result.

    It takes plain values and reads no environment (``from_env()`` does that). Without
    ``api_key`` it talks only to a server on loopback (the package's local server).

    The ``provider`` profile (see ``providers.py``) sets the limits, the endpoints, the
    create options accepted and the upload pacing; a setting given here (not None)
    overrides it. Against a server on loopback (the local server) uploads are paced
    only when ``upload_interval_seconds`` is given; its 429s are waited out either way.

    Args:
        api_key: The provider's key; None only for a server on loopback.
        base_url: The provider's OpenAI-compatible base URL (default: the profile's;
            ``compatible`` has none).
        provider: ``inference.net`` (default), ``openai`` or ``compatible``.
        max_requests_per_batch: Shard limit: requests per batch (default: the profile's).
        max_bytes_per_batch: Shard limit: bytes per input file (default: the profile's).
        max_embedding_inputs_per_batch: Shard limit: embedding inputs per batch.
        upload_interval_seconds: Least seconds between two uploads with the key.
        max_upload_wait: Most seconds one upload waits for the upload limit.
        check_models: Check the lines' models against ``GET /models`` before upload.
        on_upload_wait: Also called as ``(seconds, reason)`` before each upload wait.
        upload_queue: Orders uploads that wait for the upload limit across processes,
            each wait logged with its place (the Dagster assets pass the event log's).
        max_retries: Retries of a call that failed retryably (429, 5xx, timeouts, resets).
        backoff_seconds: The first retry's pause; it doubles per retry.
        timeout: Seconds for one HTTP call.
        list_scan_limit: Most recent batches scanned for an earlier create.
        concurrency: Calls made at once for a job's shards.
        completion_window: The batches' completion window.
        final_state_wait_seconds: How long a final batch whose files lag its counts is
            read again before it is taken as final.
        delete_files_after_results: Delete the job's files once ``results`` has them.
        incremental: Send only requests with no stored answer, each distinct one once,
            and answer the rest from the answer store (see ``incremental.py``).
        answer_store: The answer store's URL: a path or any fsspec URL (default:
            ``INFERENCE_BATCH_ANSWER_STORE``, else under ``DAGSTER_HOME``, else a cache
            directory); answers are kept per provider base URL.
        answer_max_age: Ignore stored answers older than this many seconds.
        max_cost_usd: Refuse, before upload, a job whose worst-case estimate is above it.
        price_per_million_input_tokens: USD per million input tokens (with the output
            price; default: the profile's published batch price of the model, if known).
        price_per_million_output_tokens: USD per million output tokens.
        logger: Where progress, retries and warnings go.

    Raises:
        ValueError: No ``api_key`` for a server that is not on loopback, an unknown
            ``provider``, or no ``base_url`` for ``compatible``.

    Example:
        >>> lines = [
        ...     {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
        ...      "body": {"model": "m", "messages": [{"role": "user", "content": f"Hi {i}"}]}}
        ...     for i in (1, 2)
        ... ]
        >>> with InferenceBatchClient(api_key="test-key", base_url=local_server_url) as local:
        ...     job = local.wait(local.submit(lines), poll_interval=0.1)
        ...     local.results(job).status.tolist()
        ['succeeded', 'succeeded']
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        provider: str = DEFAULT_PROVIDER,
        max_requests_per_batch: int | None = None,
        max_bytes_per_batch: int | None = None,
        max_embedding_inputs_per_batch: int | None = None,
        upload_interval_seconds: float | None = None,
        max_upload_wait: float = DEFAULT_MAX_UPLOAD_WAIT_SECONDS,
        check_models: bool = True,
        on_upload_wait: UploadWaitHook | None = None,
        upload_queue: UploadQueue | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        list_scan_limit: int = DEFAULT_LIST_SCAN_LIMIT,
        concurrency: int = DEFAULT_CONCURRENCY,
        completion_window: str = "24h",
        final_state_wait_seconds: float = DEFAULT_FINAL_STATE_WAIT_SECONDS,
        delete_files_after_results: bool = False,
        incremental: bool = True,
        answer_store: str | None = None,
        answer_max_age: float | None = None,
        max_cost_usd: float | None = None,
        price_per_million_input_tokens: float | None = None,
        price_per_million_output_tokens: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if upload_interval_seconds is None and base_url is not None and is_loopback(base_url):
            upload_interval_seconds = 0.0  # a local server paces with its own 429s
        self.profile: ProviderProfile = resolve_profile(
            provider,
            base_url=base_url,
            max_requests=max_requests_per_batch,
            max_bytes=max_bytes_per_batch,
            max_embedding_inputs=max_embedding_inputs_per_batch,
            upload_interval_seconds=upload_interval_seconds,
        )
        """The provider's profile with this client's overrides."""
        base_url = require_base_url(self.profile)
        if not api_key:
            if not is_loopback(base_url):
                raise ValueError(
                    f"no API key for {base_url}: pass api_key=, or build the client with "
                    f"InferenceBatchClient.from_env() to read {API_KEY_ENV}"
                )
            api_key = LOCAL_SERVER_BEARER
        self.base_url = base_url
        self.list_scan_limit = list_scan_limit
        self.completion_window = completion_window
        self.final_state_wait_seconds = final_state_wait_seconds
        self.delete_files_after_results = delete_files_after_results
        self._openai = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self._provider = ProviderCalls(
            self._openai,
            base_url=base_url,
            api_key=api_key,
            retry=RetryPolicy(max_retries=max_retries, backoff_seconds=backoff_seconds),
            concurrency=concurrency,
            log=logger or logging.getLogger("dagster_inference_batch"),
            process_ledger=CREATED_IN_THIS_PROCESS.for_account(base_url, api_key),
        )
        self._final_state = FinalStateCheck(self._provider.log)
        self._pacer = UploadPacer(
            self.profile.upload_interval_seconds,
            max_upload_wait,
            lambda: latest_upload_time(self._provider),
            self._provider.log,
            on_upload_wait,
            upload_queue,
        )
        self._models = ModelCheck(self._provider, self.profile.name) if check_models else None
        self.incremental = incremental
        self.answer_max_age = answer_max_age
        self.max_cost_usd = max_cost_usd
        self._answer_store_url = answer_store
        self._answer_store: AnswerStore | None = None
        self._prices = (price_per_million_input_tokens, price_per_million_output_tokens)
        resolve_prices(self.profile.name, "", *self._prices)  # both prices or neither
        self.idempotency = "listing"
        """How the last ``create`` looked for batches already made: ``listing`` (the
        provider's batch listing), ``ledger`` (no listing; the caller's record of created
        batches) or ``degraded`` (neither: a crash between create and its record could
        cost a second batch)."""

    @property
    def answer_store(self) -> AnswerStore:
        """The answers kept for incremental jobs, in this base URL's namespace."""
        if self._answer_store is None:
            self._answer_store = AnswerStore(
                self._answer_store_url or default_store_url(),
                namespace=namespace_for(self.base_url),
            )
        return self._answer_store

    def estimate(self, requests: EncodedRequests) -> CostEstimate:
        """The tokens and cost of sending ``requests``, at this client's prices.

        Args:
            requests: Encoded request lines.

        Returns:
            The estimate (USD figures None for a model without a price).

        Example:
            >>> lines = client.prepare([{"custom_id": "a", "body": {"model": "m",
            ...     "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}}])
            >>> client.estimate(lines).worst_output_tokens
            10
        """
        prices = {
            m: resolve_prices(self.profile.name, m, *self._prices) for m in set(requests.models)
        }
        return estimate_cost(requests, prices)

    @property
    def max_requests_per_batch(self) -> int:
        """Shard limit: requests per batch."""
        return self.profile.max_requests

    @property
    def max_bytes_per_batch(self) -> int:
        """Shard limit: bytes per input file."""
        return self.profile.max_bytes

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every call to the provider."""
        return self._provider.retry

    @property
    def log(self) -> logging.Logger:
        """Where progress, retries and warnings go."""
        return self._provider.log

    @property
    def concurrency(self) -> int:
        """Calls made at once for a job's shards."""
        return self._provider.concurrency

    @classmethod
    def from_env(cls, **options: Any) -> InferenceBatchClient:
        """A client configured from ``INFERENCE_API_KEY`` and ``INFERENCE_BASE_URL``.

        Args:
            **options: The constructor's other keyword arguments.

        Returns:
            A client for ``INFERENCE_BASE_URL`` (else the provider's URL) with the key.

        Raises:
            ValueError: No key is set and the base URL is not on loopback, or no URL
                for ``provider="compatible"``.

        Example:
            >>> import os
            >>> from unittest import mock
            >>> with mock.patch.dict(os.environ, {"INFERENCE_BASE_URL": local_server_url}):
            ...     with InferenceBatchClient.from_env(max_retries=3) as env_client:
            ...         env_client.base_url == local_server_url
            True
        """
        api_key = os.environ.get(API_KEY_ENV) or None
        base_url = os.environ.get(BASE_URL_ENV) or require_base_url(
            provider_profile(options.get("provider", DEFAULT_PROVIDER))
        )
        if api_key is None and not is_loopback(base_url):
            raise ValueError(
                f"{API_KEY_ENV} is not set: export the key for {base_url} "
                f"(or set {BASE_URL_ENV} to a local Batch API server)"
            )
        return cls(api_key=api_key, base_url=base_url, **options)

    def __repr__(self) -> str:
        return f"InferenceBatchClient(base_url={self.base_url!r}, provider={self.profile.name!r})"

    def close(self) -> None:
        """Close the HTTP connections (also done on leaving a ``with`` block)."""
        self._openai.close()

    def __enter__(self) -> InferenceBatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- submission

    def prepare(self, requests: RequestsLike, *, endpoint: str | None = None) -> EncodedRequests:
        """Validate and encode request lines.

        Args:
            requests: A DataFrame with ``custom_id`` and ``body``, request-line dicts, a
                JSONL path or ``EncodedRequests`` (from ``build_requests``).
            endpoint: The endpoint every line must name (default: the lines' own).

        Returns:
            The encoded lines.

        Raises:
            InvalidBatchInput: A line a provider would refuse, naming each problem.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "prepare"}}]
            >>> len(client.prepare(lines, endpoint="/v1/completions"))
            1
        """
        if isinstance(requests, EncodedRequests):
            if endpoint is not None and endpoint != requests.endpoint:
                raise InvalidBatchInput(
                    [f"endpoint {endpoint!r} differs from the requests' {requests.endpoint!r}"]
                )
            return requests
        return encode_requests(requests, endpoint=endpoint)

    def check_create_options(
        self,
        metadata: dict[str, str] | None = None,
        *,
        webhook_url: str | None = None,
        output_expires_after: dict[str, Any] | None = None,
    ) -> None:
        """Check what the provider would refuse at create, before any upload.

        Args:
            metadata: The caller's batch metadata.
            webhook_url: Where the provider should POST when a batch ends.
            output_expires_after: When the output file expires (OpenAI).

        Raises:
            InvalidBatchInput: Metadata, ``completion_window``, ``webhook_url`` or
                ``output_expires_after`` the provider would refuse, naming it.

        Example:
            >>> client.check_create_options({"team": "search"})
            >>> client.check_create_options({"idempotency_key": "mine"})
            Traceback (most recent call last):
            ...
            dagster_inference_batch.errors.InvalidBatchInput: invalid batch input (1 problem):
              - metadata keys ['idempotency_key'] are set by the client itself (idempotency); rename them
        """
        check_create_options(
            metadata or {},
            completion_window=self.completion_window,
            webhook_url=webhook_url,
            base_url=self.base_url,
            profile=self.profile,
            output_expires_after=output_expires_after,
        )

    def upload(
        self,
        requests: RequestsLike,
        *,
        endpoint: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        ledger: Ledger | None = None,
        incremental: bool | None = None,
        refresh: bool = False,
        max_cost_usd: float | None = None,
    ) -> BatchJob:
        """Validate, shard and upload the request lines; no batch is created yet.

        Incremental (the client's default), only requests with no stored answer are
        sent, each distinct one once; the job's ``rows_reused`` counts the others, and
        with none left to send nothing is uploaded (the job is final at once). The cost
        of what is sent is estimated first (``job.estimate``) and checked against
        ``max_cost_usd``.

        A shard uploaded under the same key by an earlier, interrupted call is reused:
        found in ``ledger`` (see ``ledger.py``), among this process's uploads, or in the
        provider's file listing.

        Args:
            requests: The request lines (see ``prepare``).
            endpoint: The endpoint every line must name.
            metadata: Batch metadata, checked now and sent at ``create``.
            idempotency_key: The job's key (default: from the lines' sha256).
            ledger: The caller's record of uploads, written as each one exists.
            incremental: Override the client's ``incremental``.
            refresh: Send every distinct request, stored answers or not.
            max_cost_usd: Override the client's ``max_cost_usd``.

        Returns:
            A job whose shards have input files and no batches.

        Raises:
            InvalidBatchInput: Invalid lines or create options, an endpoint or a model
                the provider does not offer; nothing is uploaded.
            BudgetExceeded: The worst-case estimate is above ``max_cost_usd``; nothing
                is uploaded.
            BatchAPIError: The provider refused an upload or kept failing.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "upload"}}]
            >>> job = client.upload(lines, endpoint="/v1/completions", metadata={"team": "search"})
            >>> job.batch_ids, len(job.shards)
            ([], 1)
            >>> client.create(job).batch_ids[0].startswith("batch_")
            True
        """
        encoded = self.prepare(requests, endpoint=endpoint)
        metadata = dict(metadata or {})
        self.check_create_options(metadata)
        check_endpoint_offered(self.profile, encoded.endpoint)
        if self._models is not None:
            self._models.check(encoded.models)
        job = new_job(encoded, metadata, idempotency_key)
        plan = (
            plan_sending(encoded, self.answer_store, max_age=self.answer_max_age, refresh=refresh)
            if (self.incremental if incremental is None else incremental)
            else None
        )
        send = plan.send if plan is not None else encoded
        estimate = self.estimate(send)
        job.estimate = dataclasses.asdict(estimate)
        check_budget(estimate, self.max_cost_usd if max_cost_usd is None else max_cost_usd)
        if plan is not None:
            self._record_plan(job, plan)
        job.shards = self._upload_shards(send, job.idempotency_key, 1, ledger) if send else []
        return job

    def _record_plan(self, job: BatchJob, plan: SendPlan) -> None:
        """Put an incremental plan on its job, manifest written, and say what it saves."""
        store = self.answer_store
        job.request_count = len(plan.send)
        job.rows_reused = plan.reused
        job.tokens_saved = plan.tokens_saved
        job.manifest = manifest_url(store.url, store.namespace, job.idempotency_key)
        write_manifest(job.manifest, plan.manifest)
        if plan.reused:
            self.log.info(
                "%d of %d rows answered already (%d from the answer store, %d duplicates): "
                "sending %d",
                plan.reused,
                plan.reused + len(plan.send),
                plan.from_store,
                plan.duplicates,
                len(plan.send),
            )

    def _upload_shards(
        self, encoded: EncodedRequests, job_key: str, attempt: int, ledger: Ledger | None
    ) -> list[BatchShard]:
        """Upload ``encoded`` as shards of ``attempt`` within this client's limits."""
        return upload_shards(
            self._provider,
            encoded,
            job_key,
            attempt,
            ledger,
            max_requests=self.profile.max_requests,
            max_bytes=self.profile.max_bytes,
            max_embedding_inputs=self.profile.max_embedding_inputs,
            pacer=self._pacer,
        )

    def create(
        self,
        job: BatchJob,
        *,
        webhook_url: str | None = None,
        output_expires_after: dict[str, Any] | None = None,
        ledger: Ledger | None = None,
    ) -> BatchJob:
        """Create a batch for every uploaded shard that has none, idempotently.

        A shard's batch is looked for first in ``ledger`` and among this process's
        batches, by id; then in the provider's listing, unless ``ledger`` keeps intents
        and holds none for the key (see ``idempotency.py``). Only a shard found nowhere
        gets a new batch; a racing create of the same key is settled after (the oldest
        batch wins). ``self.idempotency`` says how the lookup was made.

        Args:
            job: A job from ``upload``.
            webhook_url: Where the provider should POST when a batch ends.
            output_expires_after: ``{"anchor": "created_at", "seconds": N}``: when the
                output file expires (providers that accept it: OpenAI).
            ledger: The caller's record of batches (and intents), written as they exist.

        Returns:
            An updated copy of ``job`` with a batch per shard.

        Raises:
            InvalidBatchInput: A ``webhook_url`` or ``output_expires_after`` the provider
                would refuse.
            PartialCreateError: Some creates failed; its ``job`` has the batches made.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "create"}}]
            >>> job = client.create(client.upload(lines, endpoint="/v1/completions"))
            >>> client.create(job).batch_ids == job.batch_ids  # nothing left to create
            True
        """
        self.check_create_options(
            webhook_url=webhook_url, output_expires_after=output_expires_after
        )
        existing = find_existing(self._provider, job, ledger, list_scan_limit=self.list_scan_limit)
        if existing.idempotency is not None:
            self.idempotency = existing.idempotency
        return create_missing(
            self._provider,
            job,
            existing.batches,
            create_options=_create_options(webhook_url, output_expires_after),
            ledger=ledger,
            completion_window=self.completion_window,
            list_scan_limit=self.list_scan_limit,
        )

    def submit(
        self,
        requests: RequestsLike,
        *,
        endpoint: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        output_expires_after: dict[str, Any] | None = None,
        ledger: Ledger | None = None,
        incremental: bool | None = None,
        refresh: bool = False,
        max_cost_usd: float | None = None,
    ) -> BatchJob:
        """Validate, shard, upload and create: the one-call path, idempotent.

        Incremental by default: see ``upload``.

        Should the provider refuse a create (a 4xx) after all, nothing is left behind:
        the batches this call created are cancelled and its uploads deleted.

        Args:
            requests: The request lines (see ``prepare``).
            endpoint: The endpoint every line must name.
            metadata: Batch metadata.
            idempotency_key: The job's key (default: from the lines' sha256); the same
                key and lines find the same batches again.
            webhook_url: Where the provider should POST when a batch ends.
            output_expires_after: When the output file expires (see ``create``).
            ledger: The caller's record of uploads and batches.
            incremental: Override the client's ``incremental``.
            refresh: Send every distinct request, stored answers or not.
            max_cost_usd: Override the client's ``max_cost_usd``.

        Returns:
            The job, one batch per shard (none when every row was answered already).

        Raises:
            InvalidBatchInput: Invalid lines or create options; nothing is uploaded.
            PartialCreateError: Some creates failed; its ``job`` has the batches made.
            BatchAPIError: An upload was refused or kept failing.

        Example:
            >>> lines = [{"custom_id": c, "body": {"model": "m", "prompt": "submit " + c}} for c in "ab"]
            >>> job = client.submit(lines, endpoint="/v1/completions", idempotency_key="demo")
            >>> again = client.submit(lines, endpoint="/v1/completions", idempotency_key="demo")
            >>> again.batch_ids == job.batch_ids  # found again, not paid twice
            True
        """
        self.check_create_options(
            metadata, webhook_url=webhook_url, output_expires_after=output_expires_after
        )
        job = self.upload(
            requests,
            endpoint=endpoint,
            metadata=metadata,
            idempotency_key=idempotency_key,
            ledger=ledger,
            incremental=incremental,
            refresh=refresh,
            max_cost_usd=max_cost_usd,
        )
        try:
            return self.create(
                job,
                webhook_url=webhook_url,
                output_expires_after=output_expires_after,
                ledger=ledger,
            )
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
            self._provider.process_ledger.forget("batch", shard.idempotency_key)
            self._provider.process_ledger.forget("file", upload_name(shard.idempotency_key))
        if job.batch_ids:
            self.cancel(job)
        self.delete_files(job, inputs_only=True)

    # ------------------------------------------------------------------ progress

    def refresh(self, job: BatchJob, *, known: Mapping[str, Any] | None = None) -> BatchJob:
        """Fetch every unfinished shard's batch, concurrently.

        A final status is taken only when the batch's files agree with its counts (see
        ``consistency.absent_files``); until then, for at most
        ``final_state_wait_seconds`` after the provider's final timestamp, the shard
        stays ``finalizing`` and is read again on the next refresh.

        Args:
            job: A job with batches.
            known: Batch objects read already (``listed_batches``), by id; only the
                others are retrieved.

        Returns:
            An updated copy of ``job``.

        Raises:
            BatchAPIError: A batch could not be read.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "refresh"}}]
            >>> job = client.refresh(client.submit(lines, endpoint="/v1/completions"))
            >>> job.status in ("validating", "in_progress", "finalizing", "completed")
            True
        """
        return refresh_job(
            self._provider, job, self._final_state, self.final_state_wait_seconds, known
        )

    def listed_batches(self, jobs: Sequence[BatchJob], *, seconds: float) -> dict[str, Any]:
        """The unfinished batches of many jobs, read from the batch listing (100 a call).

        Only from ``progress.LISTING_MIN_BATCHES`` (20) unfinished batches on, and when the
        provider offers a listing; it stops at the oldest of them, after twice as many
        batches as asked for, or after ``seconds``. Hand the result to ``refresh(job,
        known=...)``, which retrieves the batches not found.

        Args:
            jobs: The jobs about to be refreshed.
            seconds: Time the listing may take.

        Returns:
            The provider's batches found (its JSON dicts), by id (empty below the
            threshold).

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "listed"}}]
            >>> jobs = [client.submit(lines, endpoint="/v1/completions")]
            >>> client.listed_batches(jobs, seconds=10)  # one batch: cheaper to retrieve
            {}
        """
        return listed_batches(self._provider, jobs, seconds)

    def wait(
        self, job: BatchJob, *, poll_interval: float = 10.0, timeout: float | None = None
    ) -> BatchJob:
        """Refresh until every shard is final.

        Args:
            job: A job with batches.
            poll_interval: Seconds between refreshes.
            timeout: Give up after this many seconds (None: never).

        Returns:
            The final job.

        Raises:
            ValueError: The job has no batches yet (``create`` it first).
            BatchWaitTimeout: ``timeout`` passed; the batches keep running.
            BatchAPIError: A batch could not be read.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "wait"}}]
            >>> job = client.submit(lines, endpoint="/v1/completions")
            >>> client.wait(job, poll_interval=0.1, timeout=60).status
            'completed'
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

        A batch that finished meanwhile (the provider answers 409) keeps its status.

        Args:
            job: A job with batches.

        Returns:
            An updated copy of ``job``.

        Raises:
            BatchAPIError: A cancel was refused or kept failing.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "cancel"}}]
            >>> job = client.wait(client.cancel(client.submit(lines, endpoint="/v1/completions")),
            ...                   poll_interval=0.1)
            >>> job.status in ("cancelled", "completed")
            True
        """
        return cancel_job(self._provider, job)

    def list_batches(
        self, *, limit: int = 100, after: str | None = None, max_items: int | None = None
    ) -> Iterator[Any]:
        """Batches at the provider, newest first, following ``limit``/``after`` pages.

        Args:
            limit: Batches per page (at most 100).
            after: Start after this batch id.
            max_items: Stop after this many.

        Yields:
            The provider's batch objects; nothing when it offers no batch listing.

        Raises:
            BatchAPIError: A page could not be read.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "list_batches"}}]
            >>> job = client.submit(lines, endpoint="/v1/completions")
            >>> [b.id for b in client.list_batches(max_items=1)] == job.batch_ids
            True
        """
        return self._provider.list_batches(limit=limit, after=after, max_items=max_items)

    # ------------------------------------------------------------------- results

    def results(
        self,
        job: BatchJob,
        inputs: pd.DataFrame | None = None,
        *,
        id_column: str = "custom_id",
        response_model: Any = None,
        keep_files: bool = False,
    ) -> pd.DataFrame:
        """One row per request, joined by custom_id across every shard and attempt.

        Args:
            job: A final job.
            inputs: The rows the requests were built from; their columns are added.
            id_column: The column of ``inputs`` holding the custom_ids.
            response_model: A Pydantic model class or a JSON schema dict: each answer is
                validated (one that is not JSON or does not validate is
                ``invalid_output``, the first problem with its JSON path in
                ``error_message``; a valid answer of any attempt beats it), and the
                fields of the valid answers become typed columns, before the input
                columns (see ``structured_output``).
            keep_files: Keep the job's files even with ``delete_files_after_results``
                (a caller that may still resubmit deletes them later).

        Returns:
            ``custom_id``, ``status`` (``succeeded``, ``invalid_output``, ``failed``,
            ``expired``, ``cancelled`` or ``missing``), ``content``, token counts,
            ``batch_id``, ``attempt`` and more; one row per request, in the requests'
            order.

        Raises:
            BatchFailedError: A batch of the latest attempt failed (with the
                provider's ``errors.data``).
            BatchAPIError: The job is not final, or a file could not be downloaded.

        Example:
            >>> lines = [{"custom_id": c, "body": {"model": "m", "prompt": "results " + c}} for c in "ab"]
            >>> job = client.wait(client.submit(lines, endpoint="/v1/completions"), poll_interval=0.1)
            >>> client.results(job)[["custom_id", "status"]].values.tolist()
            [['a', 'succeeded'], ['b', 'succeeded']]
        """
        store = self.answer_store if job.manifest else None
        frame = job_results.job_results(
            self._provider,
            job,
            inputs,
            id_column=id_column,
            answer_store=store,
            structured=structured_output(response_model),
        )
        if self.delete_files_after_results and not keep_files:
            self.delete_files(job)
        return frame

    def results_dataset(
        self,
        job: BatchJob,
        location: str,
        inputs: pd.DataFrame | None = None,
        *,
        id_column: str = "custom_id",
        filesystem: fsspec.AbstractFileSystem | None = None,
        keep_files: bool = False,
    ) -> ResultsDataset:
        """The rows of ``results``, streamed into a Parquet dataset instead of memory.

        For jobs whose results do not fit in memory: the files are joined a few thousand
        lines at a time into row groups of ``<location>/part-0.parquet`` (see
        ``results_stream``). Answered rows come in the files' order, then the rest.

        Args:
            job: A final job.
            location: The dataset's folder: a local path or an fsspec URL (``s3://...``).
            inputs: The rows the requests were built from; their columns are added.
            id_column: The column of ``inputs`` holding the custom_ids.
            filesystem: The fsspec filesystem to write with (default: from ``location``).
            keep_files: Keep the job's files even with ``delete_files_after_results``.

        Returns:
            A ``ResultsDataset``: ``.dataset()`` (``pyarrow.dataset``), ``.to_pandas()``,
            ``.url`` for other readers, and ``.summary`` (counts, tokens).

        Raises:
            BatchFailedError: A batch of the latest attempt failed.
            BatchAPIError: The job is not final, or a file could not be downloaded.

        Example:
            >>> import tempfile
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "dataset"}}]
            >>> job = client.wait(client.submit(lines, endpoint="/v1/completions"), poll_interval=0.1)
            >>> handle = client.results_dataset(job, tempfile.mkdtemp())
            >>> handle.to_pandas(["custom_id", "status"]).values.tolist()
            [['a', 'succeeded']]
        """
        store = self.answer_store if job.manifest else None
        handle = job_results.job_results_dataset(
            self._provider,
            job,
            location,
            inputs,
            id_column=id_column,
            answer_store=store,
            filesystem=filesystem,
        )
        if self.delete_files_after_results and not keep_files:
            self.delete_files(job)
        return handle

    def submitted_lines(self, job: BatchJob) -> Iterator[tuple[str, bytes]]:
        """Every request line the job submitted, streamed from the provider in file order.

        Reads the first attempt's input files (a later attempt resubmits a subset).

        Args:
            job: A job with uploaded files.

        Yields:
            (custom_id, line), each line byte for byte as uploaded, without its ending.

        Raises:
            BatchAPIError: A file could not be downloaded (say, after ``delete_files``).

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "submitted_lines"}}]
            >>> job = client.upload(lines, endpoint="/v1/completions")
            >>> [custom_id for custom_id, _ in client.submitted_lines(job)]
            ['a']
        """
        return job_results.submitted_lines(self._provider, job)

    def delete_files(self, job: BatchJob, *, inputs_only: bool = False) -> None:
        """Delete the job's files from the provider; a file that cannot be is logged.

        Args:
            job: The job.
            inputs_only: Delete the input files only, not the output and error files.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "delete_files"}}]
            >>> job = client.upload(lines, endpoint="/v1/completions")
            >>> client.delete_files(job)
            >>> list(client.submitted_lines(job))
            Traceback (most recent call last):
            ...
            dagster_inference_batch.errors.BatchAPIError: download ... failed: HTTP 404: ...
        """
        job_results.delete_job_files(self._provider, job, inputs_only=inputs_only)

    def resubmit(
        self,
        job: BatchJob,
        *,
        include_failed: bool = False,
        webhook_url: str | None = None,
        output_expires_after: dict[str, Any] | None = None,
        ledger: Ledger | None = None,
        response_model: Any = None,
        retry_prompt_suffix: str | None = None,
    ) -> BatchJob:
        """Start a new attempt holding only what expired, was cancelled or is missing.

        Idempotent: the new attempt's batches carry keys derived from the job key, shard
        and attempt.

        Args:
            job: A final job.
            include_failed: Also resubmit retryable failures (408, 409, 429, 5xx).
            webhook_url: Where the provider should POST when a batch ends.
            output_expires_after: When the output file expires (see ``create``).
            ledger: The caller's record of uploads and batches.
            response_model: Also resubmit the requests whose best answer so far does
                not validate against this model or schema (``invalid_output``).
            retry_prompt_suffix: Added to the prompt of those (for instance
                ``structured_output.DEFAULT_RETRY_PROMPT_SUFFIX``); None resubmits their
                lines as they were.

        Returns:
            The job with the new attempt's shards, or ``job`` unchanged when nothing is
            left.

        Raises:
            BatchAPIError: The job is not final, or a call failed.
            PartialCreateError: Some creates failed; its ``job`` has the batches made.

        Example:
            >>> lines = [{"custom_id": "a", "body": {"model": "m", "prompt": "resubmit"}}]
            >>> job = client.wait(client.submit(lines, endpoint="/v1/completions"), poll_interval=0.1)
            >>> client.resubmit(job) == job  # every request answered: nothing to resubmit
            True
        """
        if not job.is_final:
            raise BatchAPIError(f"job {job.idempotency_key} is still {job.status}")
        remainder = leftover_requests(
            self._provider,
            job,
            include_failed=include_failed,
            invalid_output=structured_output(response_model),
            prompt_suffix=retry_prompt_suffix,
        )
        if remainder is None:
            return job
        new_job = copy_job(job)
        attempt = job.attempt + 1
        self.log.info("resubmitting %d requests as attempt %d", len(remainder), attempt)
        new_job.shards.extend(self._upload_shards(remainder, job.idempotency_key, attempt, ledger))
        return self.create(
            new_job,
            webhook_url=webhook_url,
            output_expires_after=output_expires_after,
            ledger=ledger,
        )


def _create_options(
    webhook_url: str | None, output_expires_after: dict[str, Any] | None
) -> dict[str, Any]:
    """The create body's optional fields that are set."""
    options = {"webhook_url": webhook_url, "output_expires_after": output_expires_after}
    return {name: value for name, value in options.items() if value is not None}


def _is_refusal(error: BatchAPIError) -> bool:
    """A 4xx that says the call was refused, not that it should be tried again."""
    code = error.status_code
    return code is not None and 400 <= code < 500 and code not in (408, 409, 429)
