"""Asset checks on ``<name>_results``: complete (blocking) and failure rate (warning)."""

import dagster as dg
import pandas as pd


def completeness(results: pd.DataFrame, ids: pd.Series) -> dict[str, int]:
    """Counts of what keeps ``results`` from holding every id of ``ids`` exactly once.

    Example:
        >>> frame = pd.DataFrame({"custom_id": ["a", "a"], "status": ["succeeded"] * 2})
        >>> completeness(frame, pd.Series(["a", "b"]))
        {'duplicate_rows': 1, 'absent_rows': 1, 'extra_rows': 0, 'unanswered_rows': 0}
    """
    got = results["custom_id"].astype(str)
    expected = set(ids.astype(str))
    present = set(got)
    return {
        "duplicate_rows": int(got.duplicated().sum()),
        "absent_rows": len(expected - present),
        "extra_rows": len(present - expected),
        "unanswered_rows": int((results["status"] == "missing").sum()),
    }


def build_results_checks(
    name: str,
    *,
    results_key: dg.AssetKey,
    upstream_key: dg.AssetKey,
    id_column: str,
    max_failure_rate: float,
    partitions_def: dg.PartitionsDefinition | None,
) -> list[dg.AssetChecksDefinition]:
    """``<name>_results_complete`` and ``<name>_results_failure_rate``."""

    @dg.asset_check(
        asset=results_key,
        name=f"{name}_results_complete",
        blocking=True,
        additional_ins={"upstream": dg.AssetIn(key=upstream_key)},
        partitions_def=partitions_def,
        description="Every input row appears exactly once, and the provider answered it.",
    )
    def complete(results: pd.DataFrame, upstream: pd.DataFrame) -> dg.AssetCheckResult:
        problems = completeness(results, upstream[id_column])
        return dg.AssetCheckResult(
            passed=not any(problems.values()),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"input_rows": len(upstream), "result_rows": len(results), **problems},
        )

    @dg.asset_check(
        asset=results_key,
        name=f"{name}_results_failure_rate",
        partitions_def=partitions_def,
        description=f"At most {max_failure_rate:.0%} of the rows did not succeed.",
    )
    def failure_rate(results: pd.DataFrame) -> dg.AssetCheckResult:
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

    return [complete, failure_rate]
