"""InferenceBatchResource: the Batch API as a Dagster resource.

This is the one place the Dagster side reads settings: the fields, then
``INFERENCE_API_KEY`` / ``INFERENCE_BASE_URL``. The client below it takes plain values.

The class's docstring is its help text in the Launchpad, so its example is here:

Example:
    >>> resource = InferenceBatchResource(api_key=dg.EnvVar("INFERENCE_API_KEY"))
    >>> demo = InferenceBatchResource(use_local_server=True)  # development only
    >>> demo.provider_label
    'local (synthetic answers)'
    >>> defs = dg.Definitions(resources={"inference_batch": demo})
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from .client import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_CONCURRENCY,
    DEFAULT_LIST_SCAN_LIMIT,
    DEFAULT_TIMEOUT_SECONDS,
    InferenceBatchClient,
)
from .consistency import DEFAULT_FINAL_STATE_WAIT_SECONDS
from .errors import ProviderNotConfigured
from .metadata_set import InferenceBatchMetadataSet
from .providers import DEFAULT_PROVIDER, PROFILES, provider_profile
from .retries import DEFAULT_BACKOFF_SECONDS, DEFAULT_MAX_RETRIES
from .shared_local_server import start_or_reuse_shared_server
from .upload_pacing import DEFAULT_MAX_UPLOAD_WAIT_SECONDS, UploadQueue, UploadWaitHook

LOCAL_PROVIDER = "local (synthetic answers)"
_announced_local_server: set[str] = set()  # log the "synthetic answers" notice once per URL


class InferenceBatchResource(dg.ConfigurableResource):
    """Connection and limits for an OpenAI-compatible Batch API.

    The key comes from ``api_key`` (pass ``dg.EnvVar("INFERENCE_API_KEY")``) or the
    ``INFERENCE_API_KEY`` environment variable; the URL from ``base_url``,
    ``INFERENCE_BASE_URL``, or else the ``provider``'s (Inference.net by default). The
    ``provider`` profile sets the limits, endpoints, create options and upload pacing;
    a limit set here overrides it. With neither a key nor a URL,
    ``get_client()`` raises ``ProviderNotConfigured``: nothing falls back to synthetic
    answers unless ``use_local_server=True`` asks for the package's local server (or
    ``local_server_without_key=True`` asks for it while no key or URL is set), and then
    every materialization says so (``inference_batch/provider``).

    Example: ``InferenceBatchResource(api_key=dg.EnvVar("INFERENCE_API_KEY"))`` in
    production; ``InferenceBatchResource(local_server_without_key=True)`` in development.
    """

    api_key: str | None = Field(
        default=None,
        description=f"Bearer key; pass EnvVar('{API_KEY_ENV}'). Unset: {API_KEY_ENV}.",
    )
    provider: str = Field(
        default=DEFAULT_PROVIDER,
        description=f"Provider profile: one of {list(PROFILES)} (limits, endpoints, "
        "create options, upload pacing). With use_local_server it still sets the client's "
        "rules; the local server accepts them all.",
    )
    base_url: str | None = Field(
        default=None,
        description=f"Batch API base URL; unset: {BASE_URL_ENV}, else the provider's "
        "(required for 'compatible').",
    )
    use_local_server: bool = Field(
        default=False,
        description="Development only: run on the package's local Batch API server "
        "(started once per machine). Its answers are synthetic, not a model's.",
    )
    local_server_without_key: bool = Field(
        default=False,
        description=f"Development: when neither a key nor a base URL is set (here or in "
        f"{API_KEY_ENV} / {BASE_URL_ENV}), run on the local server instead of refusing; "
        "a key or URL always wins. Metadata then says the answers are synthetic.",
    )
    max_requests_per_batch: int | None = Field(
        default=None, description="Requests per batch; unset: the provider's."
    )
    max_bytes_per_batch: int | None = Field(
        default=None, description="Bytes per batch file; unset: the provider's."
    )
    max_embedding_inputs_per_batch: int | None = Field(
        default=None, description="Embedding inputs per batch; unset: the provider's."
    )
    upload_interval_seconds: float | None = Field(
        default=None,
        description="Least seconds between two file uploads with the key; unset: the "
        "provider's (none against a local server, whose 429s are waited out).",
    )
    max_upload_wait: float = Field(
        default=DEFAULT_MAX_UPLOAD_WAIT_SECONDS,
        description="Most seconds one upload waits for the provider's upload limit.",
    )
    check_models: bool = Field(
        default=True, description="Check the lines' models against GET /models before upload."
    )
    max_retries: int = Field(
        default=DEFAULT_MAX_RETRIES, description="Retries on 429, 5xx and resets."
    )
    backoff_seconds: float = Field(
        default=DEFAULT_BACKOFF_SECONDS, description="First retry pause; doubles."
    )
    list_scan_limit: int = Field(
        default=DEFAULT_LIST_SCAN_LIMIT,
        description="Recent batches scanned for an idempotency key.",
    )
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, description="Parallel API calls per job.")
    timeout: float = Field(default=DEFAULT_TIMEOUT_SECONDS, description="Seconds per API call.")
    final_state_wait_seconds: float = Field(
        default=DEFAULT_FINAL_STATE_WAIT_SECONDS,
        description="How long a final batch whose files disagree with its counts "
        "(e.g. completed, no output_file_id) is read again before rows count as missing.",
    )
    delete_files_after_results: bool = Field(
        default=False, description="Delete input/output files once results are joined."
    )
    price_per_million_input_tokens: float | None = Field(
        default=None,
        description="USD per million input tokens, for the cost estimate and cost metadata "
        "(default: the provider's published batch price of the model, when known).",
    )
    price_per_million_output_tokens: float | None = Field(
        default=None, description="USD per million output tokens (with the input price)."
    )
    answer_store: str | None = Field(
        default=None,
        description="Where answers are kept for incremental runs: a path or an fsspec URL "
        "(s3://..., gs://...) every run can reach. Default: INFERENCE_BATCH_ANSWER_STORE, "
        "else DAGSTER_HOME/inference_batch/answers.",
    )
    answer_max_age: float | None = Field(
        default=None, description="Ignore stored answers older than this many seconds."
    )

    def _api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None

    def _configured_url(self) -> str | None:
        return self.base_url or os.environ.get(BASE_URL_ENV) or None

    def _local(self) -> bool:
        """Whether batches go to the local server: asked for, or asked for while no key
        and no URL is set."""
        unconfigured = self._api_key() is None and self._configured_url() is None
        return self.use_local_server or (self.local_server_without_key and unconfigured)

    def _local_reason(self) -> str:
        if self.use_local_server:
            return "use_local_server=True"
        return f"local_server_without_key=True and neither {API_KEY_ENV} nor {BASE_URL_ENV} is set"

    @property
    def provider_label(self) -> str:
        """What answers the requests, as shown in metadata.

        Starts nothing and never shows the key.

        Returns:
            The configured base URL (else ``INFERENCE_BASE_URL``, else the provider's),
            or ``local (synthetic answers)`` with ``use_local_server`` (or with
            ``local_server_without_key`` while no key or URL is set).

        Example:
            >>> InferenceBatchResource(base_url="https://api.openai.com/v1").provider_label
            'https://api.openai.com/v1'
        """
        if self._local():
            return LOCAL_PROVIDER
        profile = provider_profile(self.provider)
        return self._configured_url() or profile.base_url or f"{profile.name} (no base_url)"

    @property
    def dashboard_url(self) -> str | None:
        """The provider's web page of a batch (``{batch_id}`` standing for its id).

        Only for a provider whose profile has one and whose default base URL is used:
        another server behind the same profile (or the local server) has no such page.

        Returns:
            The URL template, or None.

        Example:
            >>> InferenceBatchResource(provider="openai").dashboard_url
            'https://platform.openai.com/batches/{batch_id}'
            >>> InferenceBatchResource(use_local_server=True).dashboard_url is None
            True
        """
        if self.use_local_server:
            return None
        profile = provider_profile(self.provider)
        configured = self._configured_url()
        if configured and configured.rstrip("/") != (profile.base_url or ""):
            return None
        return profile.dashboard_url

    def provider_metadata(self) -> dict[str, str]:
        """The provider as metadata, for every materialization.

        Returns:
            ``{"inference_batch/provider": provider}``.

        Example:
            >>> InferenceBatchResource(base_url="https://api.openai.com/v1").provider_metadata()
            {'inference_batch/provider': 'https://api.openai.com/v1'}
        """
        return InferenceBatchMetadataSet(provider=self.provider_label).to_metadata()

    def _connection(self) -> tuple[str | None, str]:
        """(api key, base URL), starting the shared local server if asked to."""
        if self._local():
            if self.base_url:
                raise ProviderNotConfigured(
                    "InferenceBatchResource: pass base_url or use_local_server=True, not both"
                )
            base_url = start_or_reuse_shared_server()
            if base_url not in _announced_local_server:
                _announced_local_server.add(base_url)
                dg.get_dagster_logger().warning(
                    f"{self._local_reason()}: batches go to the local Batch API server at "
                    f"{base_url}. Its answers are synthetic, not from a model."
                )
            return None, base_url
        api_key, base_url = self._api_key(), self._configured_url()
        if api_key is None and base_url is None:
            raise ProviderNotConfigured(
                f"{API_KEY_ENV} is not set: InferenceBatchResource has no api_key and no "
                f"base_url, so there is no provider to send batches to. Set {API_KEY_ENV} "
                f"(and pass api_key=dg.EnvVar('{API_KEY_ENV}')), or point base_url or "
                f"{BASE_URL_ENV} at your provider. For development only, "
                "InferenceBatchResource(use_local_server=True) runs on the package's local "
                "Batch API server, whose answers are synthetic (local_server_without_key=True: "
                "only while no key or URL is set)."
            )
        base_url = base_url or provider_profile(self.provider).base_url
        if base_url is None:
            raise ProviderNotConfigured(
                f"InferenceBatchResource(provider={self.provider!r}) has no default base URL: "
                f"set base_url (or {BASE_URL_ENV}) to your server's OpenAI-compatible /v1 URL"
            )
        return api_key, base_url

    def get_client(
        self,
        *,
        on_upload_wait: UploadWaitHook | None = None,
        upload_queue: UploadQueue | None = None,
    ) -> InferenceBatchClient:
        """A client for this configuration (close it, or use it in a ``with`` block).

        Each wait for the provider's upload limit is logged to the Dagster logger (the
        running step's log); ``on_upload_wait`` is also told of it.

        Args:
            on_upload_wait: Called as ``(seconds, reason)`` before each upload wait.
            upload_queue: Orders the uploads that wait, across processes (the
                ``<name>_input_file`` asset passes one kept in the event log).

        Returns:
            An ``InferenceBatchClient`` with this resource's connection and limits,
            logging to the Dagster logger.

        Raises:
            ProviderNotConfigured: no key and no base URL (neither set here nor in the
                environment) and neither ``use_local_server`` nor
                ``local_server_without_key``, both ``base_url`` and
                ``use_local_server``, or no base URL for ``provider="compatible"``.
            ValueError: An unknown ``provider``.

        Example:
            >>> resource = InferenceBatchResource(api_key="test-key", base_url=local_server_url)
            >>> with resource.get_client() as batch_client:
            ...     batch_client.base_url == local_server_url
            True
        """
        api_key, base_url = self._connection()
        return InferenceBatchClient(
            api_key=api_key,
            base_url=base_url,
            provider=self.provider,
            max_requests_per_batch=self.max_requests_per_batch,
            max_bytes_per_batch=self.max_bytes_per_batch,
            max_embedding_inputs_per_batch=self.max_embedding_inputs_per_batch,
            upload_interval_seconds=self.upload_interval_seconds,
            max_upload_wait=self.max_upload_wait,
            check_models=self.check_models,
            on_upload_wait=on_upload_wait,
            upload_queue=upload_queue,
            max_retries=self.max_retries,
            backoff_seconds=self.backoff_seconds,
            timeout=self.timeout,
            list_scan_limit=self.list_scan_limit,
            concurrency=self.concurrency,
            final_state_wait_seconds=self.final_state_wait_seconds,
            delete_files_after_results=self.delete_files_after_results,
            answer_store=self.answer_store,
            answer_max_age=self.answer_max_age,
            price_per_million_input_tokens=self.price_per_million_input_tokens,
            price_per_million_output_tokens=self.price_per_million_output_tokens,
            logger=dg.get_dagster_logger(),
        )

    def cost(self, usage: dict[str, int]) -> float | None:
        """The cost of token ``usage`` at the configured prices.

        Args:
            usage: ``input_tokens`` and ``output_tokens`` counts.

        Returns:
            USD, or None unless both prices are set.

        Example:
            >>> InferenceBatchResource(price_per_million_input_tokens=1.0,
            ...     price_per_million_output_tokens=2.0).cost({"input_tokens": 1_000_000,
            ...     "output_tokens": 500_000})
            2.0
        """
        if (
            self.price_per_million_input_tokens is None
            or self.price_per_million_output_tokens is None
        ):
            return None
        return (
            usage.get("input_tokens", 0) * self.price_per_million_input_tokens
            + usage.get("output_tokens", 0) * self.price_per_million_output_tokens
        ) / 1_000_000
