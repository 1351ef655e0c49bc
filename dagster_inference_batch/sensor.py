"""The ``<name>_sensor``: watch in-flight batches, resubmit leftovers, request results.

A tick reads, works, then plans:

1. **read**: the jobs not yet collected, from the event log (the latest ``<name>_batch``
   materialization per partition that is newer than the partition's results), and which
   of their partitions still exist;
2. **work** (``plan_work`` picks it, ``map_within_budget`` runs it): refresh the jobs in
   flight concurrently within a time budget, resubmitting an expired or cancelled
   remainder while attempts remain; cancel the batches of a partition that no longer
   exists (``cancel_orphaned``); then look up the results runs already made for the
   jobs that are final;
3. **plan** (``plan_tick``, no I/O): from what was read and done, the asset events, the
   run requests, the next cursor and the skip reason.

What the plan does with each partition:

- records an ``AssetObservation`` on ``<name>_batch`` when the status or attempt changed,
  or progress moved by ``progress_step_percent`` or ``progress_step_seconds`` passed since
  the last one (so a 24 h batch writes tens of observations, not thousands);
- records a resubmitted remainder as a new ``<name>_batch`` materialization;
- once every shard is final, requests one ``<name>_collect`` run whose ``run_key`` names
  that materialization and its final status, tagged ``inference_batch/results_for`` with
  ``<name>:<partition>:<storage id>``. A results run that ends without results (failed,
  canceled, or succeeded without materializing) is requested again under
  ``<run_key>:retry1`` and so on, up to ``MAX_RESULTS_RETRIES`` times; then the sensor
  gives up, says so in the skip reason and records it once (``inference_batch/results_gave_up``
  on ``<name>_batch``). A job that failed validation gets one results run, which fails
  with the provider's errors;
- skips a partition that no longer exists (deleted dynamic partition, key dropped from
  the definition), cancelling its batches once, since nobody can collect them;
- builds each partition's part in its own error handling: a partition that cannot be
  refreshed, checked or planned is named in a warning and the skip reason, and the others
  carry on. So does one whose recorded job cannot be used (written by a newer version,
  or broken).

The cursor only remembers what the event log cannot answer cheaply: the progress last
reported, the partitions a tick did not reach (they go first next time), the
materializations whose results run was already requested, given up on, or failed
validation (those cost no runs query), and the orphaned partitions already handled.
Losing it costs a repeated observation, never a duplicate run (Dagster drops a repeated
``run_key``, and the runs already made for a state are found by their
``inference_batch/results_for`` tag) nor a second cancel (a batch already cancelling is
left alone). So a cursor this version cannot read (not JSON, the wrong shape, a newer
``format_version``) is replaced by an empty one, with a warning in the tick's log;
unknown fields are ignored.
"""

import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import dagster as dg
import orjson

from .budget import map_within_budget
from .cancel import CANCELLED_KEY
from .client import InferenceBatchClient
from .event_ledger import EventLogLedger
from .job import (
    FORMAT_VERSION,
    BatchJob,
    StoredStateError,
    read_stored_fields,
    stored_format_version,
)
from .ledger import Ledger
from .metadata import batch_metadata, progress_metadata
from .resource import InferenceBatchResource
from .state import Action, RecordedJob, UnreadableJob, next_action, uncollected_jobs

DEFAULT_BUDGET_SECONDS = 40.0  # the daemon gives a tick 60 s
DEFAULT_PROGRESS_STEP_PERCENT = 5.0  # record progress when it moved this much ...
DEFAULT_PROGRESS_STEP_SECONDS = 600.0  # ... or this long after the last record
MAX_RESULTS_RETRIES = 3  # results runs requested again after one ended without results
LONG_RUN_SECONDS = 3600.0  # a results run running longer is named in the skip reason
RESULTS_FOR_TAG = "inference_batch/results_for"  # <name>:<partition>:<batch storage id>
STATUS_TAG = "inference_batch/status"  # the job's final status, on each results run
GAVE_UP_KEY = "inference_batch/results_gave_up"  # the results runs given up on
PARTITION_GONE_KEY = "inference_batch/partition_missing"  # on the cancel of an orphan
_CANCELLING = ("cancelling", "cancelled")
_NAMES_SHOWN = 5  # partitions named in one clause of the skip reason
_CURSOR_ENTRIES: dict[str, tuple[type, ...]] = {
    "progress": (str,),
    "progress_at": (int, float),
    "requested": (int,),
    "run_keys": (str,),
    "gave_up": (int,),
    "failed": (int,),
    "orphaned": (int,),
    "resume": (str,),
}

# ------------------------------------------------------------------------- the cursor


@dataclass
class SensorCursor:
    """What the sensor remembers between ticks, per slot (the partition key, or ``""``
    for an unpartitioned pipeline); the batch storage ids name the materialization the
    entry is about, so a newer one starts afresh."""

    progress: dict[str, str] = field(default_factory=dict)  # the progress last recorded
    progress_at: dict[str, float] = field(default_factory=dict)  # when (unix seconds)
    requested: dict[str, int] = field(default_factory=dict)  # results run requested
    run_keys: dict[str, str] = field(default_factory=dict)  # ... under this first run key
    gave_up: dict[str, int] = field(default_factory=dict)  # results runs given up on
    failed: dict[str, int] = field(default_factory=dict)  # failed validation, run ended
    orphaned: dict[str, int] = field(default_factory=dict)  # partition gone, handled
    resume: list[str] = field(default_factory=list)  # not reached: first next tick

    @classmethod
    def load(cls, text: str | None) -> "SensorCursor":
        """The cursor as ``dump`` wrote it, in this version or an earlier one: unknown
        fields are ignored, missing ones start empty. Raises ``StoredStateError`` for one
        that is not JSON, has the wrong shape or a newer ``format_version``."""
        if not text:
            return cls()
        what = "the sensor's cursor"
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise StoredStateError(f"{what} is not valid JSON: {exc}") from exc
        stored_format_version(data, what)
        values = read_stored_fields(cls, data, what)
        for name, kinds in _CURSOR_ENTRIES.items():
            entries = values.get(name, ())
            entries = entries.values() if isinstance(entries, dict) else entries
            if not all(isinstance(e, kinds) and not isinstance(e, bool) for e in entries):
                kind = " or ".join(k.__name__ for k in kinds)
                raise StoredStateError(f"{what}: {name!r} holds an entry that is not {kind}")
        return cls(**values)

    def dump(self) -> str:
        return orjson.dumps({"format_version": FORMAT_VERSION, **asdict(self)}).decode()

    def kept(self, live: Collection[str], resume: Sequence[str]) -> "SensorCursor":
        """A copy holding only the slots still in flight, resuming ``resume`` first."""
        copy = SensorCursor(resume=list(resume))
        for name in _CURSOR_ENTRIES:
            if name != "resume":
                kept = {s: v for s, v in getattr(self, name).items() if s in live}
                setattr(copy, name, kept)
        return copy


# --------------------------------------------------------------- what a tick works with


@dataclass(frozen=True)
class SensorSettings:
    """The sensor's own settings (the factory's arguments of the same names)."""

    name: str
    batch_key: dg.AssetKey
    cancel_orphaned: bool = True
    progress_step_percent: float = DEFAULT_PROGRESS_STEP_PERCENT
    progress_step_seconds: float = DEFAULT_PROGRESS_STEP_SECONDS


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


@dataclass(frozen=True)
class ResultsRun:
    """A results run made for one job state, as the plan needs it (unix seconds)."""

    run_id: str
    status: dg.DagsterRunStatus
    created: float
    started: float | None = None
    ended: float | None = None


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
    outcomes: Mapping[str, Refreshed | Abandoned | BaseException] = field(default_factory=dict)
    not_reached: Sequence[str] = ()
    runs: Mapping[str, Sequence[ResultsRun] | BaseException] = field(default_factory=dict)
    provider: Mapping[str, str] = field(default_factory=dict)  # metadata naming the provider
    now: float = 0.0  # unix seconds
    read_at: float = 0.0  # when the event log was read


@dataclass(frozen=True)
class TickPlan:
    """What a tick hands to Dagster, and the lines for its log."""

    asset_events: list[dg.AssetObservation | dg.AssetMaterialization]
    run_requests: list[dg.RunRequest]
    cursor: SensorCursor
    skip_reason: str | None
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)


def _slot(recorded: RecordedJob | UnreadableJob) -> str:
    return recorded.partition or ""


def _where(slot: str) -> str:
    """A slot as messages name it: ``partition 'a'``, or the pipeline's one job."""
    return f"partition {slot!r}" if slot else "the unpartitioned job"


def results_for(name: str, recorded: RecordedJob) -> str:
    """The ``inference_batch/results_for`` tag of the results runs of one job state.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> results_for("llm", RecordedJob(partition="a", storage_id=42, job=job))
        'llm:a:42'
    """
    return f"{name}:{_slot(recorded)}:{recorded.storage_id}"


# ------------------------------------------------------------------------ the work


def plan_work(
    cursor: SensorCursor,
    jobs: Sequence[RecordedJob],
    *,
    gone: Collection[str] = (),
    unchecked: Collection[str] = (),
    cancel_orphaned: bool = True,
) -> TickWork:
    """Which job each slot needs this tick; ``gone`` slots are only abandoned (once),
    ``unchecked`` ones (their partition could not be checked) left for next tick."""
    work = TickWork()
    by_slot = {_slot(r): r for r in jobs}
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
    active = [s for s in by_slot if s not in unchecked and s not in gone]
    active = [s for s in active if s not in work.settled and s not in work.requested]
    work.refresh.extend(s for s in cursor.resume if s in active)
    work.refresh.extend(s for s in active if s not in work.refresh)
    return work


def runs_wanted(
    name: str,
    jobs: Sequence[RecordedJob],
    work: TickWork,
    outcomes: Mapping[str, Refreshed | Abandoned | BaseException],
) -> dict[str, str]:
    """Slot -> ``results_for`` tag of each final job whose results runs the plan needs."""
    by_slot = {_slot(r): r for r in jobs}
    wanted = {slot: results_for(name, by_slot[slot]) for slot in work.requested}
    for slot, outcome in outcomes.items():
        if (
            isinstance(outcome, Refreshed)
            and outcome.resubmitted is None
            and outcome.action == "collect"
        ):
            wanted[slot] = results_for(name, outcome.recorded)
    return wanted


def _advance(
    client: InferenceBatchClient, recorded: RecordedJob, max_attempts: int, ledger: Ledger
) -> Refreshed:
    job = client.refresh(recorded.job)
    action = next_action(job, max_attempts=max_attempts, cancel_requested=recorded.cancel_requested)
    if action != "resubmit":
        return Refreshed(recorded, job, action)
    new_job = client.resubmit(job, ledger=ledger)
    if new_job.attempt == job.attempt:  # nothing was left to resubmit
        return Refreshed(recorded, job, "collect")
    return Refreshed(recorded, job, action, resubmitted=new_job)


def _abandon(client: InferenceBatchClient, recorded: RecordedJob) -> Abandoned:
    """Cancel what still runs of a job nobody can collect; a batch already final or
    cancelling is left alone, so doing this again never cancels twice."""
    job = client.refresh(recorded.job)
    live = {
        s.batch_id
        for s in job.current_shards
        if s.batch_id and not s.is_final and s.status not in _CANCELLING
    }
    if not live:
        return Abandoned(recorded, job)
    job = client.cancel(job)
    cancelled = tuple(
        s.batch_id
        for s in job.current_shards
        if s.batch_id in live and s.batch_id and s.status in _CANCELLING
    )
    return Abandoned(recorded, job, cancelled)


def partitions_gone(
    partitions_def: dg.PartitionsDefinition | None,
    instance: dg.DagsterInstance,
    slots: Collection[str],
) -> tuple[set[str], dict[str, str]]:
    """``(gone, unchecked)``: the slots whose partition no longer exists (a deleted
    dynamic partition, a key dropped from the definition), and those that could not be
    checked, with why."""
    gone: set[str] = set()
    unchecked: dict[str, str] = {}
    if partitions_def is None:
        return gone, unchecked
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        for slot in slots:
            try:
                if not partitions_def.has_partition_key(slot):
                    gone.add(slot)
            except Exception as exc:
                unchecked[slot] = f"{type(exc).__name__}: {exc}"
    return gone, unchecked


def results_runs(instance: dg.DagsterInstance, tag: str) -> list[ResultsRun]:
    """The runs made for one job state (``inference_batch/results_for`` = ``tag``)."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={RESULTS_FOR_TAG: tag}))
    return [
        ResultsRun(
            run_id=r.dagster_run.run_id,
            status=r.dagster_run.status,
            created=r.create_timestamp.timestamp(),
            started=r.start_time,
            ended=r.end_time,
        )
        for r in records
    ]


# ------------------------------------------------------------------------- the plan


def _signature(job: BatchJob) -> str:
    counts = job.request_counts()
    return f"{job.status}|{job.attempt}|{counts['completed']}|{counts['failed']}|{counts['total']}"


def _percent(completed: int, failed: int, total: int) -> float:
    return 100.0 * (completed + failed) / total if total else 0.0


def progress_due(
    last: str | None,
    last_at: float | None,
    job: BatchJob,
    *,
    now: float,
    step_percent: float,
    step_seconds: float,
) -> bool:
    """Whether to record ``job``'s progress, given the progress last recorded (its
    signature, and when): on a new status, attempt or total at once; otherwise when the
    share done moved by ``step_percent`` or ``step_seconds`` passed, and it changed.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> progress_due(None, None, job, now=0, step_percent=5, step_seconds=600)
        True
    """
    signature = _signature(job)
    if last == signature:
        return False
    try:
        status, attempt, completed, failed, total = last.split("|") if last else ()
        before = _percent(int(completed), int(failed), int(total))
    except ValueError:  # nothing recorded yet, or not a signature this code wrote
        return True
    counts = job.request_counts()
    if (status, int(attempt), int(total)) != (job.status, job.attempt, counts["total"]):
        return True
    moved = abs(_percent(counts["completed"], counts["failed"], counts["total"]) - before)
    return moved >= step_percent or now - (last_at or 0.0) >= step_seconds


def _results_run_key(base: str, count: int) -> str:
    """The run key of a state's results run after ``count`` earlier ones.

    Example:
        >>> [_results_run_key("llm::42:completed", n) for n in range(3)]
        ['llm::42:completed', 'llm::42:completed:retry1', 'llm::42:completed:retry2']
    """
    return f"{base}:retry{count}" if count else base


ResultsState = Literal["request", "retry", "waiting", "gave_up", "failed"]
_ENDED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@dataclass(frozen=True)
class _ResultsDecision:
    state: ResultsState
    run_key: str | None = None  # the key to request, for "request" and "retry"
    note: str = ""


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def decide_results(
    runs: Sequence[ResultsRun], base: str, *, job_failed: bool, read_at: float, now: float
) -> _ResultsDecision:
    """Whether a final job needs a results run now: the first; a retry of one that ended
    without results (failed, canceled, or succeeded before the event log was read and
    still no results); none while one is under way; ``gave_up`` after
    ``MAX_RESULTS_RETRIES`` retries; ``failed`` once a failed job's run has reported."""
    if not runs:
        return _ResultsDecision("request", base)
    latest = max(runs, key=lambda run: run.created)
    succeeded_empty = (
        latest.status == dg.DagsterRunStatus.SUCCESS
        and latest.ended is not None
        and latest.ended < read_at
    )
    if latest.status not in _ENDED and not succeeded_empty:
        note = ""
        if latest.status == dg.DagsterRunStatus.STARTED and latest.started is not None:
            running = now - latest.started
            if running > LONG_RUN_SECONDS:
                note = (
                    f"run {latest.run_id} running for {_hours(running)}; if its worker "
                    "died, Dagster's run monitoring ends it"
                )
        return _ResultsDecision("waiting", note=note)
    if job_failed and latest.status != dg.DagsterRunStatus.CANCELED:
        return _ResultsDecision("failed")  # its run reported the provider's errors
    if len(runs) > MAX_RESULTS_RETRIES:
        return _ResultsDecision("gave_up")
    key = _results_run_key(base, len(runs))
    how = "succeeded without materializing" if succeeded_empty else latest.status.value
    return _ResultsDecision(
        "retry",
        key,
        note=f"results run {latest.run_id} ended {how}; requesting it again "
        f"(retry {len(runs)} of {MAX_RESULTS_RETRIES}) as {key}",
    )


SlotState = Literal["in_flight", "collecting", "waiting", "gave_up", "gone", "error"]


@dataclass
class _SlotPlan:
    """One slot's part of a tick: applied only when it was built whole."""

    state: SlotState
    job: BatchJob | None = None  # for "in_flight": the job as last seen
    events: list[dg.AssetObservation | dg.AssetMaterialization] = field(default_factory=list)
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    cursor: dict[str, Any] = field(default_factory=dict)  # cursor entry -> this slot's value
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)
    note: str = ""


class _Planner:
    """Builds a ``TickPlan`` one slot at a time; see ``plan_tick``."""

    def __init__(self, state: TickState, settings: SensorSettings) -> None:
        self.state, self.settings = state, settings
        self.name, self.batch_key = settings.name, settings.batch_key
        self.by_slot = {_slot(r): r for r in state.jobs}

    def progress(self, slot: str, job: BatchJob, plan: _SlotPlan) -> None:
        """Add a progress observation to ``plan`` when one is due."""
        cursor, state, settings = self.state.cursor, self.state, self.settings
        if not progress_due(
            cursor.progress.get(slot),
            cursor.progress_at.get(slot),
            job,
            now=state.now,
            step_percent=settings.progress_step_percent,
            step_seconds=settings.progress_step_seconds,
        ):
            return
        plan.events.append(
            dg.AssetObservation(
                asset_key=self.batch_key,
                partition=self.by_slot[slot].partition,
                metadata=progress_metadata(job),
            )
        )
        plan.cursor.update(progress=_signature(job), progress_at=state.now)

    def refreshed(self, slot: str, outcome: Refreshed) -> _SlotPlan:
        plan = _SlotPlan("in_flight", job=outcome.job)
        self.progress(slot, outcome.job, plan)
        new_job = outcome.resubmitted
        if new_job is not None:
            job = outcome.job
            plan.events.append(
                dg.AssetMaterialization(
                    asset_key=self.batch_key,
                    partition=outcome.recorded.partition,
                    description=f"attempt {new_job.attempt}: resubmitted what {job.status} "
                    f"in attempt {job.attempt}",
                    metadata={**batch_metadata(new_job), **self.state.provider},
                )
            )
            plan.cursor.update(progress=_signature(new_job), progress_at=self.state.now)
            plan.job = new_job
            plan.infos.append(
                f"{self.name}: resubmitted the {job.status} remainder of {_where(slot)} "
                f"as attempt {new_job.attempt}"
            )
        elif outcome.action == "collect":
            recorded = outcome.recorded
            base = f"{self.name}:{slot}:{recorded.storage_id}:{outcome.job.status}"
            self.results(slot, recorded, base, plan)
        return plan

    def requested(self, slot: str) -> _SlotPlan:
        plan = _SlotPlan("waiting")
        self.results(slot, self.by_slot[slot], self.state.cursor.run_keys[slot], plan)
        return plan

    def results(self, slot: str, recorded: RecordedJob, base: str, plan: _SlotPlan) -> None:
        """Request the job's results run, or its retry, unless one is under way."""
        runs = self.state.runs.get(slot)
        if runs is None:
            raise RuntimeError("its results runs were not looked up")
        if isinstance(runs, BaseException):
            raise RuntimeError(f"could not look up its results runs: {runs}") from runs
        status = base.rsplit(":", 1)[1]
        decision = decide_results(
            runs,
            base,
            job_failed=status == "failed",
            read_at=self.state.read_at,
            now=self.state.now,
        )
        plan.cursor.update(requested=recorded.storage_id, run_keys=base)
        plan.state = "waiting"
        if decision.state == "waiting":
            plan.note = decision.note
        if decision.state == "gave_up":
            plan.state = "gave_up"
            plan.cursor["gave_up"] = recorded.storage_id
            plan.events.append(self.gave_up_event(recorded, runs))
            plan.warnings.append(
                f"{self.name}: {_where(slot)}: {len(runs)} results runs ended without "
                f"results ({', '.join(r.run_id for r in runs)}); not requesting another. "
                f"Materialize {self.name}_results to try again."
            )
        elif decision.state == "failed":
            plan.cursor["failed"] = recorded.storage_id
        elif decision.run_key is not None:
            plan.state = "collecting"
            if decision.state == "retry":
                plan.warnings.append(f"{self.name}: {_where(slot)}: {decision.note}")
            plan.run_requests.append(
                dg.RunRequest(
                    run_key=decision.run_key,
                    partition_key=recorded.partition,
                    tags={STATUS_TAG: status, RESULTS_FOR_TAG: results_for(self.name, recorded)},
                )
            )

    def gave_up_event(
        self, recorded: RecordedJob, runs: Sequence[ResultsRun]
    ) -> dg.AssetObservation:
        oldest_first = sorted(runs, key=lambda run: run.created)
        statuses = ", ".join(run.status.value for run in oldest_first)
        return dg.AssetObservation(
            asset_key=self.batch_key,
            partition=recorded.partition,
            description=f"gave up requesting {self.name}_results for materialization "
            f"{recorded.storage_id}: {len(runs)} results runs ended without results "
            f"({statuses}); materialize {self.name}_results to try again",
            metadata={GAVE_UP_KEY: dg.MetadataValue.json([r.run_id for r in oldest_first])},
        )

    def gone(self, slot: str) -> _SlotPlan:
        """A slot whose partition no longer exists: skipped; its batches cancelled once."""
        plan = _SlotPlan("gone")
        recorded = self.by_slot[slot]
        sid = recorded.storage_id
        if self.state.cursor.orphaned.get(slot) == sid:
            return plan  # handled by an earlier tick
        what = (
            f"{self.name}: skipping {_where(slot)}: the partition no longer exists, so "
            f"nobody can collect its batches (materialization {sid})"
        )
        if not self.settings.cancel_orphaned:
            plan.warnings.append(f"{what}; they are left running (cancel_orphaned=False)")
            plan.cursor["orphaned"] = sid
            return plan
        outcome = self.state.outcomes.get(slot)
        if outcome is None:
            return plan  # not reached this tick: first next tick
        if isinstance(outcome, BaseException):
            plan.warnings.append(f"{what}; cancelling them failed, retried next tick: {outcome}")
            return plan
        assert isinstance(outcome, Abandoned)
        plan.cursor["orphaned"] = sid
        if not outcome.cancelled:
            plan.warnings.append(f"{what}; none was still running, nothing cancelled")
            return plan
        plan.warnings.append(f"{what}; cancelled {', '.join(outcome.cancelled)}")
        plan.events.append(
            dg.AssetObservation(
                asset_key=self.batch_key,
                partition=recorded.partition,
                description="the partition no longer exists: cancelled its batches in flight",
                metadata={
                    PARTITION_GONE_KEY: True,
                    CANCELLED_KEY: dg.MetadataValue.json(list(outcome.cancelled)),
                    **self.state.provider,
                },
            )
        )
        return plan

    def slot(self, slot: str) -> _SlotPlan:
        """The plan of one slot, by what the tick read and did with it."""
        state = self.state
        if slot in state.unchecked:
            raise RuntimeError(f"could not check its partition: {state.unchecked[slot]}")
        if slot in state.gone:
            return self.gone(slot)
        if slot in state.work.settled:
            gave_up = state.cursor.gave_up.get(slot) == self.by_slot[slot].storage_id
            return _SlotPlan("gave_up" if gave_up else "waiting")
        if slot in state.work.requested:
            return self.requested(slot)
        outcome = state.outcomes.get(slot)
        if isinstance(outcome, Refreshed):
            return self.refreshed(slot, outcome)
        plan = _SlotPlan("in_flight", job=self.by_slot[slot].job)
        if isinstance(outcome, BaseException):
            plan.state = "error"
            plan.warnings.append(f"{self.name}: could not refresh {_where(slot)}: {outcome}")
        return plan


def plan_tick(state: TickState, settings: SensorSettings) -> TickPlan:
    """Decide a tick from what it read and did; no I/O.

    Each slot is planned on its own: one whose plan cannot be built (an error looking up
    its results runs, building its events, checking its partition) is named in a warning
    and the skip reason and left as it was for the next tick; the others carry on.
    """
    planner = _Planner(state, settings)
    cursor = state.cursor.kept(planner.by_slot, state.not_reached)
    events: list[dg.AssetObservation | dg.AssetMaterialization] = []
    run_requests: list[dg.RunRequest] = []
    warnings = [
        f"{settings.name}: skipping {_where(_slot(broken))}: cannot use the job recorded by "
        f"{settings.batch_key.to_user_string()} (materialization {broken.storage_id}): "
        f"{broken.error}. The other partitions carry on."
        for broken in state.unreadable
    ]
    infos: list[str] = []
    summary = _Summary(unreadable=[_slot(broken) for broken in state.unreadable])
    for slot in planner.by_slot:
        try:
            plan = planner.slot(slot)
        except Exception as exc:
            warnings.append(
                f"{settings.name}: could not handle {_where(slot)} this tick, retried next "
                f"tick: {type(exc).__name__}: {exc}"
            )
            summary.failed.append(slot)
            continue
        events += plan.events
        run_requests += plan.run_requests
        warnings += plan.warnings
        infos += plan.infos
        for entry, value in plan.cursor.items():
            getattr(cursor, entry)[slot] = value
        summary.add(slot, plan, not_reached=slot in state.not_reached)
    return TickPlan(
        asset_events=events,
        run_requests=run_requests,
        cursor=cursor,
        skip_reason=None if run_requests else summary.describe(),
        warnings=warnings,
        infos=infos,
    )


@dataclass
class _Summary:
    """What a tick saw, for the skip reason."""

    in_flight: list[BatchJob] = field(default_factory=list)
    waiting: int = 0
    notes: list[str] = field(default_factory=list)
    not_reached: int = 0
    errors: int = 0
    failed: list[str] = field(default_factory=list)
    gave_up: int = 0
    unreadable: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    def add(self, slot: str, plan: _SlotPlan, *, not_reached: bool) -> None:
        if plan.state in ("in_flight", "error") and plan.job is not None:
            self.in_flight.append(plan.job)
            self.not_reached += not_reached
        self.errors += plan.state == "error"
        self.waiting += plan.state == "waiting"
        self.gave_up += plan.state == "gave_up"
        if plan.state == "gone":
            self.gone.append(slot)
        if plan.note:
            self.notes.append(f"{_where(slot)}: {plan.note}")

    def describe(self) -> str:
        """The skip reason.

        Example:
            >>> _Summary(waiting=1).describe()
            '1 waiting for a requested results run'
            >>> _Summary(unreadable=["a"]).describe()
            "1 skipped, its recorded job cannot be used: partition 'a' (see the tick's logs)"
        """
        parts = []
        if self.in_flight:
            jobs = self.in_flight
            statuses = Counter(job.status for job in jobs)
            counts = [job.request_counts() for job in jobs]
            done = sum(c["completed"] + c["failed"] for c in counts)
            # while validating the provider counts no requests yet: the job knows how many
            total = sum(max(c["total"], j.request_count) for c, j in zip(counts, jobs, strict=True))
            by_status = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
            parts.append(f"{len(jobs)} in flight ({by_status}; {done}/{total} requests done)")
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
                f"{len(self.failed)} could not be handled this tick: {_names(self.failed)} "
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
                f"{_names(self.unreadable)} (see the tick's logs)"
            )
        if self.gone:
            its = "its partition no longer exists" if len(self.gone) == 1 else "partitions gone"
            parts.append(f"{len(self.gone)} skipped, {its}: {_names(self.gone)}")
        return "; ".join(parts) or "no batches in flight"


def _names(slots: Sequence[str]) -> str:
    """Slots as messages name them, the first few.

    Example:
        >>> _names(["a", "b"])
        "partition 'a', partition 'b'"
    """
    shown = ", ".join(_where(slot) for slot in slots[:_NAMES_SHOWN])
    more = len(slots) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# ----------------------------------------------------------------------- the sensor


def _load_cursor(context: dg.SensorEvaluationContext, name: str) -> SensorCursor:
    try:
        return SensorCursor.load(context.cursor)
    except StoredStateError as exc:
        context.log.warning(
            f"{name}: the sensor's cursor was reset to an empty one: {exc}. Nothing is "
            "lost: the event log is the source of truth (at most a progress observation "
            "is repeated; runs already requested are found by their tags)."
        )
        return SensorCursor()


def _look_up_runs(
    instance: dg.DagsterInstance, wanted: Mapping[str, str]
) -> dict[str, list[ResultsRun] | BaseException]:
    """The results runs of each slot in ``wanted``; a failed lookup fails only its slot."""
    runs: dict[str, list[ResultsRun] | BaseException] = {}
    for slot, tag in wanted.items():
        try:
            runs[slot] = results_runs(instance, tag)
        except Exception as exc:
            runs[slot] = exc
    return runs


def build_sensor(
    name: str,
    *,
    input_file_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    results_key: dg.AssetKey,
    collect_job_name: str,
    resource_key: str,
    partitions_def: dg.PartitionsDefinition | None,
    max_attempts: int,
    interval_seconds: int,
    budget_seconds: float,
    cancel_orphaned: bool = True,
    progress_step_percent: float = DEFAULT_PROGRESS_STEP_PERCENT,
    progress_step_seconds: float = DEFAULT_PROGRESS_STEP_SECONDS,
) -> dg.SensorDefinition:
    """The polling sensor of one pipeline (running by default)."""
    if progress_step_percent < 0 or progress_step_seconds < 0:
        raise ValueError("progress_step_percent and progress_step_seconds must be >= 0")
    settings = SensorSettings(
        name=name,
        batch_key=batch_key,
        cancel_orphaned=cancel_orphaned,
        progress_step_percent=progress_step_percent,
        progress_step_seconds=progress_step_seconds,
    )

    def carry_out(
        resource: InferenceBatchResource,
        instance: dg.DagsterInstance,
        jobs: Sequence[RecordedJob],
        work: TickWork,
    ) -> tuple[dict[str, Refreshed | Abandoned | BaseException], list[str]]:
        """Abandon, then refresh (and resubmit), the jobs of ``work`` within the budget;
        ``(outcomes, slots not reached)``."""
        by_slot = {_slot(r): r for r in jobs}
        items = [("abandon", s) for s in work.abandon] + [("refresh", s) for s in work.refresh]
        if not items:
            return {}, []
        client = resource.get_client()

        def one(item: tuple[str, str]) -> Refreshed | Abandoned:
            kind, slot = item
            recorded = by_slot[slot]
            if kind == "abandon":
                return _abandon(client, recorded)
            ledger = EventLogLedger(
                instance,
                partition=recorded.partition,
                input_file_key=input_file_key,
                batch_key=batch_key,
            )
            return _advance(client, recorded, max_attempts, ledger)

        try:
            done, not_reached = map_within_budget(
                one,
                items,
                budget_seconds=budget_seconds,
                then=client.close,  # once the last refresh started has returned
            )
        except BaseException:
            client.close()
            raise
        return {slot: outcome for (_, slot), outcome in done}, [s for _, s in not_reached]

    @dg.sensor(
        name=f"{name}_sensor",
        job_name=collect_job_name,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={resource_key},
        description=f"Watches {batch_key.to_user_string()}, resubmits expired requests and "
        f"requests {results_key.to_user_string()} when the batches are done.",
    )
    def watch(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = _load_cursor(context, name)
        read_at = time.time()
        jobs, unreadable = uncollected_jobs(
            context.instance, batch_key, results_key, partitioned=partitions_def is not None
        )
        gone, unchecked = partitions_gone(
            partitions_def, context.instance, [_slot(r) for r in jobs]
        )
        work = plan_work(
            cursor, jobs, gone=gone, unchecked=unchecked, cancel_orphaned=cancel_orphaned
        )
        resource: InferenceBatchResource = getattr(context.resources, resource_key)
        outcomes, not_reached = carry_out(resource, context.instance, jobs, work)
        runs = _look_up_runs(context.instance, runs_wanted(name, jobs, work, outcomes))
        plan = plan_tick(
            TickState(
                cursor=cursor,
                jobs=jobs,
                work=work,
                unreadable=unreadable,
                gone=gone,
                unchecked=unchecked,
                outcomes=outcomes,
                not_reached=not_reached,
                runs=runs,
                provider=resource.provider_metadata(),
                now=time.time(),
                read_at=read_at,
            ),
            settings,
        )
        for message in plan.warnings:
            context.log.warning(message)
        for message in plan.infos:
            context.log.info(message)
        return dg.SensorResult(
            run_requests=plan.run_requests,
            asset_events=plan.asset_events,
            cursor=plan.cursor.dump(),
            skip_reason=plan.skip_reason,
        )

    return watch
