"""Every ``inference_batch/...`` metadata key the package writes or reads, declared once.

Producers build an ``InferenceBatchMetadataSet`` and spread ``.to_metadata()`` into a
materialization's, observation's or failure's metadata; readers call
``InferenceBatchMetadataSet.extract(metadata)`` and get typed fields back. A key that is
absent, or that holds another type (metadata written by another version), reads as
None, so stored metadata is read leniently. (Dagster's ``NamespacedMetadataSet`` plays
this part for its own keys but is not exported by ``dagster`` 1.13, hence this class.)

Example:
    >>> meta = InferenceBatchMetadataSet(status="completed", percent=100.0)
    >>> meta.to_metadata()
    {'inference_batch/status': 'completed', 'inference_batch/percent': 100.0}
    >>> InferenceBatchMetadataSet.extract(meta.to_metadata()).status
    'completed'
    >>> InferenceBatchMetadataSet.key("job")
    'inference_batch/job'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import dagster as dg

NAMESPACE = "inference_batch"

_CHECKS: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "json": lambda v: isinstance(v, dict | list),
    "timestamp": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "table": lambda v: isinstance(v, dg.TableMetadataValue),
    "url": lambda v: isinstance(v, str),
    "md": lambda v: isinstance(v, str),
}
_WRAP: dict[str, Any] = {
    "json": dg.MetadataValue.json,
    "timestamp": lambda v: dg.MetadataValue.timestamp(float(v)),
    "url": dg.MetadataValue.url,
    "md": dg.MetadataValue.md,
}


def _key(kind: str, about: str) -> Any:
    """A metadata field of ``kind`` (see ``_CHECKS``), absent unless set."""
    return field(default=None, metadata={"kind": kind, "about": about})


@dataclass(frozen=True)
class InferenceBatchMetadataSet:
    """The typed ``inference_batch/...`` metadata of the pipeline's assets and runs.

    Each field is one key, ``inference_batch/<field>``; fields left None are not
    written. JSON fields (``job``, ``batch_ids``, ...) are written as
    ``MetadataValue.json``, ``expires_at`` and ``eta`` as timestamps, ``preview`` as a
    table, ``dashboard_url`` as a URL, ``dashboards`` and ``summary`` as markdown.

    Example:
        >>> InferenceBatchMetadataSet(request_count=3, batch_ids=["b1"]).to_metadata()
        {'inference_batch/request_count': 3, 'inference_batch/batch_ids': JsonMetadataValue(data=['b1'])}
    """

    # progress of the latest attempt
    status: str | None = _key("str", "the job's status")
    attempt: int | None = _key("int", "the latest attempt number")
    completed: int | None = _key("int", "requests completed")
    failed: int | None = _key("int", "requests (or result rows) failed")
    total: int | None = _key("int", "requests in the latest attempt")
    percent: float | None = _key("float", "share of the latest attempt done")
    requests_per_minute: float | None = _key("float", "requests done per minute, this attempt")
    eta: float | None = _key("timestamp", "when the attempt should be done, at this rate")
    eta_seconds: float | None = _key("float", "seconds until then")
    dashboard_url: str | None = _key("url", "the provider's page of the (first) batch")
    dashboards: str | None = _key("md", "the provider's page of each batch in flight")
    # what was sent, and where
    request_count: int | None = _key("int", "request lines submitted")
    shard_count: int | None = _key("int", "files / batches the lines were split into")
    bytes: int | None = _key("int", "JSONL bytes uploaded")
    sha256: str | None = _key("str", "hash of the request lines")
    endpoint: str | None = _key("str", "the Batch API endpoint of the requests")
    file_ids: list[str] | None = _key("json", "uploaded input file ids")
    batch_ids: list[str] | None = _key("json", "provider batch ids, every attempt")
    expires_at: float | None = _key("timestamp", "earliest expiry of the batches in flight")
    errors: list[Any] | None = _key("json", "the provider's validation errors")
    provider: str | None = _key("str", "the base URL, or the local server's notice")
    idempotency: str | None = _key("str", "how the batch lookup was made: listing/ledger/degraded")
    # results
    succeeded: int | None = _key("int", "result rows succeeded")
    invalid_output: int | None = _key("int", "result rows whose answer did not validate")
    invalid_output_errors: dict[str, int] | None = _key(
        "json", "invalid_output rows by error (JSON path: kind)"
    )
    expired: int | None = _key("int", "result rows expired")
    cancelled: int | None = _key("int", "result rows cancelled")
    missing: int | None = _key("int", "result rows with no answer line")
    input_tokens: int | None = _key("int", "prompt tokens over the results")
    output_tokens: int | None = _key("int", "completion tokens over the results")
    total_tokens: int | None = _key("int", "all tokens over the results")
    attempts: int | None = _key("int", "attempts the results span")
    seconds_to_final: float | None = _key("float", "first submission to the last final state")
    cost_usd: float | None = _key("float", "cost of the tokens used, at the resource's prices")
    failure_rate: float | None = _key("float", "share of result rows not succeeded")
    summary: str | None = _key("md", "the results in words: statuses, errors, cost, attempts")
    # incremental runs and the cost estimate (input file, results)
    rows_reused: int | None = _key("int", "rows answered from the answer store")
    rows_sent: int | None = _key("int", "rows sent to the provider")
    tokens_saved: int | None = _key("int", "tokens the reused answers cost when first run")
    cost_saved_usd: float | None = _key("float", "what the reused answers would cost again")
    estimated_input_tokens: int | None = _key("int", "input tokens of the rows sent, estimated")
    estimated_cost_usd: float | None = _key("float", "estimated cost, typical output")
    estimated_worst_cost_usd: float | None = _key("float", "estimated cost, max output tokens")
    estimate_method: str | None = _key("str", "how the tokens and prices were estimated")
    embedding_dimension: int | None = _key("int", "length of the embedding vectors (embeddings)")
    upstream_changed: dict[str, Any] | None = _key("json", "rows changed since submission")
    preview: dg.TableMetadataValue | None = _key("table", "the first request or result rows")
    # the recorded job (read back by every step and the sensor) and the links to it
    job: dict[str, Any] | None = _key("json", "the BatchJob as JSON (input file, batch)")
    job_key: str | None = _key("str", "the joined job's idempotency key (results)")
    collected_storage_id: int | None = _key("int", "the batch materialization joined (results)")
    cancel_requested: bool | None = _key("bool", "a user's cancel (batch)")
    unreadable_job: str | None = _key("str", "why a recorded job cannot be read (failure)")
    ledger: dict[str, str] | None = _key("json", "an upload/batch/intent record {kind, key, id}")
    upload_queue: dict[str, str] | None = _key(
        "json", "a place in the upload queue {event: joined/left, ticket, run_id}"
    )
    # what the package did on its own
    superseded: dict[str, Any] | None = _key("json", "batches a newer submission replaced")
    cancelled_batch_ids: list[str] | None = _key("json", "batches a cancel stopped")
    partition_missing: bool | None = _key("bool", "the partition was deleted (orphan cancel)")
    results_gave_up: list[str] | None = _key("json", "results runs given up on")
    # what a newcomer reads first (issue 17)
    fix: str | None = _key("str", "what to do about a failed step (failure)")
    problems: list[str] | None = _key("json", "the input's problems, in its terms (failure)")
    submitted_status: str | None = _key("str", "the batches' status when submitted (batch)")
    provider_host: str | None = _key("str", "the host the batches went to (batch)")
    note: str | None = _key("str", "what is unusual about this materialization")

    @staticmethod
    def key(name: str) -> str:
        """The metadata key of field ``name``.

        Args:
            name: a field of this class.

        Returns:
            ``inference_batch/<name>``.

        Raises:
            KeyError: ``name`` is not a field.

        Example:
            >>> InferenceBatchMetadataSet.key("percent")
            'inference_batch/percent'
        """
        if name not in _KINDS:
            raise KeyError(f"no inference_batch metadata field {name!r}")
        return f"{NAMESPACE}/{name}"

    def to_metadata(self) -> dict[str, Any]:
        """The fields that are set, keyed ``inference_batch/<field>``, ready for Dagster.

        Returns:
            A dict to spread into ``metadata=`` of a materialization or observation.
        """
        metadata = {}
        for name, kind in _KINDS.items():
            value = getattr(self, name)
            if value is not None:
                metadata[f"{NAMESPACE}/{name}"] = _WRAP.get(kind, _same)(value)
        return metadata

    @classmethod
    def extract(cls, metadata: Mapping[str, Any] | None) -> InferenceBatchMetadataSet:
        """The fields found in ``metadata`` (an event's metadata, values wrapped or not).

        Args:
            metadata: a materialization's or observation's ``metadata``, or None.

        Returns:
            An ``InferenceBatchMetadataSet``; a key absent or of another type reads None.

        Example:
            >>> InferenceBatchMetadataSet.extract({"inference_batch/attempt": "2"}).attempt is None
            True
        """
        found = {}
        for name, kind in _KINDS.items():
            raw = (metadata or {}).get(f"{NAMESPACE}/{name}")
            value = raw.value if isinstance(raw, dg.MetadataValue) else raw
            if value is not None and _CHECKS[kind](value):
                found[name] = value
        return cls(**found)


def _same(value: Any) -> Any:
    return value


_KINDS: dict[str, str] = {f.name: f.metadata["kind"] for f in fields(InferenceBatchMetadataSet)}
