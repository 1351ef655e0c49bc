"""The ``<name>_sensor``: watch in-flight batches, resubmit leftovers, request results.

Each tick reads the jobs not yet collected from the event log (the latest
``<name>_batch`` materialization per partition that is newer than the partition's
results), refreshes them concurrently within a time budget, and then:

- records an ``AssetObservation`` on ``<name>_batch`` when progress changed;
- resubmits an expired or cancelled remainder while attempts remain, recorded as a new
  ``<name>_batch`` materialization carrying the new job;
- otherwise, once every shard is final, requests one ``<name>_collect`` run whose
  ``run_key`` names that materialization and its final status. If that run fails (a
  provider 5xx after the client's retries, a dropped download), it is requested again
  under ``<run_key>:retry1`` and so on, up to ``MAX_RESULTS_RETRIES`` times; not for a
  job that failed validation, whose one results run fails with the provider's errors.

The cursor only remembers what the event log cannot answer cheaply: the progress last
reported, the partitions a tick did not reach (they go first next time) and the
materializations whose results run was already requested. Losing it costs a repeated
observation, never a duplicate run (Dagster drops a repeated ``run_key``, and the runs
already made for a state are looked up by their ``dagster/run_key`` tag). So a cursor
this version cannot read (not JSON, the wrong shape, a newer ``format_version``) is
replaced by an empty one, with a warning in the tick's log; unknown fields are ignored.

A partition whose recorded job cannot be used (written by a newer version, or broken)
is skipped with a warning naming it; the other partitions are refreshed and collected
as usual.
"""

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

import dagster as dg
import orjson

from .budget import map_within_budget
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
MAX_RESULTS_RETRIES = 3  # results runs requested again after a failed one, per job state
RUN_KEY_TAG = "dagster/run_key"  # the tag Dagster gives a sensor's run
_CURSOR_ENTRIES = {"progress": str, "requested": int, "run_keys": str, "resume": str}


@dataclass
class _Cursor:
    progress: dict[str, str] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)  # slot -> batch storage id
    run_keys: dict[str, str] = field(default_factory=dict)  # slot -> its first run key
    resume: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, text: str | None) -> "_Cursor":
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
        for name, kind in _CURSOR_ENTRIES.items():
            entries = values.get(name, ())
            entries = entries.values() if isinstance(entries, dict) else entries
            if not all(isinstance(e, kind) and not isinstance(e, bool) for e in entries):
                raise StoredStateError(
                    f"{what}: {name!r} holds an entry that is not {kind.__name__}"
                )
        return cls(**values)

    def dump(self) -> str:
        return orjson.dumps({"format_version": FORMAT_VERSION, **asdict(self)}).decode()


@dataclass(frozen=True)
class _Outcome:
    recorded: RecordedJob
    job: BatchJob
    action: Action
    resubmitted: BatchJob | None = None


def _slot(recorded: RecordedJob | UnreadableJob) -> str:
    return recorded.partition or ""


def _where(slot: str) -> str:
    """A slot as messages name it: ``partition 'a'``, or the pipeline's one job."""
    return f"partition {slot!r}" if slot else "the unpartitioned job"


def _signature(job: BatchJob) -> str:
    counts = job.request_counts()
    return f"{job.status}|{job.attempt}|{counts['completed']}|{counts['failed']}|{counts['total']}"


def _advance(
    client: InferenceBatchClient, recorded: RecordedJob, max_attempts: int, ledger: Ledger
) -> _Outcome:
    job = client.refresh(recorded.job)
    action = next_action(job, max_attempts=max_attempts, cancel_requested=recorded.cancel_requested)
    if action != "resubmit":
        return _Outcome(recorded, job, action)
    new_job = client.resubmit(job, ledger=ledger)
    if new_job.attempt == job.attempt:  # nothing was left to resubmit
        return _Outcome(recorded, job, "collect")
    return _Outcome(recorded, job, action, resubmitted=new_job)


def _record(
    outcome: _Outcome, batch_key: dg.AssetKey, cursor: _Cursor, provider: dict[str, str]
) -> list[dg.AssetObservation | dg.AssetMaterialization]:
    """Events for one refreshed job: progress when it changed, the new attempt if any."""
    slot, partition, job = _slot(outcome.recorded), outcome.recorded.partition, outcome.job
    events: list[dg.AssetObservation | dg.AssetMaterialization] = []
    if cursor.progress.get(slot) != _signature(job):
        events.append(
            dg.AssetObservation(
                asset_key=batch_key, partition=partition, metadata=progress_metadata(job)
            )
        )
        cursor.progress[slot] = _signature(job)
    if outcome.resubmitted is not None:
        new_job = outcome.resubmitted
        events.append(
            dg.AssetMaterialization(
                asset_key=batch_key,
                partition=partition,
                description=f"attempt {new_job.attempt}: resubmitted what {job.status} "
                f"in attempt {job.attempt}",
                metadata={**batch_metadata(new_job), **provider},
            )
        )
        cursor.progress[slot] = _signature(new_job)
    return events


def _results_run_keys(base: str) -> list[str]:
    """The run keys one job state may use: the first, then each retry.

    Example:
        >>> _results_run_keys("llm::42:completed")[1:]
        ['llm::42:completed:retry1', 'llm::42:completed:retry2', 'llm::42:completed:retry3']
    """
    return [base] + [f"{base}:retry{n}" for n in range(1, MAX_RESULTS_RETRIES + 1)]


ResultsState = Literal["request", "retry", "waiting", "gave_up"]


@dataclass(frozen=True)
class _ResultsRun:
    state: ResultsState
    run_key: str | None = None  # the key to request, for "request" and "retry"
    note: str = ""


def _results_run(instance: dg.DagsterInstance, base: str, *, job_failed: bool) -> _ResultsRun:
    """Whether a final job needs a results run now: the first, a retry of a failed one,
    or none (one is queued or running, succeeded, or may not be retried)."""
    keys = _results_run_keys(base)
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: keys}))
    by_key = {run.tags[RUN_KEY_TAG]: run for run in runs}
    tried = [n for n, key in enumerate(keys) if key in by_key]
    if not tried:
        return _ResultsRun("request", base)
    latest = by_key[keys[tried[-1]]]
    if latest.status != dg.DagsterRunStatus.FAILURE or job_failed:
        return _ResultsRun("waiting")
    if tried[-1] >= MAX_RESULTS_RETRIES:
        return _ResultsRun("gave_up")
    retry = tried[-1] + 1
    return _ResultsRun(
        "retry",
        keys[retry],
        note=f"results run {latest.run_id} failed; requesting it again "
        f"(retry {retry} of {MAX_RESULTS_RETRIES}) as {keys[retry]}",
    )


def _describe(
    jobs: list[BatchJob],
    waiting: int,
    not_reached: int,
    errors: int,
    gave_up: int = 0,
    unreadable: tuple[str, ...] = (),
) -> str:
    """What a tick saw, for the skip reason; ``unreadable`` names the partitions skipped
    because their recorded job cannot be used.

    Example:
        >>> _describe([], waiting=1, not_reached=0, errors=0)
        '1 waiting for a requested results run'
        >>> _describe([], waiting=0, not_reached=0, errors=0, unreadable=("a",))
        "1 skipped, its recorded job cannot be used: partition 'a' (see the tick's logs)"
    """
    if not jobs and not waiting and not gave_up and not unreadable:
        return "no batches in flight"
    parts = []
    if jobs:
        statuses = Counter(job.status for job in jobs)
        counts = [job.request_counts() for job in jobs]
        done = sum(c["completed"] + c["failed"] for c in counts)
        # while validating the provider counts no requests yet: the job knows how many
        total = sum(max(c["total"], job.request_count) for c, job in zip(counts, jobs, strict=True))
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        parts.append(f"{len(jobs)} in flight ({by_status}; {done}/{total} requests done)")
    if waiting:
        parts.append(f"{waiting} waiting for a requested results run")
    if not_reached:
        parts.append(f"{not_reached} not reached this tick, first next tick")
    if errors:
        parts.append(f"{errors} could not be refreshed (see the tick's logs), retried next tick")
    if gave_up:
        parts.append(
            f"{gave_up} whose results run failed {MAX_RESULTS_RETRIES + 1} times "
            "(see the runs; materialize the results asset to try again)"
        )
    if unreadable:
        its = "its recorded job" if len(unreadable) == 1 else "their recorded jobs"
        names = ", ".join(_where(slot) for slot in unreadable)
        parts.append(
            f"{len(unreadable)} skipped, {its} cannot be used: {names} (see the tick's logs)"
        )
    return "; ".join(parts)


def build_sensor(
    name: str,
    *,
    input_file_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    results_key: dg.AssetKey,
    collect_job_name: str,
    resource_key: str,
    partitioned: bool,
    max_attempts: int,
    interval_seconds: int,
    budget_seconds: float,
) -> dg.SensorDefinition:
    """The polling sensor of one pipeline (running by default)."""

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
        try:
            cursor = _Cursor.load(context.cursor)
        except StoredStateError as exc:
            context.log.warning(
                f"{name}: the sensor's cursor was reset to an empty one: {exc}. Nothing is "
                "lost: the event log is the source of truth (at most a progress observation "
                "is repeated; runs already requested are found by their run key)."
            )
            cursor = _Cursor()
        jobs, unreadable = uncollected_jobs(
            context.instance, batch_key, results_key, partitioned=partitioned
        )
        for broken in unreadable:
            context.log.warning(
                f"{name}: skipping {_where(_slot(broken))}: cannot use the job recorded by "
                f"{batch_key.to_user_string()} (materialization {broken.storage_id}): "
                f"{broken.error}. The other partitions carry on."
            )
        requested = {
            _slot(r): r
            for r in jobs
            if cursor.requested.get(_slot(r)) == r.storage_id and _slot(r) in cursor.run_keys
        }
        active = {_slot(r): r for r in jobs if _slot(r) not in requested}
        order = [s for s in cursor.resume if s in active]
        order += [s for s in active if s not in order]
        resource: InferenceBatchResource = getattr(context.resources, resource_key)

        def ledger_for(partition: str | None) -> EventLogLedger:
            return EventLogLedger(
                context.instance,
                partition=partition,
                input_file_key=input_file_key,
                batch_key=batch_key,
            )

        client = resource.get_client()
        try:
            done, not_reached = map_within_budget(
                lambda slot: _advance(
                    client, active[slot], max_attempts, ledger_for(active[slot].partition)
                ),
                order,
                budget_seconds=budget_seconds,
                then=client.close,  # once the last refresh started has returned
            )
        except BaseException:
            client.close()
            raise

        events: list[dg.AssetObservation | dg.AssetMaterialization] = []
        run_requests: list[dg.RunRequest] = []
        live = {_slot(r) for r in jobs}
        next_cursor = _Cursor(
            progress={s: p for s, p in cursor.progress.items() if s in live},
            requested={s: i for s, i in cursor.requested.items() if s in live},
            run_keys={s: k for s, k in cursor.run_keys.items() if s in live},
            resume=not_reached,
        )
        tally: Counter[str] = Counter()
        collecting: set[str] = set()

        def results_run(recorded: RecordedJob, base: str) -> None:
            """Request the job's results run, or its retry, unless one is under way."""
            slot, status = _slot(recorded), base.rsplit(":", 1)[1]
            collecting.add(slot)
            next_cursor.requested[slot] = recorded.storage_id
            next_cursor.run_keys[slot] = base
            run = _results_run(context.instance, base, job_failed=status == "failed")
            tally[run.state] += 1
            if run.run_key is None:  # under way, done, or no retry left (the skip says so)
                return
            if run.state == "retry":
                context.log.warning(f"{name}: partition {slot!r}: {run.note}")
            run_requests.append(
                dg.RunRequest(
                    run_key=run.run_key,
                    partition_key=recorded.partition,
                    tags={"inference_batch/status": status},
                )
            )

        for slot, recorded in requested.items():
            results_run(recorded, next_cursor.run_keys[slot])
        for slot, outcome in done:
            if isinstance(outcome, BaseException):
                context.log.warning(f"{name}: could not refresh partition {slot!r}: {outcome}")
                tally["errors"] += 1
                continue
            events += _record(outcome, batch_key, next_cursor, resource.provider_metadata())
            if outcome.resubmitted is not None:
                context.log.info(
                    f"{name}: resubmitted the {outcome.job.status} remainder of partition "
                    f"{slot!r} as attempt {outcome.resubmitted.attempt}"
                )
            elif outcome.action == "collect":
                recorded = outcome.recorded
                results_run(recorded, f"{name}:{slot}:{recorded.storage_id}:{outcome.job.status}")
        seen = {slot: r.job for slot, r in active.items()}
        seen.update((slot, o.job) for slot, o in done if isinstance(o, _Outcome))
        seen = {slot: job for slot, job in seen.items() if slot not in collecting}
        skip = None
        if not run_requests:
            skip = _describe(
                list(seen.values()),
                tally["waiting"],
                len(not_reached),
                tally["errors"],
                gave_up=tally["gave_up"],
                unreadable=tuple(_slot(broken) for broken in unreadable),
            )
        return dg.SensorResult(
            run_requests=run_requests,
            asset_events=events,
            cursor=next_cursor.dump(),
            skip_reason=skip,
        )

    return watch
