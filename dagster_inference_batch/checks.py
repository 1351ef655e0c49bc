"""Asset checks on ``<name>_results``: complete (blocking) and failure rate (warning).

Each is its own ``@dg.asset_check`` (partitioned like the results) that reads the stored
results through the IO manager, so the checks run after the results step in the same
run, and also on their own (the UI's "Execute checks") against what is stored. When the
results step ends without materializing (batches still running), the checks are skipped
with it. A failed complete check keeps downstream assets of the run from running.
"""

import dagster as dg
import pandas as pd

from .metadata_set import InferenceBatchMetadataSet
from .state import latest_job, partition_of


def completeness(results: pd.DataFrame, submitted_rows: int) -> dict[str, int]:
    """Counts of what keeps ``results`` from holding each of the ``submitted_rows``
    submitted custom_ids exactly once, answered. The results step joins answers to the
    submitted ids only (it refuses an upstream whose rows changed), so counting is
    enough: distinct ids short of the submitted rows are absent, beyond them extra.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "a"], "status": ["succeeded"] * 2})
        >>> completeness(frame, 2)
        {'duplicate_rows': 1, 'absent_rows': 1, 'extra_rows': 0, 'unanswered_rows': 0}
    """
    ids = results["custom_id"].astype(str)
    distinct = int(ids.nunique())
    return {
        "duplicate_rows": int(ids.duplicated().sum()),
        "absent_rows": max(0, submitted_rows - distinct),
        "extra_rows": max(0, distinct - submitted_rows),
        "unanswered_rows": int((results["status"] == "missing").sum()),
    }


def complete_result(results: pd.DataFrame, submitted_rows: int) -> dg.AssetCheckResult:
    """``<name>_results_complete``: every submitted row exactly once, none ``missing``."""
    problems = completeness(results, submitted_rows)
    return dg.AssetCheckResult(
        passed=not any(problems.values()),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"submitted_rows": submitted_rows, "result_rows": len(results), **problems},
    )


def failure_rate_result(results: pd.DataFrame, max_failure_rate: float) -> dg.AssetCheckResult:
    """``<name>_results_failure_rate``: at most ``max_failure_rate`` rows not succeeded."""
    not_succeeded = int((results["status"] != "succeeded").sum())
    rate = not_succeeded / len(results) if len(results) else 0.0
    return dg.AssetCheckResult(
        passed=rate <= max_failure_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failure_rate": round(rate, 4),
            "max_failure_rate": max_failure_rate,
            "not_succeeded_rows": not_succeeded,
        },
    )


def submitted_rows(
    instance: dg.DagsterInstance,
    results_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    partition: str | None,
    results: pd.DataFrame,
) -> int:
    """How many rows the job behind the stored results submitted: the latest results
    materialization's ``inference_batch/request_count``; for results written before it
    was recorded, the latest batch job's count; else the distinct ids stored."""
    records_filter = dg.AssetRecordsFilter(
        asset_key=results_key, asset_partitions=[partition] if partition is not None else None
    )
    records = instance.fetch_materializations(records_filter, limit=1).records
    materialization = records[0].asset_materialization if records else None
    if materialization is not None:
        count = InferenceBatchMetadataSet.extract(materialization.metadata).request_count
        if count is not None:
            return count
    recorded = latest_job(instance, batch_key, partition)
    if recorded is not None:
        return recorded.job.request_count
    return int(results["custom_id"].nunique())


def build_results_checks(
    name: str,
    *,
    results_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
    max_failure_rate: float,
) -> list[dg.AssetChecksDefinition]:
    """``<name>_results_complete`` (blocking) and ``<name>_results_failure_rate``."""

    @dg.asset_check(
        asset=results_key,
        name=f"{name}_results_complete",
        blocking=True,
        partitions_def=partitions_def,
        description="Every submitted row appears exactly once, and the provider answered it.",
    )
    def complete(
        context: dg.AssetCheckExecutionContext, results: pd.DataFrame
    ) -> dg.AssetCheckResult:
        expected = submitted_rows(
            context.instance, results_key, batch_key, partition_of(context), results
        )
        return complete_result(results, expected)

    @dg.asset_check(
        asset=results_key,
        name=f"{name}_results_failure_rate",
        partitions_def=partitions_def,
        description=f"At most {max_failure_rate:.0%} of the rows did not succeed.",
    )
    def failure_rate(results: pd.DataFrame) -> dg.AssetCheckResult:
        return failure_rate_result(results, max_failure_rate)

    return [complete, failure_rate]
