"""Asset checks on ``<name>_results``: complete (blocking) and failure rate (warning).

The results asset evaluates them itself, on the frame it just built, so they run in
the same step (and the same partition) as the materialization they judge.
"""

import dagster as dg
import pandas as pd


def results_check_specs(
    name: str, results_key: dg.AssetKey, max_failure_rate: float
) -> list[dg.AssetCheckSpec]:
    """``<name>_results_complete`` (blocking) and ``<name>_results_failure_rate``."""
    return [
        dg.AssetCheckSpec(
            f"{name}_results_complete",
            asset=results_key,
            blocking=True,
            description="Every input row appears exactly once, and the provider answered it.",
        ),
        dg.AssetCheckSpec(
            f"{name}_results_failure_rate",
            asset=results_key,
            description=f"At most {max_failure_rate:.0%} of the rows did not succeed.",
        ),
    ]


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


def evaluate_results_checks(
    name: str, results: pd.DataFrame, ids: pd.Series, max_failure_rate: float
) -> list[dg.AssetCheckResult]:
    """The two checks' results for ``results`` built from input rows with ``ids``."""
    problems = completeness(results, ids)
    not_succeeded = int((results["status"] != "succeeded").sum())
    rate = not_succeeded / len(results) if len(results) else 0.0
    return [
        dg.AssetCheckResult(
            check_name=f"{name}_results_complete",
            passed=not any(problems.values()),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"input_rows": len(ids), "result_rows": len(results), **problems},
        ),
        dg.AssetCheckResult(
            check_name=f"{name}_results_failure_rate",
            passed=rate <= max_failure_rate,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "failure_rate": round(rate, 4),
                "max_failure_rate": max_failure_rate,
                "not_succeeded_rows": not_succeeded,
            },
        ),
    ]
