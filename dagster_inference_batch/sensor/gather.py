"""The I/O of a sensor tick: read the event log, do the work, look up the runs.

A tick reads, works, then plans:

1. **read**: the jobs not yet collected, from the event log (the latest ``<name>_batch``
   materialization per partition that is newer than the partition's results), and which
   of their partitions still exist;
2. **work** (``plan_work`` picks it, ``map_within_budget`` runs it): refresh the jobs in
   flight concurrently within a time budget, resubmitting an expired or cancelled
   remainder while attempts remain; cancel the batches of a partition that no longer
   exists (``cancel_orphaned``); then look up the results runs already made for the
   jobs that are final.

``gather_tick`` does both and hands ``plan_tick`` a ``TickState``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import dagster as dg

from ..budget import map_within_budget
from ..client import InferenceBatchClient
from ..ledger import Ledger
from ..spec import InferenceBatchSpec
from ..state import RecordedJob, invalid_retry_allowed, next_action, uncollected_jobs
from ..structured_output import StructuredOutput
from .cursor import SensorCursor
from .results_runs import RESULTS_FOR_TAG, ResultsRun
from .runs_elsewhere import results_runs_elsewhere
from .tick import (
    Abandoned,
    Outcome,
    Refreshed,
    TickState,
    TickWork,
    plan_work,
    runs_wanted,
    slot_of,
)

_CANCELLING = ("cancelling", "cancelled")
RUNS_PER_QUERY = 500  # results_for tags looked up in one runs query
# The tick's work ends at this share of the budget, counted from the tick's start (the
# event log read included); the rest is for the runs lookup and the plan (about a
# millisecond a refreshed partition), so the budget bounds the whole tick.
WORK_SHARE = 0.75


def advance(
    client: InferenceBatchClient,
    recorded: RecordedJob,
    max_attempts: int,
    ledger: Ledger,
    known: Mapping[str, Any] | None = None,
    *,
    retry_invalid: StructuredOutput | None = None,
    retry_prompt_suffix: str | None = None,
) -> Refreshed:
    """Refresh a job, resubmitting its expired or cancelled remainder when that is next.

    With ``retry_invalid``, a job otherwise ready to collect is resubmitted too when
    answers of it do not validate (``invalid_output``) and attempts remain; those rows
    go with any other remainder.

    Args:
        client: The provider's client.
        recorded: The job as recorded.
        max_attempts: The pipeline's limit on attempts.
        ledger: Where the resubmission records its uploads and batches.
        known: Batch objects the tick read from the listing, by id.
        retry_invalid: The ``response_model`` whose invalid answers are retried.
        retry_prompt_suffix: Added to the prompt of a retried invalid answer.

    Returns:
        The refreshed job, its next action and its new attempt, if one was made.
    """
    job = client.refresh(recorded.job, known=known)
    action = next_action(job, max_attempts=max_attempts, cancel_requested=recorded.cancel_requested)
    may_retry = retry_invalid is not None and invalid_retry_allowed(
        job, max_attempts=max_attempts, cancel_requested=recorded.cancel_requested
    )
    if action != "resubmit" and not (action == "collect" and may_retry):
        return Refreshed(recorded, job, action)
    new_job = client.resubmit(
        job,
        ledger=ledger,
        response_model=retry_invalid if may_retry else None,
        retry_prompt_suffix=retry_prompt_suffix,
    )
    if new_job.attempt == job.attempt:  # nothing was left to resubmit
        return Refreshed(recorded, job, "collect")
    return Refreshed(recorded, job, "resubmit", resubmitted=new_job)


def abandon(client: InferenceBatchClient, recorded: RecordedJob) -> Abandoned:
    """Cancel what still runs of a job nobody can collect.

    A batch already final or cancelling is left alone, so doing this again never cancels
    twice.

    Args:
        client: The provider's client.
        recorded: The job of a partition that no longer exists.

    Returns:
        The refreshed job and the batches cancelled now.
    """
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
    """Which slots' partitions no longer exist.

    Args:
        partitions_def: The pipeline's partitions, or None.
        instance: The instance holding dynamic partitions.
        slots: The slots to check.

    Returns:
        ``(gone, unchecked)``: the slots whose partition no longer exists (a deleted
        dynamic partition, a key dropped from the definition), and those that could not
        be checked, with why.
    """
    gone: set[str] = set()
    unchecked: dict[str, str] = {}
    if partitions_def is None:
        return gone, unchecked
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        exists = _membership(partitions_def)
        for slot in slots:
            try:
                if not exists(slot):
                    gone.add(slot)
            except Exception as exc:
                unchecked[slot] = f"{type(exc).__name__}: {exc}"
    return gone, unchecked


def _membership(partitions_def: dg.PartitionsDefinition) -> Callable[[str], bool]:
    """Whether a key exists: from one read of every key for static and dynamic partitions
    (each check would scan the static list, or query the instance for dynamic ones),
    else ``has_partition_key``; a read that fails makes every check raise it."""
    if not isinstance(
        partitions_def, dg.StaticPartitionsDefinition | dg.DynamicPartitionsDefinition
    ):
        return partitions_def.has_partition_key
    try:
        return set(partitions_def.get_partition_keys()).__contains__
    except Exception as exc:
        error = exc

        def unknown(_: str) -> bool:
            raise error

        return unknown


def find_results_runs(
    instance: dg.DagsterInstance, tags: Sequence[str]
) -> list[tuple[str, ResultsRun]]:
    """The runs made for some job states, in one query.

    Args:
        instance: The Dagster instance.
        tags: The ``inference_batch/results_for`` tags of the job states.

    Returns:
        Each run's tag, with its id, status and times.
    """
    records = instance.get_run_records(filters=dg.RunsFilter(tags={RESULTS_FOR_TAG: list(tags)}))
    return [
        (
            r.dagster_run.tags.get(RESULTS_FOR_TAG, ""),
            ResultsRun(
                run_id=r.dagster_run.run_id,
                status=r.dagster_run.status,
                created=r.create_timestamp.timestamp(),
                started=r.start_time,
                ended=r.end_time,
            ),
        )
        for r in records
    ]


def look_up_runs(
    instance: dg.DagsterInstance, wanted: Mapping[str, str]
) -> dict[str, list[ResultsRun] | BaseException]:
    """The results runs of each slot in ``wanted``, ``RUNS_PER_QUERY`` tags a query; a
    failed query fails only its slots."""
    runs: dict[str, list[ResultsRun] | BaseException] = {}
    slots = list(wanted)
    for start in range(0, len(slots), RUNS_PER_QUERY):
        chunk = slots[start : start + RUNS_PER_QUERY]
        try:
            found = find_results_runs(instance, [wanted[slot] for slot in chunk])
        except Exception as exc:
            runs.update(dict.fromkeys(chunk, exc))
            continue
        by_tag: dict[str, list[ResultsRun]] = {}
        for tag, run in found:
            by_tag.setdefault(tag, []).append(run)
        runs.update({slot: by_tag.get(wanted[slot], []) for slot in chunk})
    return runs


def carry_out(
    spec: InferenceBatchSpec,
    client: InferenceBatchClient,
    instance: dg.DagsterInstance,
    jobs: Sequence[RecordedJob],
    work: TickWork,
    started: float,
) -> tuple[dict[str, Outcome], list[str]]:
    """Abandon, then refresh (and resubmit), the jobs of ``work`` within the time budget.

    ``client`` is closed once the last refresh started has returned (at once when there
    is nothing to do).

    Args:
        spec: The pipeline.
        client: The provider's client; this function closes it.
        instance: The Dagster instance (for the resubmissions' ledger).
        jobs: The uncollected jobs.
        work: What the tick does with each slot.
        started: When the tick started (``time.monotonic()``): the budget counts from it.

    Returns:
        ``(outcomes by slot, slots not reached)``.
    """
    by_slot = {slot_of(r): r for r in jobs}
    items = [("abandon", s) for s in work.abandon] + [("refresh", s) for s in work.refresh]
    budget = spec.limits.sensor_budget_seconds * WORK_SHARE

    def one(item: tuple[str, str]) -> Refreshed | Abandoned:
        kind, slot = item
        recorded = by_slot[slot]
        if kind == "abandon":
            return abandon(client, recorded)
        ledger = spec.ledger(instance, recorded.partition)
        limits = spec.limits
        return advance(
            client,
            recorded,
            limits.max_attempts,
            ledger,
            known,
            retry_invalid=spec.requests.structured if limits.retry_invalid_output else None,
            retry_prompt_suffix=limits.retry_prompt_suffix,
        )

    try:
        # many jobs: their batches from the listing, 100 a call, in half the work's time
        known = client.listed_batches(
            [by_slot[s].job for s in work.refresh],
            seconds=max(0.0, budget / 2 - (time.monotonic() - started)),
        )
        done, not_reached = map_within_budget(
            one,
            items,
            budget_seconds=budget - (time.monotonic() - started),
            then=client.close,  # once the last refresh started has returned
        )
    except BaseException:
        client.close()
        raise
    return {slot: outcome for (_, slot), outcome in done}, [s for _, s in not_reached]


def gather_tick(
    context: dg.SensorEvaluationContext, spec: InferenceBatchSpec, cursor: SensorCursor
) -> TickState:
    """Read the event log, do the tick's work and look up the runs its plan needs.

    Args:
        context: The tick's context.
        spec: The pipeline.
        cursor: What earlier ticks remembered.

    Returns:
        Everything ``plan_tick`` needs.
    """
    instance = context.instance
    started, read_at = time.monotonic(), time.time()
    jobs, unreadable = uncollected_jobs(
        instance, spec.batch_key, spec.results_key, partitioned=spec.partitioned
    )
    gone, unchecked = partitions_gone(spec.partitions_def, instance, [slot_of(r) for r in jobs])
    work = plan_work(
        cursor, jobs, gone=gone, unchecked=unchecked, cancel_orphaned=spec.limits.cancel_orphaned
    )
    resource = spec.resource(context)
    outcomes: dict[str, Outcome] = {}
    not_reached: list[str] = []
    if work.abandon or work.refresh:
        outcomes, not_reached = carry_out(
            spec, resource.get_client(), instance, jobs, work, started
        )
    wanted = runs_wanted(spec.qualified_name, jobs, work, outcomes)
    runs = look_up_runs(instance, wanted)
    try:
        elsewhere = results_runs_elsewhere(
            instance, spec.results_key, spec.collect_job_name, wanted, read_at
        )
    except Exception as exc:  # unknown whether a run collects them: each waits a tick
        elsewhere = {}
        runs.update(dict.fromkeys(wanted, exc))
    return TickState(
        cursor=cursor,
        jobs=jobs,
        work=work,
        unreadable=unreadable,
        gone=gone,
        unchecked=unchecked,
        outcomes=outcomes,
        not_reached=not_reached,
        runs=runs,
        elsewhere=elsewhere,
        provider=resource.provider_metadata(),
        dashboard_url=resource.dashboard_url,
        now=time.time(),
        read_at=read_at,
    )
