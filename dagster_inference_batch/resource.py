"""InferenceBatchResource: the Batch API as a Dagster resource."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from .client import DEFAULT_BASE_URL, InferenceBatchClient
from .embedded_server import ensure_local_server
from .requests import DEFAULT_MAX_BYTES, DEFAULT_MAX_REQUESTS

BASE_URL_ENV = "INFERENCE_BASE_URL"
API_KEY_ENV = "INFERENCE_API_KEY"
_announced_local_server: set[str] = set()  # log the "synthetic answers" notice once per URL


class InferenceBatchResource(dg.ConfigurableResource):
    """Connection and limits for an OpenAI-compatible Batch API.

    With no key (``api_key`` or ``INFERENCE_API_KEY``) and no ``base_url`` (nor
    ``INFERENCE_BASE_URL``), it starts or
    reuses the package's local Batch API server, whose answers are synthetic.

    Example:
        >>> resource = InferenceBatchResource(api_key=dg.EnvVar("INFERENCE_API_KEY"))
        ... # doctest: +SKIP
        >>> defs = dg.Definitions(resources={"inference_batch": resource})  # doctest: +SKIP
    """

    api_key: str | None = Field(
        default=None,
        description="Bearer key; pass EnvVar('INFERENCE_API_KEY'). None uses the local server.",
    )
    base_url: str | None = Field(
        default=None,
        description=f"Batch API base URL; INFERENCE_BASE_URL overrides the default "
        f"{DEFAULT_BASE_URL}.",
    )
    max_requests_per_batch: int = Field(
        default=DEFAULT_MAX_REQUESTS, description="Requests per batch."
    )
    max_bytes_per_batch: int = Field(default=DEFAULT_MAX_BYTES, description="Bytes per batch file.")
    max_retries: int = Field(default=6, description="Retries on 429, 5xx and resets.")
    backoff_seconds: float = Field(default=0.5, description="First retry pause; doubles.")
    list_scan_limit: int = Field(
        default=500, description="Recent batches scanned for an idempotency key."
    )
    concurrency: int = Field(default=8, description="Parallel API calls per job.")
    timeout: float = Field(default=120.0, description="Seconds per API call.")
    delete_files_after_results: bool = Field(
        default=False, description="Delete input/output files once results are joined."
    )
    price_per_million_input_tokens: float | None = Field(
        default=None, description="USD per million input tokens, for cost metadata."
    )
    price_per_million_output_tokens: float | None = Field(
        default=None, description="USD per million output tokens, for cost metadata."
    )

    def resolved_base_url(self) -> str:
        """The URL calls go to: configured, from the environment, or the local server."""
        configured = self.base_url or os.environ.get(BASE_URL_ENV)
        if configured:
            return configured
        if self.api_key or os.environ.get(API_KEY_ENV):
            return DEFAULT_BASE_URL
        base_url = ensure_local_server()
        if base_url not in _announced_local_server:
            _announced_local_server.add(base_url)
            dg.get_dagster_logger().warning(
                "No INFERENCE_API_KEY or INFERENCE_BASE_URL set: using the local Batch API "
                f"server at {base_url}. Its answers are synthetic, not from a model."
            )
        return base_url

    def get_client(self) -> InferenceBatchClient:
        """A client for this configuration."""
        return InferenceBatchClient(
            api_key=self.api_key,
            base_url=self.resolved_base_url(),
            max_requests_per_batch=self.max_requests_per_batch,
            max_bytes_per_batch=self.max_bytes_per_batch,
            max_retries=self.max_retries,
            backoff_seconds=self.backoff_seconds,
            timeout=self.timeout,
            list_scan_limit=self.list_scan_limit,
            concurrency=self.concurrency,
            delete_files_after_results=self.delete_files_after_results,
            logger=dg.get_dagster_logger(),
        )

    def cost(self, usage: dict[str, int]) -> float | None:
        """USD for token ``usage`` at the configured prices, or None without prices."""
        if (
            self.price_per_million_input_tokens is None
            or self.price_per_million_output_tokens is None
        ):
            return None
        return (
            usage.get("input_tokens", 0) * self.price_per_million_input_tokens
            + usage.get("output_tokens", 0) * self.price_per_million_output_tokens
        ) / 1_000_000
