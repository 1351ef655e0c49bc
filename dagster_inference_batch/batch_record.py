"""BatchJob: the record of one piece of submitted work, as stored in Dagster metadata.

A job is split into shards (one provider batch each). A resubmission adds a new
attempt: new shards holding only the requests that expired or were cancelled. The
record is plain data with a JSON round-trip so it can live in the event log.

Stored records outlive the code that wrote them (the event log keeps every job), so
``to_dict`` stamps ``format_version`` and ``from_dict`` reads leniently: unknown fields
are ignored, a missing optional field takes its default, and only a record of a newer
format, or one too broken to use, raises ``StoredStateError``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import orjson

FORMAT_VERSION = 1
"""The layout of the stored records this code writes and reads up to: a ``BatchJob``'s
dict (``inference_batch/job`` metadata) and the sensor's cursor. A record without
``format_version`` was written before the marker existed and is read as version 1 (the
same fields). Bump it only for a change the lenient reading cannot absorb (a field that
changes meaning or type), and keep reading the older versions."""

FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Aggregate statuses, most urgent first, used when shards disagree.
_AGGREGATE_ORDER = ("failed", "expired", "cancelled", "completed")


class StoredStateError(ValueError):
    """A stored record (a recorded ``BatchJob``, a sensor cursor) this version cannot use:
    written by a newer dagster-inference-batch, or broken (not a JSON object, a required
    field missing, a field of the wrong type). The message says which."""


def _kind(value: Any) -> str:
    """A JSON value's kind, for messages."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (str, "a string"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "a number"
    return "an array" if isinstance(value, list) else type(value).__name__


def stored_format_version(data: Any, what: str) -> int:
    """The ``format_version`` of a stored record, checked to be one this code reads.

    Args:
        data: the stored record (a JSON object).
        what: names the record in the error.

    Returns:
        The version; 1 when absent.

    Raises:
        StoredStateError: ``data`` is not an object, or its version is invalid or newer.

    Example:
        >>> stored_format_version({"endpoint": "/v1/embeddings"}, "a job")
        1
    """
    if not isinstance(data, dict):
        raise StoredStateError(f"{what} is not a JSON object but {_kind(data)}")
    version = data.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise StoredStateError(f"{what} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise StoredStateError(
            f"{what} has format_version {version}: it was written by a newer "
            f"dagster-inference-batch (this one reads up to format_version {FORMAT_VERSION}); "
            "upgrade dagster-inference-batch everywhere it runs"
        )
    return version


def _json_types(hint: Any) -> tuple[type, ...]:
    """The Python types a JSON value may have for a field annotated ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _json_types(arg))
    hint = origin or hint
    if hint is type(None):
        return (type(None),)
    if hint is float:
        return (int, float)
    return (object,) if hint is Any else (hint,)


@functools.cache
def _field_rules(cls: type) -> list[tuple[str, str, tuple[type, ...], bool]]:
    """(name, annotation, allowed types, has a default) of each field of the dataclass."""
    hints = typing.get_type_hints(cls)
    return [
        (
            spec.name,
            str(spec.type),
            _json_types(hints[spec.name]),
            spec.default is not dataclasses.MISSING
            or spec.default_factory is not dataclasses.MISSING,
        )
        for spec in dataclasses.fields(cls)
    ]


def read_stored_fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    """Keyword arguments for the dataclass ``cls`` from a stored dict.

    Unknown keys are ignored, a missing (or null) field with a default is left to its
    default, and every value is checked to have the annotated JSON type (containers by
    their outer type).

    Args:
        cls: the dataclass to build.
        data: the stored record.
        what: names the record in errors.

    Returns:
        The fields found, to pass to ``cls(**...)``.

    Raises:
        StoredStateError: ``data`` is not an object, lacks a required field, or holds a
            value of the wrong type.

    Example:
        >>> read_stored_fields(BatchJob, {"endpoint": "/v1/embeddings",
        ...     "idempotency_key": "k", "unknown": 1}, "a job")
        {'endpoint': '/v1/embeddings', 'idempotency_key': 'k'}
    """
    if not isinstance(data, dict):
        raise StoredStateError(f"{what} is not a JSON object but {_kind(data)}")
    values: dict[str, Any] = {}
    for name, annotation, allowed, has_default in _field_rules(cls):
        value = data.get(name)
        if value is None and has_default:
            continue
        if name not in data:
            raise StoredStateError(f"{what} lacks the required field {name!r}")
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise StoredStateError(
                f"{what}: field {name!r} should be {annotation} but is {_kind(value)}"
            )
        values[name] = value
    return values


@dataclass
class BatchShard:
    """One uploaded file and (once created) the provider batch that runs it.

    Stored inside its ``BatchJob`` (``BatchJob.to_dict`` / ``from_dict``).

    Example:
        >>> shard = BatchShard(index=0, attempt=1, idempotency_key="k-0", file_id="file-1",
        ...     request_count=2, bytes=180, sha256="ab", batch_id="batch_1", status="completed")
        >>> shard.is_final
        True
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k", shards=[shard])
        >>> BatchJob.from_dict(job.to_dict()).shards == [shard]
        True
    """

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
        """Whether the batch ended: completed, failed, expired or cancelled."""
        return self.status in FINAL_STATUSES


@dataclass
class BatchJob:
    """Everything known about a submitted job: endpoint, key, shards of every attempt.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> job.to_dict()["format_version"], job.status
        (1, 'uploaded')
        >>> BatchJob.from_dict(job.to_dict()) == job
        True
        >>> BatchJob.from_json(job.to_json()) == job
        True
    """

    endpoint: str
    idempotency_key: str
    metadata: dict[str, str] = field(default_factory=dict)
    request_count: int = 0
    shards: list[BatchShard] = field(default_factory=list)
    submitted_at: float | None = None
    # hex sha256 of the request lines as submitted (``EncodedRequests.sha256()``), which
    # ``<name>_results`` compares the upstream's current lines with; None in a job
    # recorded before the field existed
    sha256: str | None = None
    # incremental jobs (``incremental.py``): rows answered without being sent (from the
    # answer store, or a duplicate of a row sent), the URL of the file listing every row
    # with its fingerprint, and the cost estimate of the lines sent
    rows_reused: int = 0
    manifest: str | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    tokens_saved: dict[str, int] = field(default_factory=dict)
    # the upstream had no rows (a quiet day's partition) and the pipeline allows that:
    # no file, no batch, empty results
    empty_input: bool = False

    @property
    def answered_without_batches(self) -> bool:
        """Every row was answered from earlier answers, or there was none: no file, no
        batch, nothing to wait for."""
        return not self.shards and (self.rows_reused > 0 or self.empty_input)

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
        """The provider batch ids of every attempt, oldest first."""
        return [s.batch_id for s in self.shards if s.batch_id]

    @property
    def is_final(self) -> bool:
        """True when every created shard of the latest attempt has reached a final status."""
        if self.answered_without_batches:
            return True
        current = self.current_shards
        return bool(current) and all(s.is_final for s in current)

    @property
    def status(self) -> str:
        """Aggregate status of the latest attempt.

        ``uploaded`` before any batch exists, ``in_progress`` while any shard runs,
        otherwise the most urgent final status among the shards
        (failed > expired > cancelled > completed); ``completed`` for a job answered
        without batches.
        """
        if self.answered_without_batches:
            return "completed"
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
        """The provider's request counts, summed over the latest attempt.

        Returns:
            ``{"total": ..., "completed": ..., "failed": ...}``.
        """
        totals = {"total": 0, "completed": 0, "failed": 0}
        for shard in self.current_shards:
            for key in totals:
                totals[key] += int(shard.request_counts.get(key, 0))
        return totals

    def usage(self) -> dict[str, int]:
        """The provider's token usage, summed over every attempt.

        Returns:
            ``{"input_tokens": ..., "output_tokens": ..., "total_tokens": ...}``.
        """
        totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for shard in self.shards:
            for key in totals:
                totals[key] += int(shard.usage.get(key, 0) or 0)
        return totals

    def errors(self) -> list[dict[str, Any]]:
        """Why the latest attempt's failed batches failed.

        Returns:
            The provider's ``errors.data`` entries of each failed shard, each tagged with
            its ``batch_id``.
        """
        return [
            {**error, "batch_id": s.batch_id}
            for s in self.current_shards
            if s.status == "failed"
            for error in s.errors
        ]

    def to_dict(self) -> dict[str, Any]:
        """The job as stored.

        Returns:
            Its fields (shards as dicts), stamped with ``format_version``.
        """
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        """``to_dict`` as JSON text.

        Returns:
            The JSON text.
        """
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, data: Any) -> BatchJob:
        """Read a job as ``to_dict`` wrote it, in this version or an earlier one.

        Unknown fields (of the job and of each shard) are ignored and a missing optional
        field takes its default, so a record written by a version with more or fewer
        fields still reads.

        Args:
            data: the stored dict.

        Returns:
            The job.

        Raises:
            StoredStateError: a record of a newer ``format_version``, or one too broken
                to use.

        Example:
            >>> BatchJob.from_dict(
            ...     {"endpoint": "/v1/embeddings", "idempotency_key": "k", "added_later": 1}
            ... ).endpoint
            '/v1/embeddings'
        """
        what = "the recorded BatchJob"
        stored_format_version(data, what)
        values = read_stored_fields(cls, data, what)
        values["shards"] = [
            BatchShard(**read_stored_fields(BatchShard, shard, f"{what}, shard {n}"))
            for n, shard in enumerate(values.get("shards", []))
        ]
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchJob:
        """``from_dict`` of JSON text.

        Args:
            text: the JSON text ``to_json`` wrote.

        Returns:
            The job.

        Raises:
            StoredStateError: the text is not JSON, or ``from_dict`` refuses it.
        """
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise StoredStateError(f"the recorded BatchJob is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
