"""The skip reason of a tick: what it saw, in one line. Pure: no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..batch_record import BatchJob
from .results_runs import MAX_RESULTS_RETRIES
from .tick import SlotPlan, where

_NAMES_SHOWN = 5  # partitions named in one clause of the skip reason


@dataclass
class TickSummary:
    """What a tick saw, for the skip reason."""

    in_flight: list[BatchJob] = field(default_factory=list)
    in_flight_slots: list[str] = field(default_factory=list)
    waiting: int = 0
    notes: list[str] = field(default_factory=list)
    not_reached: int = 0
    errors: int = 0
    failed: list[str] = field(default_factory=list)
    gave_up: int = 0
    unreadable: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    def add(self, slot: str, plan: SlotPlan, *, not_reached: bool) -> None:
        """Count one slot's plan.

        Args:
            slot: The slot.
            plan: Its plan this tick.
            not_reached: Whether the tick did not reach it.
        """
        if plan.state in ("in_flight", "error") and plan.job is not None:
            self.in_flight.append(plan.job)
            self.in_flight_slots.append(slot)
            self.not_reached += not_reached
        self.errors += plan.state == "error"
        self.waiting += plan.state == "waiting"
        self.gave_up += plan.state == "gave_up"
        if plan.state == "gone":
            self.gone.append(slot)
        if plan.note:
            self.notes.append(f"{where(slot)}: {plan.note}")

    def describe(self) -> str:
        """The skip reason.

        Returns:
            One clause per kind of slot seen, or ``no batches in flight``.

        Example:
            >>> TickSummary(waiting=1).describe()
            '1 waiting for a requested results run'
            >>> from dagster_inference_batch.batch_record import BatchJob
            >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
            >>> TickSummary(in_flight=[job], in_flight_slots=["2026-11-01"]).describe()
            "1 in flight (1 uploaded; 0/0 requests done): partition '2026-11-01'"
            >>> TickSummary(unreadable=["a"]).describe()
            "1 skipped, its recorded job cannot be used: partition 'a' (see the tick's logs)"
        """
        parts = [self._in_flight()] if self.in_flight else []
        if self.waiting:
            notes = f" ({'; '.join(self.notes)})" if self.notes else ""
            parts.append(f"{self.waiting} waiting for a requested results run{notes}")
        if self.not_reached:
            parts.append(f"{self.not_reached} not reached this tick, first next tick")
        if self.errors:
            parts.append(
                f"{self.errors} could not be refreshed (see the tick's logs), retried next tick"
            )
        if self.failed:
            parts.append(
                f"{len(self.failed)} could not be handled this tick: {names(self.failed)} "
                "(see the tick's logs), retried next tick"
            )
        if self.gave_up:
            parts.append(
                f"{self.gave_up} whose results run failed {MAX_RESULTS_RETRIES + 1} times "
                "(see the runs; materialize the results asset to try again)"
            )
        if self.unreadable:
            its = "its recorded job" if len(self.unreadable) == 1 else "their recorded jobs"
            parts.append(
                f"{len(self.unreadable)} skipped, {its} cannot be used: "
                f"{names(self.unreadable)} (see the tick's logs)"
            )
        if self.gone:
            its = "its partition no longer exists" if len(self.gone) == 1 else "partitions gone"
            parts.append(f"{len(self.gone)} skipped, {its}: {names(self.gone)}")
        return "; ".join(parts) or "no batches in flight"

    def _in_flight(self) -> str:
        jobs = self.in_flight
        statuses = Counter(job.status for job in jobs)
        counts = [job.request_counts() for job in jobs]
        done = sum(c["completed"] + c["failed"] for c in counts)
        # while validating the provider counts no requests yet: the job knows how many
        total = sum(max(c["total"], j.request_count) for c, j in zip(counts, jobs, strict=True))
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        return (
            f"{len(jobs)} in flight ({by_status}; {done}/{total} requests done): "
            f"{names(self.in_flight_slots)}"
        )


def names(slots: Sequence[str]) -> str:
    """Slots as messages name them, the first few.

    Example:
        >>> names(["a", "b"])
        "partition 'a', partition 'b'"
    """
    shown = ", ".join(where(slot) for slot in slots[:_NAMES_SHOWN])
    more = len(slots) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown
