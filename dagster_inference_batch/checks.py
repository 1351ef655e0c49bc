"""Asset checks on ``<name>_results``: complete (blocking) and failure rate (warning).

The stored results are a DataFrame, or (``results_format="parquet_dataset"``) a
``ResultsDataset`` whose summary, added up while it was written, gives the same counts.
Each is its own ``@dg.asset_check`` (partitioned like the results) that reads the stored
results through the IO manager, so the checks run after the results step in the same
run, and also on their own (the UI's "Execute checks") against what is stored. When the
results step ends without materializing (batches still running), the checks are skipped
with it. A failed complete check keeps downstream assets of the run from running.
"""

from typing import Any

import dagster as dg
import pandas as pd

from .metadata_set import InferenceBatchMetadataSet
from .results_stream import ResultsDataset
from .state import latest_job, partition_of


def completeness(results: pd.DataFrame | ResultsDataset, submitted_rows: int) -> dict[str, int]:
    """Counts of what keeps ``results`` from holding each submitted row once, answered.

    The results step joins answers to the submitted ids only (it refuses an upstream
    whose rows changed), so counting is enough: distinct ids short of the submitted
    rows are absent, beyond them extra.

    Args:
        results: the results table (``custom_id`` and ``status`` columns), or its dataset.
        submitted_rows: how many rows the job submitted.

    Returns:
        ``duplicate_rows``, ``absent_rows``, ``extra_rows`` and ``unanswered_rows``.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "a"], "status": ["succeeded"] * 2})
        >>> completeness(frame, 2)
        {'duplicate_rows': 1, 'absent_rows': 1, 'extra_rows': 0, 'unanswered_rows': 0}
    """
    if isinstance(results, ResultsDataset):
        summary = results.summary
        rows, distinct, missing = summary.rows, summary.distinct_ids, summary.statuses["missing"]
    else:
        rows, distinct = len(results), int(results["custom_id"].astype(str).nunique())
        missing = int((results["status"] == "missing").sum())
    return {
        "duplicate_rows": rows - distinct,
        "absent_rows": max(0, submitted_rows - distinct),
        "extra_rows": max(0, distinct - submitted_rows),
        "unanswered_rows": missing,
    }


def _rows(results: pd.DataFrame | ResultsDataset) -> int:
    return results.summary.rows if isinstance(results, ResultsDataset) else len(results)


def complete_result(
    results: pd.DataFrame | ResultsDataset, submitted_rows: int
) -> dg.AssetCheckResult:
    """``<name>_results_complete``: every submitted row exactly once, none ``missing``.

    Args:
        results: the results table, or its dataset.
        submitted_rows: how many rows the job submitted.

    Returns:
        A blocking (ERROR) check result with the counts of ``completeness`` as metadata.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a"], "status": ["succeeded"]})
        >>> complete_result(frame, 1).passed
        True
    """
    problems = completeness(results, submitted_rows)
    return dg.AssetCheckResult(
        passed=not any(problems.values()),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"submitted_rows": submitted_rows, "result_rows": _rows(results), **problems},
    )


def failure_rate_result(
    results: pd.DataFrame | ResultsDataset, max_failure_rate: float
) -> dg.AssetCheckResult:
    """``<name>_results_failure_rate``: at most ``max_failure_rate`` rows not succeeded.

    Args:
        results: the results table, or its dataset.
        max_failure_rate: the share of rows allowed not to succeed.

    Returns:
        A WARN check result with the rate as metadata.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "failed"]})
        >>> failure_rate_result(frame, 0.25).passed
        False
    """
    if isinstance(results, ResultsDataset):
        not_succeeded = results.summary.rows - results.summary.statuses["succeeded"]
    else:
        not_succeeded = int((results["status"] != "succeeded").sum())
    rows = _rows(results)
    rate = not_succeeded / rows if rows else 0.0
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
    results: pd.DataFrame | ResultsDataset,
) -> int:
    """How many rows the job behind the stored results submitted.

    Args:
        instance: the Dagster instance.
        results_key: the ``<name>_results`` asset.
        batch_key: the ``<name>_batch`` asset.
        partition: the partition key, or None.
        results: the stored results table, or its dataset.

    Returns:
        The latest results materialization's ``inference_batch/request_count``; for
        results written before it was recorded, the latest batch job's count; else the
        distinct ids stored.

    Raises:
        dagster.Failure: the batch job had to be read and cannot be.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "b", "b"]})
        >>> submitted_rows(dg.DagsterInstance.ephemeral(), dg.AssetKey("llm_results"),
        ...     dg.AssetKey("llm_batch"), None, frame)
        2
    """
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
    if isinstance(results, ResultsDataset):
        return results.summary.distinct_ids
    return int(results["custom_id"].nunique())


def build_results_checks(
    name: str,
    *,
    results_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
    max_failure_rate: float,
) -> list[dg.AssetChecksDefinition]:
    """The two checks of ``<name>_results``.

    Args:
        name: the pipeline's name.
        results_key: the ``<name>_results`` asset.
        batch_key: the ``<name>_batch`` asset.
        partitions_def: the results' partitions, or None.
        max_failure_rate: the threshold of the failure-rate check.

    Returns:
        ``<name>_results_complete`` (blocking) and ``<name>_results_failure_rate``.

    Example:
        >>> checks = build_results_checks("llm", results_key=dg.AssetKey("llm_results"),
        ...     batch_key=dg.AssetKey("llm_batch"), partitions_def=None, max_failure_rate=0.1)
        >>> [next(iter(c.check_specs)).name for c in checks]
        ['llm_results_complete', 'llm_results_failure_rate']
    """

    @dg.asset_check(
        asset=results_key,
        name=f"{name}_results_complete",
        blocking=True,
        partitions_def=partitions_def,
        description="Every submitted row appears exactly once, and the provider answered it.",
    )
    def complete(context: dg.AssetCheckExecutionContext, results: Any) -> dg.AssetCheckResult:
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
    def failure_rate(results: Any) -> dg.AssetCheckResult:
        return failure_rate_result(results, max_failure_rate)

    return [complete, failure_rate]
