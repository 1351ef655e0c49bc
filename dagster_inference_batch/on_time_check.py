"""``<name>_batch_on_time``: an asset check on ``<name>_batch`` that flags late batches.

A batch has a completion window (24 h by default; the provider sets ``expires_at``).
The check is declared on ``<name>_batch`` (passed when a job is submitted) and evaluated
by ``<name>_sensor`` as it refreshes the job: a check evaluation is reported (in the
tick's ``SensorResult``) each time the verdict changes:

- WARN when a batch of the latest attempt has been in flight longer than
  ``warn_fraction`` of its window;
- ERROR when a batch is past its window plus ``error_margin_seconds`` and the provider
  has not ended it (it should have expired it);
- passed otherwise, and once every batch is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dagster as dg

from .batch_record import BatchJob

DEFAULT_WINDOW_SECONDS = 24 * 3600.0
Verdict = Literal["on_time", "late", "overdue"]


@dataclass(frozen=True)
class OnTimeOptions:
    """When a batch in flight counts as late (WARN) and overdue (ERROR).

    Args:
        warn_fraction: Share of the completion window in flight after which the check
            warns.
        error_margin_seconds: Time past the window (``expires_at``) after which a batch
            the provider has not ended fails the check.
        completion_window_seconds: The window of a batch whose provider gives no
            ``expires_at`` (and the base of the results' freshness policy).

    Raises:
        ValueError: ``warn_fraction`` not in (0, 1], or a negative margin or window.

    Example:
        >>> OnTimeOptions().warn_fraction
        0.75
        >>> OnTimeOptions(warn_fraction=0)
        Traceback (most recent call last):
        ...
        ValueError: on_time: warn_fraction must be in (0, 1], got 0
    """

    warn_fraction: float = 0.75
    error_margin_seconds: float = 3600.0
    completion_window_seconds: float = DEFAULT_WINDOW_SECONDS

    def __post_init__(self) -> None:
        if not 0 < self.warn_fraction <= 1:
            raise ValueError(f"on_time: warn_fraction must be in (0, 1], got {self.warn_fraction}")
        if self.error_margin_seconds < 0 or self.completion_window_seconds <= 0:
            raise ValueError(
                "on_time: error_margin_seconds must be >= 0 and completion_window_seconds > 0"
            )


def check_name(qualified_name: str) -> str:
    """The check's name: ``<name>_batch_on_time``.

    Example:
        >>> check_name("llm")
        'llm_batch_on_time'
    """
    return f"{qualified_name}_batch_on_time"


def on_time_spec(qualified_name: str, batch_key: dg.AssetKey) -> dg.AssetCheckSpec:
    """The check's spec, declared on ``<name>_batch``.

    Example:
        >>> on_time_spec("llm", dg.AssetKey("llm_batch")).key.name
        'llm_batch_on_time'
    """
    return dg.AssetCheckSpec(
        name=check_name(qualified_name),
        asset=batch_key,
        description="The batches in flight are within their completion window: WARN past "
        "a share of it, ERROR past it (plus a margin) while the provider has not ended "
        "them. Evaluated by the pipeline's sensor.",
    )


@dataclass(frozen=True)
class OnTime:
    """The check's verdict on a job at one moment, and what it is based on."""

    verdict: Verdict
    description: str
    metadata: dict[str, float | str]

    @property
    def passed(self) -> bool:
        """Whether the check passes (on time)."""
        return self.verdict == "on_time"

    @property
    def severity(self) -> dg.AssetCheckSeverity:
        """ERROR when overdue, else WARN (a failed late check only warns)."""
        if self.verdict == "overdue":
            return dg.AssetCheckSeverity.ERROR
        return dg.AssetCheckSeverity.WARN


def judge(job: BatchJob, now: float, options: OnTimeOptions) -> OnTime:
    """The verdict on ``job``'s latest attempt at ``now``: the latest batch decides.

    Args:
        job: The job as last refreshed.
        now: The time (unix seconds).
        options: The thresholds.

    Returns:
        ``overdue`` past a window plus the margin, ``late`` past the warning share,
        else ``on_time`` (every batch final counts as on time).

    Example:
        >>> from dagster_inference_batch.batch_record import BatchShard
        >>> shard = BatchShard(index=0, attempt=1, idempotency_key="k", file_id="f",
        ...     request_count=1, bytes=9, sha256="s", batch_id="b", status="in_progress",
        ...     created_at=0, expires_at=100)
        >>> job = BatchJob(endpoint="/v1/embeddings", idempotency_key="k", shards=[shard])
        >>> [judge(job, t, OnTimeOptions(error_margin_seconds=10)).verdict for t in (50, 80, 111)]
        ['on_time', 'late', 'overdue']
    """
    live = [s for s in job.current_shards if s.batch_id and not s.is_final]
    if not live:
        return OnTime("on_time", f"every batch is {job.status}", {"batches_in_flight": 0})
    worst: tuple[float, OnTime] | None = None
    for shard in live:
        created = float(shard.created_at if shard.created_at is not None else now)
        window = (
            float(shard.expires_at) - created
            if shard.expires_at is not None
            else options.completion_window_seconds
        )
        ends = created + window
        in_flight = max(0.0, now - created)
        share = in_flight / window if window > 0 else 1.0
        metadata: dict[str, float | str] = {
            "batch_id": str(shard.batch_id),
            "status": str(shard.status),
            "in_flight_seconds": round(in_flight, 1),
            "window_seconds": round(window, 1),
            "share_of_window": round(share, 3),
            "batches_in_flight": len(live),
        }
        if now > ends + options.error_margin_seconds:
            verdict = OnTime(
                "overdue",
                f"batch {shard.batch_id} is still {shard.status} {now - ends:.0f}s past its "
                f"completion window ({window:.0f}s), more than the "
                f"{options.error_margin_seconds:.0f}s margin: the provider has not ended it",
                metadata,
            )
        elif share >= options.warn_fraction:
            verdict = OnTime(
                "late",
                f"batch {shard.batch_id} has been {shard.status} for {in_flight:.0f}s, "
                f"{share:.0%} of its completion window ({window:.0f}s)",
                metadata,
            )
        else:
            verdict = OnTime(
                "on_time",
                f"{len(live)} batch(es) in flight, the longest {share:.0%} into its window",
                metadata,
            )
        rank = {"on_time": 0, "late": 1, "overdue": 2}[verdict.verdict] + share / 1000
        if worst is None or rank > worst[0]:
            worst = (rank, verdict)
    assert worst is not None
    return worst[1]


def on_time_evaluation(
    verdict: OnTime, qualified_name: str, batch_key: dg.AssetKey, partition: str | None
) -> dg.AssetCheckEvaluation:
    """The check evaluation a sensor tick reports for ``verdict``.

    Args:
        verdict: What ``judge`` found.
        qualified_name: The pipeline's qualified name.
        batch_key: ``<name>_batch``.
        partition: The job's partition, or None.

    Returns:
        The ``dg.AssetCheckEvaluation`` (with its partition when partitioned).

    Example:
        >>> late = OnTime("late", "slow", {})
        >>> evaluation = on_time_evaluation(late, "llm", dg.AssetKey("llm_batch"), None)
        >>> evaluation.passed, evaluation.severity.value
        (False, 'WARN')
    """
    fields = {
        "asset_key": batch_key,
        "check_name": check_name(qualified_name),
        "passed": verdict.passed,
        "severity": verdict.severity,
        "description": verdict.description,
        "metadata": {**verdict.metadata, "verdict": verdict.verdict},
    }
    if partition is not None:
        fields["partition"] = partition
    return dg.AssetCheckEvaluation(**fields)


def submitted_result(qualified_name: str) -> dg.AssetCheckResult:
    """The check's result when a job is submitted: on time, nothing in flight yet.

    Example:
        >>> submitted_result("llm").passed
        True
    """
    return dg.AssetCheckResult(
        check_name=check_name(qualified_name),
        passed=True,
        severity=dg.AssetCheckSeverity.WARN,
        description="just submitted; the sensor evaluates the check as it refreshes",
        metadata={"verdict": "on_time"},
    )
