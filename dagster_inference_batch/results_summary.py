"""The ``<name>_results`` summary: what the UI shows without opening a log or a table.

``results_summary`` turns the results table and its job into a short markdown text
(``inference_batch/summary``): the rows by status, the five most frequent error codes
with one example message each, tokens and cost beside the estimate made before upload,
and the attempts it took. ``failure_rate`` is the numeric share the asset's plots show.
"""

from __future__ import annotations

import pandas as pd

from .batch_record import BatchJob
from .results import STATUSES

TOP_ERRORS = 5
EXAMPLE_CHARS = 120


def failure_rate(frame: pd.DataFrame) -> float:
    """The share of result rows that did not succeed.

    Args:
        frame: the results table (``status`` column).

    Returns:
        A number from 0 to 1 (0 for no rows), rounded to 4 places.

    Example:
        >>> failure_rate(pd.DataFrame({"status": ["succeeded", "failed", "expired", "succeeded"]}))
        0.5
    """
    if not len(frame):
        return 0.0
    return round(float((frame["status"] != "succeeded").mean()), 4)


def top_errors(frame: pd.DataFrame, limit: int = TOP_ERRORS) -> list[tuple[str, int, str]]:
    """The most frequent error codes of the rows not succeeded, with one example each.

    Args:
        frame: the results table (``status``, ``error_code`` and ``error_message``).
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
    failed = frame[frame["status"] != "succeeded"]
    if failed.empty:
        return []
    codes = failed["error_code"].where(failed["error_code"].notna(), failed["status"]).astype(str)
    messages = failed["error_message"].where(failed["error_message"].notna(), "").astype(str)
    counts = codes.value_counts()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [(code, int(rows), _example(messages[codes == code])) for code, rows in ranked]


def _example(messages: pd.Series) -> str:
    given = [m for m in messages if m]
    text = " ".join(given[0].split()) if given else ""
    text = text.replace("|", "\\|")
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _usd(amount: float | None) -> str:
    return "unknown (no prices)" if amount is None else f"${amount:,.4f}"


def results_summary(
    frame: pd.DataFrame, job: BatchJob, usage: dict[str, int], cost: float | None
) -> str:
    """The results in markdown: statuses, top error codes, tokens and cost, attempts.

    Args:
        frame: the results table.
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
    rows = len(frame)
    counts = frame["status"].value_counts()
    not_succeeded = rows - int(counts.get("succeeded", 0))
    share = f"{100.0 * not_succeeded / rows:.1f}%" if rows else "0.0%"
    lines = [
        f"**{rows} rows**; not succeeded: {not_succeeded} of {rows} rows ({share})",
        "",
        "| status | rows |",
        "| --- | --- |",
        *(f"| {status} | {int(counts.get(status, 0))} |" for status in STATUSES),
    ]
    errors = top_errors(frame)
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
        f"| cost | {_usd(cost)} | {_usd(estimate.get('typical_usd')) if estimate else '-'} "
        f"(worst {_usd(estimate.get('worst_usd')) if estimate else '-'}) |",
        "",
        f"**Attempts:** {job.attempt}"
        + (
            f" (rows expired or cancelled were resubmitted {job.attempt - 1} time(s))"
            if job.attempt > 1
            else ""
        ),
    ]
    return "\n".join(lines)
