"""Asset checks on ``<name>_results``: complete (blocking) and failure rate (warning).

Each is its own ``@dg.asset_check`` (partitioned like the results) that reads the stored
results through the IO manager, so the checks run after the results step in the same
run, and also on their own (the UI's "Execute checks") against what is stored. When the
results step ends without materializing (batches still running), the checks are skipped
with it. A failed complete check keeps downstream assets of the run from running.

The stored results are a DataFrame, or (``results_format="parquet_dataset"``) a
``ResultsDataset`` whose summary, added up while it was written, gives the same counts.
"""

# No ``from __future__ import annotations``: Dagster reads the checks' ``context``
# annotation as a type when it defines them.
from typing import Any, NamedTuple

import dagster as dg
import pandas as pd

from .metadata_set import InferenceBatchMetadataSet
from .results_stream import ResultsDataset
from .state import latest_job, partition_of


def completeness(results: pd.DataFrame | ResultsDataset, expected_rows: int) -> dict[str, int]:
    """Counts of what keeps ``results`` from holding each of the job's rows once, answered.

    The results step joins answers to the job's ids only (it refuses an upstream whose
    rows changed), so counting is enough: distinct ids short of the expected rows are
    absent, beyond them extra.

    Args:
        results: the results table (``custom_id`` and ``status`` columns), or its dataset.
        expected_rows: how many rows the job holds: sent to the provider, or reused.

    Returns:
        ``duplicate_rows``, ``absent_rows``, ``extra_rows`` and ``unanswered_rows``.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "a"], "status": ["succeeded"] * 2})
        >>> completeness(frame, 2)
        {'duplicate_rows': 1, 'absent_rows': 1, 'extra_rows': 0, 'unanswered_rows': 0}
    """
    if isinstance(results, ResultsDataset):
        rows, distinct = results.summary.rows, results.summary.distinct_ids
    else:
        rows, distinct = len(results), int(results["custom_id"].astype(str).nunique())
    return {
        "duplicate_rows": rows - distinct,
        "absent_rows": max(0, expected_rows - distinct),
        "extra_rows": max(0, distinct - expected_rows),
        "unanswered_rows": _with_status(results, "missing"),
    }


def _rows(results: pd.DataFrame | ResultsDataset) -> int:
    return results.summary.rows if isinstance(results, ResultsDataset) else len(results)


def _with_status(results: pd.DataFrame | ResultsDataset, status: str) -> int:
    if isinstance(results, ResultsDataset):
        return int(results.summary.statuses.get(status, 0))
    return int((results["status"] == status).sum())


class JobRows(NamedTuple):
    """The rows of the job behind the results.

    Attributes:
        submitted: rows sent to the provider (``request_count``).
        reused: rows answered without being sent (``rows_reused``: a stored answer,
            ``source == "store"``, or the same request as a sent row).

    Example:
        >>> JobRows(submitted=2, reused=3).expected
        5
    """

    submitted: int
    reused: int = 0

    @property
    def expected(self) -> int:
        """Rows the results are to hold."""
        return self.submitted + self.reused


def cancelled_rows(results: pd.DataFrame | ResultsDataset, *, by_user: bool) -> dict[str, object]:
    """How both checks count the cancelled rows, as check metadata.

    Rows cancelled at the user's request (the cancel job) are neither failures nor
    unanswered: the user asked for them not to be answered. Rows a provider cancelled on
    its own count as not succeeded in the failure rate, and as answered (the provider's
    answer is "cancelled") in the complete check.

    Args:
        results: the results table.
        by_user: whether the job's batches were cancelled at the user's request.

    Returns:
        ``cancelled_rows`` and ``cancelled_rows_counted_as``.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "cancelled"]})
        >>> cancelled_rows(frame, by_user=True)["cancelled_rows_counted_as"]
        'cancelled at your request: neither failed nor unanswered'
    """
    count = _with_status(results, "cancelled")
    how = (
        "cancelled at your request: neither failed nor unanswered"
        if by_user
        else "cancelled by the provider: not succeeded (failure rate), answered (complete)"
    )
    return {"cancelled_rows": count, "cancelled_rows_counted_as": how}


def complete_result(
    results: pd.DataFrame | ResultsDataset, rows: JobRows, *, cancelled_by_user: bool = False
) -> dg.AssetCheckResult:
    """``<name>_results_complete``: every row of the job (sent or reused) exactly once,
    none ``missing``.

    Args:
        results: the results table.
        rows: the job's rows, sent and reused.
        cancelled_by_user: whether the job was cancelled at the user's request.

    Returns:
        A blocking (ERROR) check result with the counts of ``completeness`` and of the
        cancelled rows as metadata.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a"], "status": ["succeeded"]})
        >>> complete_result(frame, JobRows(submitted=1)).passed
        True
        >>> complete_result(frame, JobRows(submitted=0, reused=1)).passed  # from the store
        True
    """
    problems = completeness(results, rows.expected)
    return dg.AssetCheckResult(
        passed=not any(problems.values()),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "submitted_rows": rows.submitted,
            "reused_rows": rows.reused,
            "result_rows": _rows(results),
            **problems,
            **cancelled_rows(results, by_user=cancelled_by_user),
        },
    )


def failure_rate_result(
    results: pd.DataFrame | ResultsDataset,
    max_failure_rate: float,
    *,
    cancelled_by_user: bool = False,
) -> dg.AssetCheckResult:
    """``<name>_results_failure_rate``: at most ``max_failure_rate`` rows not succeeded.

    Rows cancelled at the user's request are left out of the count and the total.

    Args:
        results: the results table.
        max_failure_rate: the share of rows allowed not to succeed.
        cancelled_by_user: whether the job was cancelled at the user's request.

    Returns:
        A WARN check result with the rate and how cancelled rows counted as metadata.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "failed"]})
        >>> failure_rate_result(frame, 0.25).passed
        False
        >>> frame = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "cancelled"]})
        >>> failure_rate_result(frame, 0.25, cancelled_by_user=True).passed
        True
    """
    counted = _rows(results) - (_with_status(results, "cancelled") if cancelled_by_user else 0)
    not_succeeded = counted - _with_status(results, "succeeded")
    return rate_warning(
        "failure_rate",
        not_succeeded,
        counted,
        max_failure_rate,
        not_succeeded_rows=not_succeeded,
        counted_rows=counted,
        **cancelled_rows(results, by_user=cancelled_by_user),
    )


def rate_warning(
    rate_name: str, part: int, whole: int, max_rate: float, **metadata: Any
) -> dg.AssetCheckResult:
    """A WARN check result that fails when ``part / whole`` is above ``max_rate``.

    Args:
        rate_name: the rate's metadata key; the limit goes under ``max_<rate_name>``.
        part: the rows counted against the rate.
        whole: the rows the rate is taken over (a rate of 0 when there are none).
        max_rate: the highest rate that passes.
        **metadata: more check metadata (the counts behind the rate).

    Example:
        >>> result = rate_warning("failure_rate", 1, 4, 0.2, counted_rows=4)
        >>> result.passed, result.metadata["failure_rate"].value
        (False, 0.25)
    """
    rate = part / whole if whole else 0.0
    return dg.AssetCheckResult(
        passed=rate <= max_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={rate_name: round(rate, 4), f"max_{rate_name}": max_rate, **metadata},
    )


def cancelled_by_user(
    instance: dg.DagsterInstance, batch_key: dg.AssetKey, partition: str | None
) -> bool:
    """Whether the partition's latest job was cancelled at the user's request.

    Example:
        >>> cancelled_by_user(dg.DagsterInstance.ephemeral(), dg.AssetKey("llm_batch"), None)
        False
    """
    recorded = latest_job(instance, batch_key, partition)
    return recorded is not None and recorded.cancel_requested


def job_rows(
    instance: dg.DagsterInstance,
    results_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    partition: str | None,
    results: pd.DataFrame | ResultsDataset,
) -> JobRows:
    """The rows of the job behind the stored results, sent and reused.

    Args:
        instance: the Dagster instance.
        results_key: the ``<name>_results`` asset.
        batch_key: the ``<name>_batch`` asset.
        partition: the partition key, or None.
        results: the stored results table.

    Returns:
        The latest results materialization's ``inference_batch/request_count`` and
        ``inference_batch/rows_reused``; for results written before the count was
        recorded, the latest batch job's; else the distinct ids stored, as submitted.

    Raises:
        dagster.Failure: the batch job had to be read and cannot be.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "b", "b"]})
        >>> job_rows(dg.DagsterInstance.ephemeral(), dg.AssetKey("llm_results"),
        ...     dg.AssetKey("llm_batch"), None, frame)
        JobRows(submitted=2, reused=0)
    """
    records_filter = dg.AssetRecordsFilter(
        asset_key=results_key, asset_partitions=[partition] if partition is not None else None
    )
    records = instance.fetch_materializations(records_filter, limit=1).records
    materialization = records[0].asset_materialization if records else None
    if materialization is not None:
        recorded_counts = InferenceBatchMetadataSet.extract(materialization.metadata)
        if recorded_counts.request_count is not None:
            return JobRows(recorded_counts.request_count, recorded_counts.rows_reused or 0)
    recorded = latest_job(instance, batch_key, partition)
    if recorded is not None:
        return JobRows(recorded.job.request_count, recorded.job.rows_reused)
    if isinstance(results, ResultsDataset):
        return JobRows(results.summary.distinct_ids)
    return JobRows(int(results["custom_id"].nunique()))


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
        description="Every row of the job (sent, or answered from the answer store) appears "
        "exactly once, and was answered (a row cancelled at your request counts as answered).",
    )
    def complete(context: dg.AssetCheckExecutionContext, results: Any) -> dg.AssetCheckResult:
        partition = partition_of(context)
        rows = job_rows(context.instance, results_key, batch_key, partition, results)
        by_user = cancelled_by_user(context.instance, batch_key, partition)
        return complete_result(results, rows, cancelled_by_user=by_user)

    @dg.asset_check(
        asset=results_key,
        name=f"{name}_results_failure_rate",
        partitions_def=partitions_def,
        description=f"At most {max_failure_rate:.0%} of the rows did not succeed (rows "
        "cancelled at your request are left out).",
    )
    def failure_rate(context: dg.AssetCheckExecutionContext, results: Any) -> dg.AssetCheckResult:
        by_user = cancelled_by_user(context.instance, batch_key, partition_of(context))
        return failure_rate_result(results, max_failure_rate, cancelled_by_user=by_user)

    return [complete, failure_rate]
