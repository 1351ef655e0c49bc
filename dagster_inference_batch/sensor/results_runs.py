"""The results runs the sensor requests: their tags, run keys, and when to request one.

Pure: no I/O. Once every shard of a job is final, the sensor requests one
``<name>_collect`` run whose ``run_key`` names the ``<name>_batch`` materialization and
its final status, tagged ``inference_batch/results_for`` with
``<name>:<partition>:<storage id>``. A results run that ends without results (failed,
canceled, or succeeded without materializing) is requested again under
``<run_key>:retry1`` and so on, up to ``MAX_RESULTS_RETRIES`` times; then the sensor
gives up. A job that failed validation gets one results run, which fails with the
provider's errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dagster as dg

from ..state import RecordedJob

# Run tags (not metadata): what the sensor puts on each results run it requests.
RESULTS_FOR_TAG = "inference_batch/results_for"  # <name>:<partition>:<batch storage id>
STATUS_TAG = "inference_batch/status"  # the job's final status
MAX_RESULTS_RETRIES = 3  # results runs requested again after one ended without results
LONG_RUN_SECONDS = 3600.0  # a results run running longer is named in the skip reason

ResultsState = Literal["request", "retry", "waiting", "gave_up", "failed"]
_ENDED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@dataclass(frozen=True)
class ResultsRun:
    """A results run made for one job state, as the plan needs it (unix seconds)."""

    run_id: str
    status: dg.DagsterRunStatus
    created: float
    started: float | None = None
    ended: float | None = None


@dataclass(frozen=True)
class ResultsDecision:
    """What ``decide_results`` decided: ``state``, the ``run_key`` to request (for
    ``request`` and ``retry``), and a note for the skip reason or the log."""

    state: ResultsState
    run_key: str | None = None
    note: str = ""


def results_for(name: str, recorded: RecordedJob) -> str:
    """The ``inference_batch/results_for`` tag of the results runs of one job state.

    Args:
        name: The pipeline's name.
        recorded: The job state, as one ``<name>_batch`` materialization recorded it.

    Returns:
        ``<name>:<partition>:<storage id>`` (an empty partition when unpartitioned).

    Example:
        >>> from dagster_inference_batch.batch_record import BatchJob
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
        >>> results_for("llm", RecordedJob(partition="a", storage_id=42, job=job))
        'llm:a:42'
    """
    return f"{name}:{recorded.partition or ''}:{recorded.storage_id}"


def results_run_key(base: str, count: int) -> str:
    """The run key of a state's results run after ``count`` earlier ones.

    Example:
        >>> [results_run_key("llm::42:completed", n) for n in range(3)]
        ['llm::42:completed', 'llm::42:completed:retry1', 'llm::42:completed:retry2']
    """
    return f"{base}:retry{count}" if count else base


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def _waiting(latest: ResultsRun, now: float) -> ResultsDecision:
    """A run is under way: wait, naming it when it has run for long."""
    if latest.status == dg.DagsterRunStatus.STARTED and latest.started is not None:
        running = now - latest.started
        if running > LONG_RUN_SECONDS:
            return ResultsDecision(
                "waiting",
                note=f"run {latest.run_id} running for {_hours(running)}; if its worker "
                "died, Dagster's run monitoring ends it",
            )
    return ResultsDecision("waiting")


def decide_results(
    runs: Sequence[ResultsRun], base: str, *, job_failed: bool, read_at: float, now: float
) -> ResultsDecision:
    """Whether a final job needs a results run now.

    The first run; a retry of one that ended without results (failed, canceled, or
    succeeded before the event log was read and still no results); none while one is
    under way; ``gave_up`` after ``MAX_RESULTS_RETRIES`` retries; ``failed`` once a
    failed job's run has reported.

    Args:
        runs: The results runs already made for this job state.
        base: The run key of the first results run.
        job_failed: Whether the job failed validation (its run reports the errors).
        read_at: When the tick read the event log (unix seconds).
        now: The tick's time (unix seconds).

    Returns:
        The decision.

    Example:
        >>> decide_results([], "llm::42:completed", job_failed=False, read_at=0, now=0)
        ResultsDecision(state='request', run_key='llm::42:completed', note='')
    """
    if not runs:
        return ResultsDecision("request", base)
    latest = max(runs, key=lambda run: run.created)
    succeeded_empty = (
        latest.status == dg.DagsterRunStatus.SUCCESS
        and latest.ended is not None
        and latest.ended < read_at
    )
    if latest.status not in _ENDED and not succeeded_empty:
        return _waiting(latest, now)
    if job_failed and latest.status != dg.DagsterRunStatus.CANCELED:
        return ResultsDecision("failed")  # its run reported the provider's errors
    if len(runs) > MAX_RESULTS_RETRIES:
        return ResultsDecision("gave_up")
    key = results_run_key(base, len(runs))
    how = "succeeded without materializing" if succeeded_empty else latest.status.value
    return ResultsDecision(
        "retry",
        key,
        note=f"results run {latest.run_id} ended {how}; requesting it again "
        f"(retry {len(runs)} of {MAX_RESULTS_RETRIES}) as {key}",
    )
