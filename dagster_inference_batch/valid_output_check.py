"""The ``<name>_results_valid_output`` check: the share of answers that did not validate.

Built only for a pipeline with a ``response_model``. Like the other results checks it is
its own ``@dg.asset_check``, partitioned like the results, reading the stored results
through the IO manager; it only warns.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from .checks import rate_warning
from .structured_output import INVALID_OUTPUT, invalid_output_summary


def valid_output_result(results: pd.DataFrame, max_invalid_rate: float) -> dg.AssetCheckResult:
    """``<name>_results_valid_output``: at most ``max_invalid_rate`` rows ``invalid_output``.

    The rate is over the rows with an answer (``succeeded`` or ``invalid_output``); rows
    without one are the failure-rate check's concern.

    Args:
        results: the results table.
        max_invalid_rate: the share of answered rows allowed not to validate.

    Returns:
        A WARN check result; metadata: the rate, the counts and the invalid rows by
        error (``<JSON path>: <kind>``).

    Example:
        >>> frame = pd.DataFrame({"status": ["succeeded"] * 9 + ["invalid_output"],
        ...     "error_code": [None] * 9 + ["invalid_output:missing"],
        ...     "error_message": [None] * 9 + ["$.mood: Field required"]})
        >>> result = valid_output_result(frame, 0.02)
        >>> result.passed, result.metadata["invalid_output_rate"].value
        (False, 0.1)
    """
    invalid = int((results["status"] == INVALID_OUTPUT).sum())
    answered = invalid + int((results["status"] == "succeeded").sum())
    return rate_warning(
        "invalid_output_rate",
        invalid,
        answered,
        max_invalid_rate,
        invalid_output_rows=invalid,
        answered_rows=answered,
        invalid_output_errors=dg.MetadataValue.json(invalid_output_summary(results)),
    )


def build_valid_output_check(
    name: str,
    *,
    results_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
    max_invalid_rate: float,
) -> dg.AssetChecksDefinition:
    """The check ``<name>_results_valid_output`` of ``<name>_results``.

    Args:
        name: the pipeline's name.
        results_key: the ``<name>_results`` asset.
        partitions_def: the results' partitions, or None.
        max_invalid_rate: the threshold.

    Returns:
        The check (severity WARN).

    Example:
        >>> check = build_valid_output_check("llm", results_key=dg.AssetKey("llm_results"),
        ...     partitions_def=None, max_invalid_rate=0.02)
        >>> next(iter(check.check_specs)).name
        'llm_results_valid_output'
    """

    @dg.asset_check(
        asset=results_key,
        name=f"{name}_results_valid_output",
        partitions_def=partitions_def,
        description=f"At most {max_invalid_rate:.0%} of the answers do not validate against "
        "the response_model.",
    )
    def valid_output(results: pd.DataFrame) -> dg.AssetCheckResult:
        return valid_output_result(results, max_invalid_rate)

    return valid_output
