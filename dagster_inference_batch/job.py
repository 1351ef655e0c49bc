"""BatchJob: the record of one piece of submitted work, as stored in Dagster metadata.

A job is split into shards (one provider batch each). A resubmission adds a new
attempt: new shards holding only the requests that expired or were cancelled. The
record is plain data with a JSON round-trip so it can live in the event log.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Aggregate statuses, most urgent first, used when shards disagree.
_AGGREGATE_ORDER = ("failed", "expired", "cancelled", "completed")


@dataclass
class BatchShard:
    """One uploaded file and (once created) the provider batch that runs it."""

    index: int
    attempt: int
    idempotency_key: str
    file_id: str
    request_count: int
    bytes: int
    sha256: str
    model: str | None = None
    batch_id: str | None = None
    status: str = "uploaded"
    request_counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    created_at: int | None = None
    expires_at: int | None = None
    finished_at: int | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class BatchJob:
    """Everything known about a submitted job: endpoint, key, shards of every attempt.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> BatchJob.from_json(job.to_json()) == job
        True
    """

    endpoint: str
    idempotency_key: str
    metadata: dict[str, str] = field(default_factory=dict)
    request_count: int = 0
    shards: list[BatchShard] = field(default_factory=list)
    submitted_at: float | None = None

    @property
    def attempt(self) -> int:
        """The latest attempt number (1 for a fresh job)."""
        return max((s.attempt for s in self.shards), default=1)

    @property
    def current_shards(self) -> list[BatchShard]:
        """Shards of the latest attempt."""
        latest = self.attempt
        return [s for s in self.shards if s.attempt == latest]

    @property
    def batch_ids(self) -> list[str]:
        return [s.batch_id for s in self.shards if s.batch_id]

    @property
    def is_final(self) -> bool:
        """True when every created shard of the latest attempt has reached a final status."""
        current = self.current_shards
        return bool(current) and all(s.is_final for s in current)

    @property
    def status(self) -> str:
        """Aggregate status of the latest attempt.

        ``uploaded`` before any batch exists, ``in_progress`` while any shard runs,
        otherwise the most urgent final status among the shards
        (failed > expired > cancelled > completed).
        """
        current = self.current_shards
        if not current or any(s.batch_id is None for s in current):
            return "uploaded"
        if not all(s.is_final for s in current):
            statuses = {s.status for s in current}
            if statuses <= {"validating"}:
                return "validating"
            if "cancelling" in statuses:
                return "cancelling"
            return "in_progress"
        for status in _AGGREGATE_ORDER:
            if any(s.status == status for s in current):
                return status
        return "completed"  # pragma: no cover - every final status is listed above

    def request_counts(self) -> dict[str, int]:
        """Totals over the latest attempt: total, completed, failed."""
        totals = {"total": 0, "completed": 0, "failed": 0}
        for shard in self.current_shards:
            for key in totals:
                totals[key] += int(shard.request_counts.get(key, 0))
        return totals

    def usage(self) -> dict[str, int]:
        """Token totals over every attempt: input_tokens, output_tokens, total_tokens."""
        totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for shard in self.shards:
            for key in totals:
                totals[key] += int(shard.usage.get(key, 0) or 0)
        return totals

    def errors(self) -> list[dict[str, Any]]:
        """The provider's ``errors.data`` entries of every failed shard, tagged with batch_id."""
        return [
            {**error, "batch_id": s.batch_id}
            for s in self.current_shards
            if s.status == "failed"
            for error in s.errors
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchJob:
        fields = {k: v for k, v in data.items() if k != "shards"}
        return cls(**fields, shards=[BatchShard(**s) for s in data.get("shards", [])])

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchJob:
        return cls.from_dict(orjson.loads(text))
