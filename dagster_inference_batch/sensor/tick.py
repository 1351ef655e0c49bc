"""What a sensor tick works with: its settings, what it read and did, and its plan.

Pure: no I/O. ``plan_work`` picks which slot (a partition key, or ``""`` for an
unpartitioned pipeline) needs which work; the I/O layer (``gather``) does it and fills
a ``TickState``; ``plan.plan_tick`` turns that into a ``TickPlan``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg

from ..batch_record import BatchJob
from ..on_time_check import OnTimeOptions
from ..spec import DEFAULT_PROGRESS_STEP_PERCENT, DEFAULT_PROGRESS_STEP_SECONDS
from ..state import Action, RecordedJob, UnreadableJob
from .cursor import SensorCursor
from .results_runs import ResultsRun, results_for


@dataclass(frozen=True)
class SensorSettings:
    """The sensor's own settings (the factory's arguments of the same names).

    Example:
        >>> SensorSettings(name="llm", batch_key=dg.AssetKey("llm_batch")).cancel_orphaned
        True
    """

    name: str
    batch_key: dg.AssetKey
    cancel_orphaned: bool = True
    progress_step_percent: float = DEFAULT_PROGRESS_STEP_PERCENT
    progress_step_seconds: float = DEFAULT_PROGRESS_STEP_SECONDS
    on_time: OnTimeOptions | None = None  # thresholds of <name>_batch_on_time, if declared


@dataclass(frozen=True)
class Refreshed:
    """A job refreshed this tick, what it needs next, and its new attempt if the tick
    resubmitted its remainder."""

    recorded: RecordedJob
    job: BatchJob
    action: Action
    resubmitted: BatchJob | None = None


@dataclass(frozen=True)
class Abandoned:
    """The job of a partition that no longer exists, refreshed; ``cancelled`` names the
    batches this tick cancelled (none when all were final or cancelling already)."""

    recorded: RecordedJob
    job: BatchJob
    cancelled: tuple[str, ...] = ()


Outcome = Refreshed | Abandoned | BaseException


@dataclass(frozen=True)
class TickWork:
    """Which slots a tick works on: ``refresh`` (those a tick did not reach first),
    ``abandon`` (partition gone, batches perhaps to cancel), ``requested`` (results run
    already requested: a runs lookup, no refresh) and ``settled`` (given up, or failed
    validation: nothing until a newer batch)."""

    refresh: list[str] = field(default_factory=list)
    abandon: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TickState:
    """Everything a tick read and did, for ``plan_tick``."""

    cursor: SensorCursor
    jobs: Sequence[RecordedJob]
    work: TickWork
    unreadable: Sequence[UnreadableJob] = ()
    gone: Collection[str] = frozenset()  # slots whose partition no longer exists
    unchecked: Mapping[str, str] = field(default_factory=dict)  # slot -> why not checked
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    not_reached: Sequence[str] = ()
    runs: Mapping[str, Sequence[ResultsRun] | BaseException] = field(default_factory=dict)
    elsewhere: Mapping[str, str] = field(default_factory=dict)  # slot -> run collecting it
    provider: Mapping[str, str] = field(default_factory=dict)  # metadata naming the provider
    dashboard_url: str | None = None  # the provider's page of a batch ({batch_id}), if any
    now: float = 0.0  # unix seconds
    read_at: float = 0.0  # when the event log was read


@dataclass(frozen=True)
class TickPlan:
    """What a tick hands to Dagster, and the lines for its log."""

    asset_events: list[dg.AssetObservation | dg.AssetMaterialization | dg.AssetCheckEvaluation]
    run_requests: list[dg.RunRequest]
    cursor: SensorCursor
    skip_reason: str | None
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)


SlotState = Literal["in_flight", "collecting", "waiting", "gave_up", "gone", "error"]


@dataclass
class SlotPlan:
    """One slot's part of a tick: applied only when it was built whole."""

    state: SlotState
    job: BatchJob | None = None  # for "in_flight": the job as last seen
    events: list[dg.AssetObservation | dg.AssetMaterialization | dg.AssetCheckEvaluation] = field(
        default_factory=list
    )
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    cursor: dict[str, Any] = field(default_factory=dict)  # cursor entry -> this slot's value
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)
    note: str = ""


def slot_of(recorded: RecordedJob | UnreadableJob) -> str:
    """The cursor slot of a recorded job: its partition key, or ``""``."""
    return recorded.partition or ""


def where(slot: str) -> str:
    """A slot as messages name it: ``partition 'a'``, or the pipeline's one job.

    Example:
        >>> where("a"), where("")
        ("partition 'a'", 'the unpartitioned job')
    """
    return f"partition {slot!r}" if slot else "the unpartitioned job"


def plan_work(
    cursor: SensorCursor,
    jobs: Sequence[RecordedJob],
    *,
    gone: Collection[str] = (),
    unchecked: Collection[str] = (),
    cancel_orphaned: bool = True,
) -> TickWork:
    """Which work each slot needs this tick.

    Args:
        cursor: What earlier ticks remembered.
        jobs: The uncollected jobs, one per slot.
        gone: Slots whose partition no longer exists: only abandoned (once).
        unchecked: Slots whose partition could not be checked: left for next tick.
        cancel_orphaned: Whether gone slots' batches are cancelled.

    Returns:
        The slots to refresh (those not reached last tick first), abandon, look up
        and leave settled.
    """
    work = TickWork()
    by_slot = {slot_of(r): r for r in jobs}
    for slot, recorded in by_slot.items():
        sid = recorded.storage_id
        if slot in unchecked:
            continue
        if slot in gone:
            if cancel_orphaned and cursor.orphaned.get(slot) != sid:
                work.abandon.append(slot)
        elif cursor.gave_up.get(slot) == sid or cursor.failed.get(slot) == sid:
            work.settled.append(slot)
        elif cursor.requested.get(slot) == sid and slot in cursor.run_keys:
            work.requested.append(slot)
    skipped = {*work.settled, *work.requested}
    active = {s: None for s in by_slot if s not in unchecked and s not in gone}
    active = {s: None for s in active if s not in skipped}  # dicts: ordered sets
    first = {s: None for s in cursor.resume if s in active}
    work.refresh.extend(first)
    work.refresh.extend(s for s in active if s not in first)
    return work


def runs_wanted(
    name: str,
    jobs: Sequence[RecordedJob],
    work: TickWork,
    outcomes: Mapping[str, Outcome],
) -> dict[str, str]:
    """The results runs the plan needs looked up.

    Args:
        name: The pipeline's name.
        jobs: The uncollected jobs.
        work: The tick's work.
        outcomes: What the tick's refreshes did, by slot.

    Returns:
        Slot -> ``results_for`` tag of each final job whose results runs the plan needs.
    """
    by_slot = {slot_of(r): r for r in jobs}
    wanted = {slot: results_for(name, by_slot[slot]) for slot in work.requested}
    for slot, outcome in outcomes.items():
        if (
            isinstance(outcome, Refreshed)
            and outcome.resubmitted is None
            and outcome.action == "collect"
        ):
            wanted[slot] = results_for(name, outcome.recorded)
    return wanted
