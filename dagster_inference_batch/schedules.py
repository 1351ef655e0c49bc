"""``<name>_schedule``: submit the pipeline on a cron schedule, partition-aware.

What a tick requests of ``<name>_submit`` depends on the partitions:

- none: one run;
- time windows (daily, hourly, ...): the partition that just closed at the tick's
  scheduled time, as ``build_schedule_from_partitioned_job`` does;
- static or dynamic: every partition (or every one of ``partition_keys``) with no
  ``<name>_batch`` materialization and no submit run queued or in progress; for dynamic
  partitions the user's code adds the keys and a tick submits the new ones.

Schedules are stopped by default (``default_status``), as Dagster users expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from .dagster_compat import latest_storage_id_by_partition

if TYPE_CHECKING:
    from .spec import InferenceBatchSpec

PARTITION_TAG = "dagster/partition"
_UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
_STATUSES = {
    "stopped": dg.DefaultScheduleStatus.STOPPED,
    "running": dg.DefaultScheduleStatus.RUNNING,
}


@dataclass(frozen=True)
class ScheduleOptions:
    """When ``<name>_submit`` runs, and for which partitions.

    Args:
        cron: The cron string of the ticks (``"0 6 * * *"``: daily at 06:00).
        timezone: The timezone the cron string is read in (default UTC).
        default_status: ``"stopped"`` (default: turned on in the UI) or ``"running"``.
        partition_keys: Static or dynamic partitions only: the partitions a tick may
            submit (default: all of them).

    Raises:
        ValueError: An empty or invalid cron string, an unknown status.

    Example:
        >>> ScheduleOptions("0 6 * * *").default_status
        'stopped'
        >>> ScheduleOptions("every day")
        Traceback (most recent call last):
        ...
        ValueError: schedule: 'every day' is not a valid cron string
    """

    cron: str
    timezone: str | None = None
    default_status: str = "stopped"
    partition_keys: Sequence[str] | None = None

    def __post_init__(self) -> None:
        try:  # Dagster's own check of a schedule's cron string
            dg.ScheduleDefinition(
                name="cron_check", cron_schedule=self.cron, job=dg.define_asset_job("cron_check")
            )
        except dg.DagsterInvalidDefinitionError:
            raise ValueError(f"schedule: {self.cron!r} is not a valid cron string") from None
        if self.default_status not in _STATUSES:
            raise ValueError(
                f"schedule: default_status must be one of {sorted(_STATUSES)}, "
                f"got {self.default_status!r}"
            )

    def longest_gap(self, now: datetime | None = None) -> timedelta:
        """The longest time between two ticks: over the last hour for a schedule that
        ticks every few minutes, else over the last week (or five, for rarer ones).

        Args:
            now: The end of the time looked at (default: now).

        Returns:
            The gap (a day for ``"0 6 * * *"``).

        Example:
            >>> ScheduleOptions("0 6 * * 1-5").longest_gap(datetime(2026, 1, 1))
            datetime.timedelta(days=3)
            >>> ScheduleOptions("*/5 * * * *").longest_gap(datetime(2026, 1, 1))
            datetime.timedelta(seconds=300)
        """
        end = now or datetime.now()
        for span, enough in (
            (timedelta(hours=1), 6),
            (timedelta(days=8), 2),
            (timedelta(days=35), 2),
        ):
            starts = self._tick_times(end - span, end)
            if len(starts) >= enough:
                return max(b - a for a, b in zip(starts[:-1], starts[1:], strict=True))
        return timedelta(days=35)  # ticks rarer than that: at least this long

    def _tick_times(self, start: datetime, end: datetime) -> list[datetime]:
        # the partition windows of the cron string are its ticks, through public API only
        fmt = "%Y-%m-%dT%H:%M"
        ticks = dg.TimeWindowPartitionsDefinition(
            cron_schedule=self.cron, start=start, end=end, fmt=fmt, timezone=self.timezone or "UTC"
        )
        return [datetime.strptime(key, fmt) for key in ticks.get_partition_keys()]


ScheduleLike = str | ScheduleOptions


def schedule_options(schedule: ScheduleLike | None) -> ScheduleOptions | None:
    """The factory's ``schedule`` argument as ``ScheduleOptions``.

    Example:
        >>> schedule_options("0 6 * * *").cron
        '0 6 * * *'
        >>> schedule_options(None) is None
        True
    """
    if schedule is None or isinstance(schedule, ScheduleOptions):
        return schedule
    return ScheduleOptions(cron=schedule)


def _unfinished_partitions(instance: dg.DagsterInstance, job_name: str) -> set[str]:
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=_UNFINISHED))
    return {
        r.dagster_run.tags[PARTITION_TAG] for r in records if PARTITION_TAG in r.dagster_run.tags
    }


def submit_requests(
    spec: InferenceBatchSpec,
    options: ScheduleOptions,
    instance: dg.DagsterInstance,
    scheduled_time: datetime,
) -> list[dg.RunRequest] | dg.SkipReason:
    """The ``<name>_submit`` runs one tick requests (see the module's docstring).

    Args:
        spec: The pipeline.
        options: Its schedule.
        instance: The Dagster instance (materializations, runs, dynamic partitions).
        scheduled_time: The tick's scheduled time.

    Returns:
        The run requests, or why there are none.
    """
    partitions = spec.partitions_def
    if partitions is None:
        return [dg.RunRequest()]
    if isinstance(partitions, dg.TimeWindowPartitionsDefinition):
        closed = partitions.get_partition_keys(current_time=scheduled_time)
        if not closed:
            return dg.SkipReason(f"no partition of {spec.name} has closed by {scheduled_time}")
        return [dg.RunRequest(run_key=closed[-1], partition_key=closed[-1])]
    keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
    if options.partition_keys is not None:
        chosen = set(options.partition_keys)
        keys = [k for k in keys if k in chosen]
    submitted = set(latest_storage_id_by_partition(instance, spec.batch_key))
    submitted |= _unfinished_partitions(instance, spec.submit_job_name)
    new = [k for k in keys if k not in submitted]
    if not new:
        return dg.SkipReason(f"every partition of {spec.name} was submitted already")
    return [dg.RunRequest(run_key=k, partition_key=k) for k in new]


def build_submit_schedule(
    spec: InferenceBatchSpec, options: ScheduleOptions, submit_job: object
) -> dg.ScheduleDefinition:
    """``<name>_schedule``, requesting ``<name>_submit`` runs on ``options.cron``.

    Args:
        spec: The pipeline.
        options: When, in which timezone, for which partitions, stopped or running.
        submit_job: ``<name>_submit``.

    Returns:
        The schedule.

    Raises:
        ValueError: ``partition_keys`` with time-window partitions or none, or naming
            a static partition that does not exist.
    """
    partitions = spec.partitions_def
    if options.partition_keys is not None:
        if partitions is None or isinstance(partitions, dg.TimeWindowPartitionsDefinition):
            raise ValueError(
                "schedule: partition_keys is for static or dynamic partitions; time-window "
                "partitions submit the one that just closed"
            )
        if isinstance(partitions, dg.StaticPartitionsDefinition):
            unknown = sorted(set(options.partition_keys) - set(partitions.get_partition_keys()))
            if unknown:
                raise ValueError(f"schedule: partition_keys names unknown partitions {unknown}")

    @dg.schedule(
        name=f"{spec.qualified_name}_schedule",
        cron_schedule=options.cron,
        job=submit_job,
        execution_timezone=options.timezone,
        default_status=_STATUSES[options.default_status],
        description=f"Submit {spec.upstream_key.to_user_string()}'s rows on "
        f"'{options.cron}'"
        + (
            " (the partition that just closed, or those not yet submitted)"
            if partitions is not None
            else ""
        ),
    )
    def submit_on_schedule(context: dg.ScheduleEvaluationContext):
        return submit_requests(spec, options, context.instance, context.scheduled_execution_time)

    return submit_on_schedule
