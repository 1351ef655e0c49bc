"""``plan_tick``: from what a tick read and did to what it hands Dagster. Pure: no I/O.

What the plan does with each slot (partition):

- records an ``AssetObservation`` on ``<name>_batch`` when the status or attempt changed,
  or progress moved by ``progress_step_percent`` or ``progress_step_seconds`` passed since
  the last one (so a 24 h batch writes tens of observations, not thousands), with the
  pace, the ETA and the provider's links;
- reports ``<name>_batch_on_time`` (``on_time_check``) when its verdict changed;
- records a resubmitted remainder as a new ``<name>_batch`` materialization;
- once every shard is final, requests the ``<name>_collect`` run (see ``results_runs``),
  and records it once when it gives up (``inference_batch/results_gave_up``);
- skips a partition that no longer exists, recording the cancel of its batches once;
- builds each slot's part in its own error handling: a slot that cannot be planned is
  named in a warning and the skip reason, and the others carry on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import dagster as dg

from ..batch_record import BatchJob
from ..metadata import batch_metadata, progress_metadata
from ..metadata_set import InferenceBatchMetadataSet
from ..on_time_check import judge, on_time_evaluation
from ..state import RecordedJob
from .results_runs import RESULTS_FOR_TAG, STATUS_TAG, ResultsRun, decide_results, results_for
from .summary import TickSummary
from .tick import (
    Abandoned,
    Refreshed,
    SensorSettings,
    SlotPlan,
    TickPlan,
    TickState,
    slot_of,
    where,
)

PROVIDER_KEY = InferenceBatchMetadataSet.key("provider")


def _signature(job: BatchJob) -> str:
    counts = job.request_counts()
    return f"{job.status}|{job.attempt}|{counts['completed']}|{counts['failed']}|{counts['total']}"


def _left(job: BatchJob) -> str:
    """What a resubmission took from ``job``: its expired or cancelled remainder, or (a
    completed job) the answers that did not validate."""
    return "was unanswered or did not validate" if job.status == "completed" else job.status


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
    """Whether to record ``job``'s progress, given the progress last recorded.

    On a new status, attempt or total at once; otherwise when the share done moved by
    ``step_percent`` or ``step_seconds`` passed, and it changed.

    Args:
        last: The signature of the progress last recorded, if any.
        last_at: When it was recorded (unix seconds).
        job: The job as refreshed now.
        now: The tick's time (unix seconds).
        step_percent: Share done that is worth a new record.
        step_seconds: Time after which any change is worth a new record.

    Returns:
        True when an observation is due.

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


def progress_line(name: str, slot: str, job: BatchJob) -> str:
    """The tick's log line for a job whose progress changed: where, which batches, how far.

    Example:
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k",
        ...     request_count=60)
        >>> progress_line("llm", "2026-11-01", job)
        "llm: partition '2026-11-01': batches (none yet) uploaded, 0/60 requests done (attempt 1)"
    """
    counts = job.request_counts()
    done = counts["completed"] + counts["failed"]
    total = max(counts["total"], job.request_count)
    ids = ", ".join(s.batch_id for s in job.current_shards if s.batch_id) or "(none yet)"
    return (
        f"{name}: {where(slot)}: batches {ids} {job.status}, {done}/{total} requests done "
        f"(attempt {job.attempt})"
    )


class _Planner:
    """Builds a ``TickPlan`` one slot at a time; see ``plan_tick``."""

    def __init__(self, state: TickState, settings: SensorSettings) -> None:
        self.state, self.settings = state, settings
        self.name, self.batch_key = settings.name, settings.batch_key
        self.by_slot = {slot_of(r): r for r in state.jobs}
        # sets: a slot is looked up in each once per slot
        self.settled_slots = set(state.work.settled)
        self.requested_slots = set(state.work.requested)
        self.not_reached = set(state.not_reached)

    def progress(self, slot: str, job: BatchJob, plan: SlotPlan) -> None:
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
                metadata=progress_metadata(job, now=state.now, dashboard_url=state.dashboard_url),
            )
        )
        plan.cursor.update(progress=_signature(job), progress_at=state.now)
        plan.infos.append(progress_line(self.name, slot, job))

    def on_time(self, slot: str, job: BatchJob, plan: SlotPlan) -> None:
        """Report ``<name>_batch_on_time`` when its verdict on the job changed."""
        options = self.settings.on_time
        if options is None:
            return
        recorded = self.by_slot[slot]
        verdict = judge(job, self.state.now, options)
        reported = f"{recorded.storage_id}:{verdict.verdict}"
        if self.state.cursor.on_time.get(slot) == reported:
            return
        plan.events.append(
            on_time_evaluation(verdict, self.name, self.batch_key, recorded.partition)
        )
        plan.cursor["on_time"] = reported
        if not verdict.passed:
            plan.warnings.append(f"{self.name}: {where(slot)}: {verdict.description}")

    def refreshed(self, slot: str, outcome: Refreshed) -> SlotPlan:
        """A slot refreshed this tick: progress, a resubmission, or its results run."""
        plan = SlotPlan("in_flight", job=outcome.job)
        self.progress(slot, outcome.job, plan)
        self.on_time(slot, outcome.job, plan)
        new_job = outcome.resubmitted
        if new_job is not None:
            job = outcome.job
            plan.events.append(
                dg.AssetMaterialization(
                    asset_key=self.batch_key,
                    partition=outcome.recorded.partition,
                    description=f"attempt {new_job.attempt}: resubmitted what {_left(job)} "
                    f"in attempt {job.attempt}",
                    metadata={
                        **batch_metadata(
                            new_job,
                            self.state.provider.get(PROVIDER_KEY),
                            self.state.dashboard_url,
                        ),
                        **self.state.provider,
                    },
                )
            )
            plan.cursor.update(progress=_signature(new_job), progress_at=self.state.now)
            plan.job = new_job
            plan.infos.append(
                f"{self.name}: resubmitted what {_left(job)} of {where(slot)} "
                f"as attempt {new_job.attempt}"
            )
        elif outcome.action == "collect":
            recorded = outcome.recorded
            base = f"{self.name}:{slot}:{recorded.storage_id}:{outcome.job.status}"
            self.results(slot, recorded, base, plan)
        return plan

    def requested(self, slot: str) -> SlotPlan:
        """A slot whose results run was requested by an earlier tick."""
        plan = SlotPlan("waiting")
        self.results(slot, self.by_slot[slot], self.state.cursor.run_keys[slot], plan)
        return plan

    def results(self, slot: str, recorded: RecordedJob, base: str, plan: SlotPlan) -> None:
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
        elsewhere = self.state.elsewhere.get(slot)
        if decision.run_key is not None and elsewhere is not None:
            plan.note = f"run {elsewhere} materializes {self.name}_results for it"
            return
        if decision.state == "gave_up":
            plan.state = "gave_up"
            plan.cursor["gave_up"] = recorded.storage_id
            plan.events.append(self.gave_up_event(recorded, runs))
            plan.warnings.append(
                f"{self.name}: {where(slot)}: {len(runs)} results runs ended without "
                f"results ({', '.join(r.run_id for r in runs)}); not requesting another. "
                f"Materialize {self.name}_results to try again."
            )
        elif decision.state == "failed":
            plan.cursor["failed"] = recorded.storage_id
        elif decision.run_key is not None:
            plan.state = "collecting"
            if decision.state == "retry":
                plan.warnings.append(f"{self.name}: {where(slot)}: {decision.note}")
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
        """The observation recording that the sensor gave up on a job's results runs."""
        oldest_first = sorted(runs, key=lambda run: run.created)
        statuses = ", ".join(run.status.value for run in oldest_first)
        return dg.AssetObservation(
            asset_key=self.batch_key,
            partition=recorded.partition,
            description=f"gave up requesting {self.name}_results for materialization "
            f"{recorded.storage_id}: {len(runs)} results runs ended without results "
            f"({statuses}); materialize {self.name}_results to try again",
            metadata=InferenceBatchMetadataSet(
                results_gave_up=[r.run_id for r in oldest_first]
            ).to_metadata(),
        )

    def gone(self, slot: str) -> SlotPlan:
        """A slot whose partition no longer exists: skipped; its batches cancelled once."""
        plan = SlotPlan("gone")
        recorded = self.by_slot[slot]
        sid = recorded.storage_id
        if self.state.cursor.orphaned.get(slot) == sid:
            return plan  # handled by an earlier tick
        what = (
            f"{self.name}: skipping {where(slot)}: the partition no longer exists, so "
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
        cancelled = list(outcome.cancelled)
        plan.warnings.append(f"{what}; cancelled {', '.join(cancelled)}")
        plan.events.append(
            dg.AssetObservation(
                asset_key=self.batch_key,
                partition=recorded.partition,
                description="the partition no longer exists: cancelled its batches in flight",
                metadata={
                    **InferenceBatchMetadataSet(
                        partition_missing=True, cancelled_batch_ids=cancelled
                    ).to_metadata(),
                    **self.state.provider,
                },
            )
        )
        return plan

    def slot(self, slot: str) -> SlotPlan:
        """The plan of one slot, by what the tick read and did with it."""
        state = self.state
        if slot in state.unchecked:
            raise RuntimeError(f"could not check its partition: {state.unchecked[slot]}")
        if slot in state.gone:
            return self.gone(slot)
        if slot in self.settled_slots:
            gave_up = state.cursor.gave_up.get(slot) == self.by_slot[slot].storage_id
            return SlotPlan("gave_up" if gave_up else "waiting")
        if slot in self.requested_slots:
            return self.requested(slot)
        outcome = state.outcomes.get(slot)
        if isinstance(outcome, Refreshed):
            return self.refreshed(slot, outcome)
        plan = SlotPlan("in_flight", job=self.by_slot[slot].job)
        if isinstance(outcome, BaseException):
            plan.state = "error"
            plan.warnings.append(f"{self.name}: could not refresh {where(slot)}: {outcome}")
        return plan


def plan_tick(state: TickState, settings: SensorSettings) -> TickPlan:
    """Decide a tick from what it read and did; no I/O.

    Each slot is planned on its own: one whose plan cannot be built (an error looking up
    its results runs, building its events, checking its partition) is named in a warning
    and the skip reason and left as it was for the next tick; the others carry on.

    Args:
        state: What the tick read from the event log and did with the provider.
        settings: The sensor's settings.

    Returns:
        The asset events, run requests, next cursor, skip reason and log lines.

    Example:
        >>> from dagster_inference_batch.sensor import SensorCursor, TickWork
        >>> settings = SensorSettings(name="llm", batch_key=dg.AssetKey("llm_batch"))
        >>> plan_tick(TickState(cursor=SensorCursor(), jobs=[], work=TickWork()), settings)
        ... # doctest: +ELLIPSIS
        TickPlan(asset_events=[], run_requests=[], cursor=..., skip_reason='no batches in flight', ...)
    """
    planner = _Planner(state, settings)
    cursor = state.cursor.kept(planner.by_slot, state.not_reached)
    plan = TickPlan(asset_events=[], run_requests=[], cursor=cursor, skip_reason=None)
    plan.warnings.extend(
        f"{settings.name}: skipping {where(slot_of(broken))}: cannot use the job recorded by "
        f"{settings.batch_key.to_user_string()} (materialization {broken.storage_id}): "
        f"{broken.error}. The other partitions carry on."
        for broken in state.unreadable
    )
    summary = TickSummary(unreadable=[slot_of(broken) for broken in state.unreadable])
    for slot in planner.by_slot:
        try:
            slot_plan = planner.slot(slot)
        except Exception as exc:
            plan.warnings.append(
                f"{settings.name}: could not handle {where(slot)} this tick, retried next "
                f"tick: {type(exc).__name__}: {exc}"
            )
            summary.failed.append(slot)
            continue
        plan.asset_events.extend(slot_plan.events)
        plan.run_requests.extend(slot_plan.run_requests)
        plan.warnings.extend(slot_plan.warnings)
        plan.infos.extend(slot_plan.infos)
        for entry, value in slot_plan.cursor.items():
            getattr(cursor, entry)[slot] = value
        summary.add(slot, slot_plan, not_reached=slot in planner.not_reached)
    skip_reason = None if plan.run_requests else summary.describe()
    return dataclasses.replace(plan, skip_reason=skip_reason)
