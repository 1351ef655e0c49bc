"""Runs the sensor did not request that materialize ``<name>_results``: a backfill, a
"Materialize all", a collect launched by hand.

While such a run is queued or running for a partition, it collects that partition's
job itself, so the sensor requests no ``<name>_collect`` for it (one results
materialization per job). A run that succeeded after the tick read the event log counts
too: its results are not in what the tick read.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Iterable
from functools import partial

import dagster as dg

from .results_runs import RESULTS_FOR_TAG

PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
UNDER_WAY = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def materializes(
    run: dg.DagsterRun,
    results_key: dg.AssetKey,
    collect_job_name: str,
    planned: Callable[[str], Collection[dg.AssetKey]] = lambda run_id: (),
) -> bool:
    """Whether ``run`` materializes ``results_key`` and was not requested by the sensor.

    Args:
        run: A run.
        results_key: The pipeline's ``<name>_results`` key.
        collect_job_name: Its ``<name>_collect`` job (a run of it materializes the
            results).
        planned: The assets a run planned to materialize, by run id: asked only for a
            run that names no asset selection (a whole asset job, an in-process run).

    Returns:
        True for a run that collects the pipeline's results on its own.

    Example:
        >>> run = dg.DagsterRun(job_name="llm_collect", run_id="r1")
        >>> materializes(run, dg.AssetKey("llm_results"), "llm_collect")
        True
    """
    if RESULTS_FOR_TAG in run.tags:
        return False  # the sensor's own: found by its tag
    if run.job_name == collect_job_name:
        return True
    if run.asset_selection:
        return results_key in run.asset_selection
    return results_key in planned(run.run_id)


def planned_assets(instance: dg.DagsterInstance, run_id: str) -> set[dg.AssetKey]:
    """The assets a run planned to materialize, from its planned-materialization events.

    Example:
        >>> planned_assets(dg.DagsterInstance.ephemeral(), "no-such-run")
        set()
    """
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ).records
    return {
        r.event_log_entry.dagster_event.asset_key
        for r in records
        if r.event_log_entry.dagster_event is not None
        and r.event_log_entry.dagster_event.asset_key is not None
    }


def slots_of(runs: Iterable[dg.DagsterRun], slots: Collection[str]) -> dict[str, str]:
    """Which of ``slots`` each run covers: its partition, every slot for a partition
    range (not resolved here: it waits for the range's run), ``""`` when unpartitioned.

    Args:
        runs: Runs that materialize the results.
        slots: The slots the tick is about to collect.

    Returns:
        Slot -> the id of a run covering it.

    Example:
        >>> run = dg.DagsterRun(job_name="j", run_id="r1", tags={"dagster/partition": "a"})
        >>> slots_of([run], ["a", "b"])
        {'a': 'r1'}
    """
    covered: dict[str, str] = {}
    for run in runs:
        if any(tag in run.tags for tag in RANGE_TAGS):
            covered.update({slot: run.run_id for slot in slots if slot not in covered})
            continue
        slot = run.tags.get(PARTITION_TAG, "")
        if slot in slots:
            covered.setdefault(slot, run.run_id)
    return covered


def results_runs_elsewhere(
    instance: dg.DagsterInstance,
    results_key: dg.AssetKey,
    collect_job_name: str,
    slots: Collection[str],
    read_at: float,
) -> dict[str, str]:
    """The runs not requested by the sensor that collect some of ``slots``.

    Args:
        instance: The Dagster instance.
        results_key: The pipeline's ``<name>_results`` key.
        collect_job_name: Its ``<name>_collect`` job.
        slots: The slots whose jobs are final.
        read_at: When the tick read the event log (unix seconds).

    Returns:
        Slot -> the id of a queued or running run materializing its results, or of one
        that succeeded since ``read_at``.
    """
    if not slots:
        return {}
    since = datetime.datetime.fromtimestamp(read_at, tz=datetime.timezone.utc)
    filters = [
        dg.RunsFilter(statuses=UNDER_WAY),
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS], updated_after=since),
    ]
    runs = [
        record.dagster_run
        for runs_filter in filters
        for record in instance.get_run_records(filters=runs_filter)
    ]
    return slots_of(
        [
            r
            for r in runs
            if materializes(r, results_key, collect_job_name, partial(planned_assets, instance))
        ],
        slots,
    )
