"""Dagster metadata for the pipeline's assets, all keyed ``inference_batch/...``.

Numeric values stay numeric so the web UI plots them across materializations and
observations. Nothing here ever sees the API key: only jobs, request lines and results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

import dagster as dg
import orjson
import pandas as pd

from .batch_record import BatchJob
from .metadata_set import InferenceBatchMetadataSet
from .request_lines import EncodedRequests
from .results import STATUSES
from .results_stream import ResultsDataset
from .results_summary import failure_rate, results_summary
from .results_tally import PREVIEW_ROWS, ResultsTally
from .state import RecordedJob
from .structured_output import invalid_output_summary

KINDS = {"inference"}  # the kind tag every pipeline asset carries
PREVIEW_CHARS = 160
_PREVIEW_COLUMNS = ("custom_id", "status", "content", "error_message")


def _short(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int | float):
        return None if isinstance(value, float) and pd.isna(value) else value
    text = str(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _column_type(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int"
    if pd.api.types.is_float_dtype(column):
        return "float"
    return "string"


def preview_table(frame: pd.DataFrame, columns: Sequence[str]) -> dg.TableMetadataValue:
    """The first rows of ``frame`` as a table, long values cut short.

    Args:
        frame: the table to preview.
        columns: the columns shown, in order.

    Returns:
        A table of ``PREVIEW_ROWS`` rows at most, each value at most ``PREVIEW_CHARS``.

    Example:
        >>> preview_table(pd.DataFrame({"a": ["x"]}), ["a"]).records[0].data
        {'a': 'x'}
    """
    head = frame.head(PREVIEW_ROWS)
    records = [
        dg.TableRecord({c: _short(v) for c, v in zip(columns, row, strict=True)})
        for row in head[list(columns)].itertuples(index=False, name=None)
    ]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, _column_type(frame[c])) for c in columns])
    return dg.MetadataValue.table(records, schema=schema)


def _last_input(body: dict[str, Any]) -> Any:
    """What a request asks: the last chat message's content, or the completion prompt."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("content")
    return body.get("prompt")


def request_preview(encoded: EncodedRequests) -> dg.TableMetadataValue:
    """A preview of the first request lines.

    Args:
        encoded: the request lines.

    Returns:
        A table of custom_id, model, the last input and the line's size.
    """
    lines = encoded.lines[:PREVIEW_ROWS]
    bodies = [orjson.loads(line)["body"] for line in lines]
    frame = pd.DataFrame(
        {
            "custom_id": encoded.custom_ids[:PREVIEW_ROWS],
            "model": [body.get("model") for body in bodies],
            "input": [_last_input(body) for body in bodies],
            "bytes": [len(line) for line in lines],
        }
    )
    return preview_table(frame, list(frame.columns))


def input_file_metadata(encoded: EncodedRequests, job: BatchJob) -> dict[str, Any]:
    """The ``<name>_input_file`` materialization's metadata.

    Args:
        encoded: the request lines of every row (those uploaded, and any answered
            from earlier answers).
        job: the job holding the uploaded files (no batches yet).

    Returns:
        Requests and bytes uploaded, shards, sha256 of every row's line, endpoint, file
        ids, a preview of the requests, and the job itself (``inference_batch/job``).
    """
    return InferenceBatchMetadataSet(
        request_count=job.request_count,
        shard_count=len(job.shards),
        bytes=sum(s.bytes for s in job.shards),
        sha256=encoded.sha256(),
        endpoint=encoded.endpoint,
        file_ids=[s.file_id for s in job.shards],
        preview=request_preview(encoded),
        job=job.to_dict(),
    ).to_metadata()


def incremental_metadata(job: BatchJob, cost: Callable[[dict[str, int]], float | None]) -> dict:
    """What an incremental job reused and what its lines should cost (``<name>_input_file``).

    Args:
        job: The uploaded job.
        cost: USD of a token usage at the resource's prices (None without).

    Returns:
        Rows reused and sent, tokens and cost saved, and the cost estimate.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k",
        ...     request_count=2, rows_reused=3, tokens_saved={"input_tokens": 9})
        >>> incremental_metadata(job, lambda usage: None)["inference_batch/rows_reused"]
        3
    """
    saved = cost(job.tokens_saved) if job.tokens_saved else None
    estimate = job.estimate
    return InferenceBatchMetadataSet(
        rows_reused=job.rows_reused,
        rows_sent=job.request_count,
        tokens_saved=sum(job.tokens_saved.values()) if job.manifest else None,
        cost_saved_usd=_rounded(saved),
        estimated_input_tokens=estimate.get("input_tokens"),
        estimated_cost_usd=_rounded(estimate.get("typical_usd")),
        estimated_worst_cost_usd=_rounded(estimate.get("worst_usd")),
        estimate_method=estimate.get("method"),
    ).to_metadata()


def reuse_metadata(
    results: Results,
    job: BatchJob,
    cost: Callable[[dict[str, int]], float | None],
) -> dict[str, Any]:
    """Rows answered from the store beside the job's estimate (``<name>_results``).

    Args:
        results: The results, with their ``source`` column (or their dataset, or its
            summary).
        job: The job joined.
        cost: USD of a token usage at the resource's prices (None without).

    Returns:
        Rows reused, tokens and cost saved, and the estimate made before upload, for
        comparison with the actual cost (``inference_batch/cost_usd``).

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded"] * 2,
        ...     "source": ["store", "batch"], "prompt_tokens": [3, 4],
        ...     "completion_tokens": [1, 2]})
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k",
        ...     rows_reused=1, estimate={"typical_usd": 0.5})
        >>> reuse_metadata(frame, job, lambda usage: None)["inference_batch/tokens_saved"]
        4
    """
    summary = summary_of(results)
    saved = summary.store_tokens
    saved_cost = cost(saved) if summary.store_rows else None
    estimate = job.estimate
    return InferenceBatchMetadataSet(
        rows_reused=job.rows_reused,
        tokens_saved=saved["total_tokens"],
        cost_saved_usd=_rounded(saved_cost),
        estimated_cost_usd=_rounded(estimate.get("typical_usd")),
        estimated_worst_cost_usd=_rounded(estimate.get("worst_usd")),
        estimated_input_tokens=estimate.get("input_tokens"),
    ).to_metadata()


def _rounded(amount: float | None) -> float | None:
    return round(amount, 6) if isinstance(amount, int | float) else None


def _progress(job: BatchJob) -> InferenceBatchMetadataSet:
    counts = job.request_counts()
    total = counts["total"]
    done = counts["completed"] + counts["failed"]
    if total:
        percent = round(100.0 * done / total, 1)
    else:  # nothing sent yet, or nothing to send (answered without batches)
        percent = 100.0 if job.answered_without_batches else 0.0
    return InferenceBatchMetadataSet(
        status=job.status,
        attempt=job.attempt,
        completed=counts["completed"],
        failed=counts["failed"],
        total=total,
        percent=percent,
    )


def _pace(job: BatchJob, now: float) -> InferenceBatchMetadataSet:
    """Requests per minute since the attempt's batches were created, and the ETA."""
    counts = job.request_counts()
    done, total = counts["completed"] + counts["failed"], counts["total"]
    created = [s.created_at for s in job.current_shards if s.created_at]
    elapsed = now - min(created) if created else 0.0
    if not done or elapsed <= 0 or job.is_final:
        return InferenceBatchMetadataSet()
    per_minute = 60.0 * done / elapsed
    eta_seconds = 60.0 * max(0, total - done) / per_minute
    return InferenceBatchMetadataSet(
        requests_per_minute=round(per_minute, 2),
        eta=now + eta_seconds,
        eta_seconds=round(eta_seconds, 1),
    )


def dashboard_metadata(job: BatchJob, dashboard_url: str | None) -> dict[str, Any]:
    """Links to the provider's page of each batch of the latest attempt.

    Args:
        job: the job.
        dashboard_url: the provider's page of a batch, ``{batch_id}`` standing for its id;
            None when the provider has none (nothing is returned).

    Returns:
        ``inference_batch/dashboard_url`` (the first batch, a URL) and, with more than
        one batch, ``inference_batch/dashboards`` (a markdown list of every batch).

    Example:
        >>> from dagster_inference_batch.batch_record import BatchShard
        >>> shard = BatchShard(index=0, attempt=1, idempotency_key="k", file_id="f",
        ...     request_count=1, bytes=9, sha256="s", batch_id="b1")
        >>> job = BatchJob(endpoint="/v1/embeddings", idempotency_key="k", shards=[shard])
        >>> dashboard_metadata(job, "https://example.com/batches/{batch_id}")
        {'inference_batch/dashboard_url': UrlMetadataValue(url='https://example.com/batches/b1')}
    """
    ids = [s.batch_id for s in job.current_shards if s.batch_id]
    if not dashboard_url or not ids:
        return {}
    links = [dashboard_url.format(batch_id=batch_id) for batch_id in ids]
    listed = "\n".join(f"- [{i}]({link})" for i, link in zip(ids, links, strict=True))
    return InferenceBatchMetadataSet(
        dashboard_url=links[0], dashboards=listed if len(links) > 1 else None
    ).to_metadata()


def progress_metadata(
    job: BatchJob, *, now: float | None = None, dashboard_url: str | None = None
) -> dict[str, Any]:
    """Status, numeric progress, pace and provider links of the latest attempt, for a
    progress observation.

    Each observation names its attempt and job key, so the progress of one job is told
    from the next one's in the Events tab and the Plots tab.

    Args:
        job: the job as last refreshed.
        now: the time of the refresh (unix seconds); with it, the requests per minute
            since the batches were created and the ETA at that pace, once any is done.
        dashboard_url: the provider's page of a batch (see ``dashboard_metadata``).

    Returns:
        ``inference_batch/`` status, attempt, completed, failed, total, percent and
        job_key, and when known ``requests_per_minute``, ``eta``, ``eta_seconds`` and the
        links.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> progress_metadata(job)["inference_batch/percent"]
        0.0
        >>> progress_metadata(job)["inference_batch/job_key"]
        'k'
    """
    pace = _pace(job, now) if now is not None else InferenceBatchMetadataSet()
    return {
        **dataclasses.replace(_progress(job), job_key=job.idempotency_key).to_metadata(),
        **pace.to_metadata(),
        **dashboard_metadata(job, dashboard_url),
    }


def provider_host(provider_label: str) -> str:
    """The host a provider label (a base URL, or the local server's notice) names.

    Example:
        >>> provider_host("https://batch.inference.net/v1")
        'batch.inference.net'
        >>> provider_host("local (synthetic answers)")
        'local (synthetic answers)'
    """
    return urlparse(provider_label).hostname or provider_label


def batch_metadata(
    job: BatchJob, provider_label: str | None = None, dashboard_url: str | None = None
) -> dict[str, Any]:
    """The ``<name>_batch`` materialization's metadata (read back by the sensor).

    It says what was submitted, not how far it got: the status at submission
    (``submitted_status``), where to (``provider_host``), the batch ids and the earliest
    expiry, with links to the provider's page of each batch when it has one. Live progress
    is in the asset's observations (``progress_metadata``).

    Args:
        job: the job as submitted.
        provider_label: the resource's ``provider_label``, if known.
        dashboard_url: the provider's page of a batch (see ``dashboard_metadata``).

    Returns:
        ``submitted_status``, attempt, request count, batch ids, the provider's host, the
        job itself, the links of ``dashboard_metadata``, and the earliest expiry and the
        provider's errors when there are any.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> meta = batch_metadata(job, "https://batch.inference.net/v1")
        >>> meta["inference_batch/submitted_status"], meta["inference_batch/provider_host"]
        ('uploaded', 'batch.inference.net')
        >>> from dagster_inference_batch.batch_record import BatchShard
        >>> job.shards = [BatchShard(index=0, attempt=1, idempotency_key="k", file_id="f",
        ...     request_count=1, bytes=9, sha256="s", batch_id="b1")]
        >>> batch_metadata(job, None, "https://example.com/batches/{batch_id}")[
        ...     "inference_batch/dashboard_url"].url
        'https://example.com/batches/b1'
    """
    expiries = [s.expires_at for s in job.current_shards if s.expires_at]
    submitted = InferenceBatchMetadataSet(
        submitted_status=job.status,
        attempt=job.attempt,
        request_count=job.request_count,
        batch_ids=job.batch_ids,
        provider_host=provider_host(provider_label) if provider_label else None,
        job=job.to_dict(),
        expires_at=float(min(expiries)) if expiries else None,
        errors=job.errors() or None,
    ).to_metadata()
    return {**submitted, **dashboard_metadata(job, dashboard_url)}


def seconds_to_final(job: BatchJob) -> float | None:
    """Seconds from the first submission to the last shard's final state.

    Args:
        job: the job as last refreshed.

    Returns:
        The seconds, clamped at zero (providers stamp batches in whole seconds), or None
        before any shard finished.

    Example:
        >>> seconds_to_final(BatchJob(endpoint="/v1/embeddings", idempotency_key="k")) is None
        True
    """
    finished = [s.finished_at for s in job.shards if s.finished_at]
    if job.submitted_at is None or not finished:
        return None
    return max(0.0, round(max(finished) - job.submitted_at, 1))


Results = pd.DataFrame | ResultsDataset | ResultsTally


def summary_of(results: Results) -> ResultsTally:
    """The summary of a results table, the one a results dataset was written with, or
    ``results`` itself when it is one.

    Example:
        >>> summary_of(pd.DataFrame({"custom_id": ["a"], "status": ["missing"],
        ...     "prompt_tokens": [None], "completion_tokens": [None], "error_code": [None],
        ...     "error_message": [None]})).statuses["missing"]
        1
    """
    if isinstance(results, ResultsTally):
        return results
    return results.summary if isinstance(results, ResultsDataset) else ResultsTally.of(results)


def results_metadata(
    results: Results,
    collected: RecordedJob,
    job: BatchJob,
    cost: float | None,
) -> dict[str, Any]:
    """The ``<name>_results`` materialization's metadata.

    Args:
        results: the results table, the dataset they were streamed to, or its summary.
        collected: the ``<name>_batch`` materialization joined (its storage id and job).
        job: that job as refreshed by the results step.
        cost: the estimated cost in USD, or None without prices.

    Returns:
        Row count, schema, counts per status (invalid outputs also by error), tokens,
        cost, failure rate, time to final, a markdown summary (``results_summary``), the
        embedding vectors' length (embeddings batches), a preview,
        the link to the batch materialization joined (``collected_storage_id`` and
        ``job_key``) and the number of rows the job submitted.
    """
    summary = summary_of(results)
    schema = dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in summary.dtypes])
    head = summary.head if summary.head is not None else pd.DataFrame()
    elapsed = seconds_to_final(job)
    fields = InferenceBatchMetadataSet(
        collected_storage_id=collected.storage_id,
        job_key=collected.job.idempotency_key,
        request_count=job.request_count,
        **{status: summary.statuses.get(status, 0) for status in STATUSES},
        **summary.tokens,
        attempts=job.attempt,
        batch_ids=job.batch_ids,
        preview=preview_table(head, [c for c in _PREVIEW_COLUMNS if c in head.columns]),
        seconds_to_final=elapsed,
        cost_usd=round(cost, 6) if cost is not None else None,
        failure_rate=failure_rate(summary),
        summary=results_summary(summary, job, summary.batch_tokens, cost),
        embedding_dimension=summary.embedding_dimension,
        invalid_output_errors=invalid_output_summary(summary.invalid) or None,
    )
    return {
        "dagster/row_count": summary.rows,
        "dagster/column_schema": schema,
        **fields.to_metadata(),
    }
