"""The ``<name>_results`` summary: what the UI shows without opening a log or a table.

``results_summary`` turns the results table and its job into a short markdown text
(``inference_batch/summary``): the rows by status, the five most frequent error codes
with one example message each, tokens and cost beside the estimate made before upload,
and the attempts it took. ``failure_rate`` is the numeric share the asset's plots show.
Each takes the table itself or the counts a ``ResultsTally`` added up chunk by chunk (the
streamed ``parquet_dataset`` results are never held whole).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from .batch_record import BatchJob
from .results import STATUSES

if TYPE_CHECKING:
    from .results_tally import ResultsTally

TOP_ERRORS = 5
EXAMPLE_CHARS = 120


def status_counts(results: pd.DataFrame | ResultsTally) -> dict[str, int]:
    """Rows per status (every one of ``STATUSES``).

    Args:
        results: the results table (``status`` column), or its ``ResultsTally``.

    Returns:
        Status -> rows.

    Example:
        >>> status_counts(pd.DataFrame({"status": ["failed", "succeeded"]}))["failed"]
        1
    """
    if not isinstance(results, pd.DataFrame):
        return dict(results.statuses)
    counts = results["status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in STATUSES}


def failure_rate(results: pd.DataFrame | ResultsTally) -> float:
    """The share of result rows that did not succeed.

    Args:
        results: the results table (``status`` column), or its ``ResultsTally``.

    Returns:
        A number from 0 to 1 (0 for no rows), rounded to 4 places.

    Example:
        >>> failure_rate(pd.DataFrame({"status": ["succeeded", "failed", "expired", "succeeded"]}))
        0.5
    """
    counts = status_counts(results)
    rows = sum(counts.values())
    return round((rows - counts["succeeded"]) / rows, 4) if rows else 0.0


def error_counts(frame: pd.DataFrame) -> dict[str, tuple[int, str]]:
    """The rows not succeeded per error code, with the first message given for each.

    Args:
        frame: the results table, or some of its rows (``status``, ``error_code`` and
            ``error_message``); a row without a code counts under its status.

    Returns:
        Code -> (rows, first non-empty message or ``""``).

    Example:
        >>> error_counts(pd.DataFrame({"status": ["failed", "failed", "expired"],
        ...     "error_code": ["rate_limit", "rate_limit", None],
        ...     "error_message": [None, "slow down", None]}))
        {'expired': (1, ''), 'rate_limit': (2, 'slow down')}
    """
    failed = frame[frame["status"] != "succeeded"]
    if failed.empty:
        return {}
    codes = failed["error_code"].where(failed["error_code"].notna(), failed["status"]).astype(str)
    messages = failed["error_message"].where(failed["error_message"].notna(), "").astype(str)
    given = messages[messages != ""]
    examples = given.groupby(codes[given.index]).first()
    return {
        str(code): (int(rows), str(examples.get(code, "")))
        for code, rows in codes.value_counts().sort_index().items()
    }


def add_error_counts(
    a: Mapping[str, tuple[int, str]], b: Mapping[str, tuple[int, str]]
) -> dict[str, tuple[int, str]]:
    """Two ``error_counts`` added up: rows summed, ``a``'s message kept unless empty.

    Example:
        >>> add_error_counts({"x": (1, "")}, {"x": (2, "late"), "y": (1, "")})
        {'x': (3, 'late'), 'y': (1, '')}
    """
    added = dict(a)
    for code, (rows, example) in b.items():
        held_rows, held_example = added.get(code, (0, ""))
        added[code] = (held_rows + rows, held_example or example)
    return added


def top_errors(
    results: pd.DataFrame | ResultsTally, limit: int = TOP_ERRORS
) -> list[tuple[str, int, str]]:
    """The most frequent error codes of the rows not succeeded, with one example each.

    Args:
        results: the results table (``status``, ``error_code`` and ``error_message``),
            or its ``ResultsTally``.
        limit: how many codes to keep.

    Returns:
        ``(code, rows, example message)``, most rows first (then by code); a row without
        a code counts under its status.

    Example:
        >>> frame = pd.DataFrame({"status": ["failed", "failed", "expired"],
        ...     "error_code": ["rate_limit", "rate_limit", None],
        ...     "error_message": ["slow down", "slow down", None]})
        >>> top_errors(frame)
        [('rate_limit', 2, 'slow down'), ('expired', 1, '')]
    """
    counts = error_counts(results) if isinstance(results, pd.DataFrame) else results.errors
    ranked = sorted(counts.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [(code, rows, _example(example)) for code, (rows, example) in ranked]


def _example(message: str) -> str:
    text = " ".join(message.split())
    text = text.replace("|", "\\|")
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _usd(amount: float | None) -> str:
    return "unknown (no prices)" if amount is None else f"${amount:,.4f}"


def _estimated_cost(estimate: dict[str, Any]) -> str:
    typical, worst = estimate.get("typical_usd"), estimate.get("worst_usd")
    if typical is None and worst is None:
        return "unknown (no prices)" if estimate else "-"
    return f"{_usd(typical)} (worst {_usd(worst)})"


def results_summary(
    results: pd.DataFrame | ResultsTally, job: BatchJob, usage: dict[str, int], cost: float | None
) -> str:
    """The results in markdown: statuses, top error codes, tokens and cost, attempts.

    Args:
        results: the results table, or its ``ResultsTally``.
        job: the job joined (its attempts and the estimate made before upload).
        usage: tokens of the rows this job answered (``token_usage``).
        cost: their cost in USD, or None without prices.

    Returns:
        The markdown text of ``inference_batch/summary``.

    Example:
        >>> frame = pd.DataFrame({"status": ["succeeded", "failed"],
        ...     "error_code": [None, "invalid_request"], "error_message": [None, "bad model"]})
        >>> job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k",
        ...     estimate={"typical_usd": 0.002, "input_tokens": 40})
        >>> text = results_summary(frame, job, {"input_tokens": 30, "output_tokens": 8,
        ...     "total_tokens": 38}, 0.0015)
        >>> "| invalid_request | 1 | bad model |" in text, "1 of 2 rows (50.0%)" in text
        (True, True)
    """
    counts = status_counts(results)
    rows = sum(counts.values())
    not_succeeded = rows - counts["succeeded"]
    share = f"{100.0 * not_succeeded / rows:.1f}%" if rows else "0.0%"
    lines = [
        f"**{rows} rows**; not succeeded: {not_succeeded} of {rows} rows ({share})",
        "",
        "| status | rows |",
        "| --- | --- |",
        *(f"| {status} | {counts[status]} |" for status in STATUSES),
    ]
    errors = top_errors(results)
    if errors:
        lines += [
            "",
            f"**Top error codes** ({len(errors)} most frequent)",
            "",
            "| code | rows | example |",
            "| --- | --- | --- |",
            *(f"| {code} | {count} | {example} |" for code, count, example in errors),
        ]
    estimate = job.estimate
    estimated_tokens = estimate.get("input_tokens")
    lines += [
        "",
        "**Tokens and cost**",
        "",
        "| | actual | estimated before upload |",
        "| --- | --- | --- |",
        f"| input tokens | {usage['input_tokens']:,} | "
        f"{'-' if estimated_tokens is None else f'{estimated_tokens:,}'} |",
        f"| output tokens | {usage['output_tokens']:,} | - |",
        f"| cost | {_usd(cost)} | {_estimated_cost(estimate)} |",
        "",
        f"**Attempts:** {job.attempt}"
        + (
            f" (rows expired or cancelled were resubmitted {job.attempt - 1} time(s))"
            if job.attempt > 1
            else ""
        ),
    ]
    return "\n".join(lines)
