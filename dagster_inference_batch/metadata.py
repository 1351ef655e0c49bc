"""Dagster metadata for the pipeline's assets, all keyed ``inference_batch/...``.

Numeric values stay numeric so the web UI plots them across materializations and
observations. Nothing here ever sees the API key: only jobs, request lines and results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg
import orjson
import pandas as pd

from .job import BatchJob
from .request_lines import EncodedRequests
from .state import COLLECTED_JOB_KEY, COLLECTED_KEY, JOB_KEY, RecordedJob

KINDS = {"inference"}  # the kind tag every pipeline asset carries
PREVIEW_ROWS = 10
PREVIEW_CHARS = 160
STATUSES = ("succeeded", "failed", "expired", "cancelled", "missing")
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
    """The first request lines: custom_id, model, the last input and the line's size."""
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
    """Request count, shards, bytes, sha256, file ids, a preview, and the uploaded job."""
    return {
        "inference_batch/request_count": len(encoded),
        "inference_batch/shard_count": len(job.shards),
        "inference_batch/bytes": encoded.nbytes,
        "inference_batch/sha256": encoded.sha256(),
        "inference_batch/endpoint": encoded.endpoint,
        "inference_batch/file_ids": dg.MetadataValue.json([s.file_id for s in job.shards]),
        "inference_batch/preview": request_preview(encoded),
        JOB_KEY: dg.MetadataValue.json(job.to_dict()),
    }


def progress_metadata(job: BatchJob) -> dict[str, Any]:
    """Status and numeric progress of the latest attempt (completed, failed, total, %)."""
    counts = job.request_counts()
    total = counts["total"]
    done = counts["completed"] + counts["failed"]
    return {
        "inference_batch/status": job.status,
        "inference_batch/attempt": job.attempt,
        "inference_batch/completed": counts["completed"],
        "inference_batch/failed": counts["failed"],
        "inference_batch/total": total,
        "inference_batch/percent": round(100.0 * done / total, 1) if total else 0.0,
    }


def batch_metadata(job: BatchJob) -> dict[str, Any]:
    """Batch ids, status, counts, expiry and the job itself (read back by the sensor)."""
    expiries = [s.expires_at for s in job.current_shards if s.expires_at]
    metadata: dict[str, Any] = {
        **progress_metadata(job),
        "inference_batch/request_count": job.request_count,
        "inference_batch/batch_ids": dg.MetadataValue.json(job.batch_ids),
        JOB_KEY: dg.MetadataValue.json(job.to_dict()),
    }
    if expiries:
        metadata["inference_batch/expires_at"] = dg.MetadataValue.timestamp(float(min(expiries)))
    if job.errors():
        metadata["inference_batch/errors"] = dg.MetadataValue.json(job.errors())
    return metadata


def seconds_to_final(job: BatchJob) -> float | None:
    """Seconds from the first submission to the last shard's final state.

    Providers stamp batches in whole seconds, so the result is clamped at zero.
    """
    finished = [s.finished_at for s in job.shards if s.finished_at]
    if job.submitted_at is None or not finished:
        return None
    return max(0.0, round(max(finished) - job.submitted_at, 1))


def token_usage(frame: pd.DataFrame) -> dict[str, int]:
    """Token totals over the results, keyed like the Batch API's usage object."""
    prompt = int(frame["prompt_tokens"].fillna(0).sum())
    completion = int(frame["completion_tokens"].fillna(0).sum())
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }


def results_metadata(
    frame: pd.DataFrame, collected: RecordedJob, job: BatchJob, cost: float | None
) -> dict[str, Any]:
    """Row count, schema, counts per status, tokens, cost, time to final, a preview; the
    ``<name>_batch`` materialization joined (``collected``, whose refreshed job is
    ``job``) and the number of rows it submitted."""
    counts = frame["status"].value_counts()
    usage = token_usage(frame)
    schema = dg.TableSchema(
        columns=[dg.TableColumn(str(c), str(t)) for c, t in frame.dtypes.items()]
    )
    metadata: dict[str, Any] = {
        COLLECTED_KEY: collected.storage_id,
        COLLECTED_JOB_KEY: collected.job.idempotency_key,
        "inference_batch/request_count": job.request_count,
        "dagster/row_count": len(frame),
        "dagster/column_schema": schema,
        **{f"inference_batch/{s}": int(counts.get(s, 0)) for s in STATUSES},
        **{f"inference_batch/{k}": v for k, v in usage.items()},
        "inference_batch/attempts": job.attempt,
        "inference_batch/batch_ids": dg.MetadataValue.json(job.batch_ids),
        "inference_batch/preview": preview_table(
            frame, [c for c in _PREVIEW_COLUMNS if c in frame.columns]
        ),
    }
    elapsed = seconds_to_final(job)
    if elapsed is not None:
        metadata["inference_batch/seconds_to_final"] = elapsed
    if cost is not None:
        metadata["inference_batch/cost_usd"] = round(cost, 6)
    return metadata
