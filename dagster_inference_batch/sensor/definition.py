"""``build_sensor``: the ``<name>_sensor`` that gathers, plans, and hands Dagster the plan."""

from __future__ import annotations

import dagster as dg

from ..batch_record import StoredStateError
from ..spec import InferenceBatchSpec
from .cursor import SensorCursor
from .gather import gather_tick
from .plan import plan_tick
from .tick import SensorSettings


def load_cursor(context: dg.SensorEvaluationContext, name: str) -> SensorCursor:
    """The tick's cursor, or an empty one (with a warning) when it cannot be read.

    Args:
        context: The tick's context.
        name: The pipeline's name, for the warning.

    Returns:
        The cursor earlier ticks left.
    """
    try:
        return SensorCursor.load(context.cursor)
    except StoredStateError as exc:
        context.log.warning(
            f"{name}: the sensor's cursor was reset to an empty one: {exc}. Nothing is "
            "lost: the event log is the source of truth (at most a progress observation "
            "is repeated; runs already requested are found by their tags)."
        )
        return SensorCursor()


def sensor_settings(spec: InferenceBatchSpec) -> SensorSettings:
    """The planning settings of ``spec``'s sensor.

    Args:
        spec: The pipeline.

    Returns:
        Its name, batch key, orphan policy, progress steps and on-time thresholds.
    """
    return SensorSettings(
        name=spec.qualified_name,
        batch_key=spec.batch_key,
        cancel_orphaned=spec.limits.cancel_orphaned,
        progress_step_percent=spec.limits.progress_step_percent,
        progress_step_seconds=spec.limits.progress_step_seconds,
        on_time=spec.on_time,
    )


def evaluate_tick(
    context: dg.SensorEvaluationContext, spec: InferenceBatchSpec, settings: SensorSettings
) -> dg.SensorResult:
    """One tick: gather what it needs, plan it, log the plan's lines, return it.

    Args:
        context: The tick's context.
        spec: The pipeline.
        settings: The planning settings of its sensor.

    Returns:
        The run requests, asset events, cursor and skip reason for Dagster.
    """
    state = gather_tick(context, spec, load_cursor(context, spec.qualified_name))
    plan = plan_tick(state, settings)
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


def build_sensor(spec: InferenceBatchSpec) -> dg.SensorDefinition:
    """The polling sensor of one pipeline (running by default).

    Args:
        spec: The pipeline.

    Returns:
        ``<name>_sensor``, targeting ``<name>_collect``.

    Example:
        >>> from dagster_inference_batch.spec import InferenceBatchSpec, RequestOptions
        >>> spec = InferenceBatchSpec(
        ...     name="llm", upstream_key=dg.AssetKey("prompts"),
        ...     requests=RequestOptions(prompt_column="prompt"))
        >>> build_sensor(spec).name
        'llm_sensor'
    """
    settings = sensor_settings(spec)

    @dg.sensor(
        name=spec.sensor_name,
        job_name=spec.collect_job_name,
        minimum_interval_seconds=spec.limits.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={spec.resource_key},
        description=f"Watches {spec.batch_key.to_user_string()}, resubmits expired requests "
        f"and requests {spec.results_key.to_user_string()} when the batches are done.",
    )
    def watch(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return evaluate_tick(context, spec, settings)

    return watch
