"""Store rows -> JSON objects shaped like the OpenAI Files and Batches API."""

from __future__ import annotations

from typing import Any

import orjson

_TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class APIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}`, with `headers`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found(kind: str, object_id: str) -> APIError:
    return APIError(404, f"No such {kind}: {object_id!r}", param="id", code="not_found")


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
    }


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    """The Batch object; optional fields that are unset are left out (the spec types them non-null)."""
    obj: dict[str, Any] = {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "created_at": int(row["created_ts"]),
        "expires_at": int(row["expires_ts"]),
        "request_counts": {
            "total": row["total"],
            "completed": row["completed"],
            "failed": row["failed"],
        },
        "usage": {
            "input_tokens": row["input_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": row["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": row["input_tokens"] + row["output_tokens"],
        },
        "metadata": orjson.loads(row["metadata"]) if row["metadata"] else None,
    }
    for name in (*_TIMESTAMPS, "output_file_id", "error_file_id", "model"):
        if row[name] is not None:
            obj[name] = row[name]
    if row["errors"]:
        obj["errors"] = {"object": "list", "data": orjson.loads(row["errors"])}
    return obj


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page; `first_id`/`last_id` are empty strings on an empty page (the spec wants strings)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": has_more,
    }
