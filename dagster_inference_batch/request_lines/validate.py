"""The rules every request line must follow, and the collector that reports them.

Problems are gathered (not raised one by one) so :class:`InvalidBatchInput` can name
each bad line by its 1-based number and ``custom_id``, up to 20 at once.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pandas as pd

from dagster_inference_batch.errors import MAX_REPORTED_PROBLEMS, InvalidBatchInput
from dagster_inference_batch.providers import CHAT, COMPLETIONS, EMBEDDINGS, PROFILES, RESPONSES

# Every endpoint some provider offers; whether the chosen provider does is the client's check.
ENDPOINTS = tuple(dict.fromkeys(e for profile in PROFILES.values() for e in profile.endpoints))
CHAT_ENDPOINT, COMPLETIONS_ENDPOINT = CHAT, COMPLETIONS
EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT = EMBEDDINGS, RESPONSES
DEFAULT_MAX_LINE_BYTES = 1_000_000

MISSING_ID = "missing custom_id"
EMPTY_ID = "empty custom_id"
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def check_prompt_source(
    *,
    prompt_column: str | None = None,
    messages: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    body_column: str | None = None,
) -> None:
    """Check that exactly one source of request content is given.

    Args:
        prompt_column: Column holding each row's prompt text.
        messages: Function of a row (as a dict) returning its chat messages.
        body_column: Column holding each row's ready request body.

    Raises:
        ValueError: If none or more than one of the three is given.

    Example:
        >>> check_prompt_source(prompt_column="text")
        >>> check_prompt_source(prompt_column="text", body_column="body")
        Traceback (most recent call last):
        ...
        ValueError: pass exactly one of prompt_column, messages or body_column
    """
    if sum(x is not None for x in (prompt_column, messages, body_column)) != 1:
        raise ValueError("pass exactly one of prompt_column, messages or body_column")


class Problems:
    """Counts every problem and keeps the first ``MAX_REPORTED_PROBLEMS`` by line number.

    Line 0 is for problems not tied to a line (a missing column, a bad argument).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self.total = 0

    def add(self, message: str, line: int = 0) -> None:
        """Record one problem.

        Args:
            message: What is wrong, already naming the line.
            line: Its 1-based line number, or 0 for a problem of the whole input.
        """
        self.total += 1
        item = (-line, -next(self._seq), message)  # heap root = latest, highest line
        if len(self._heap) < MAX_REPORTED_PROBLEMS:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def add_rows(
        self, positions: Sequence[int], describe: Callable[[int], str], lines: Sequence[int]
    ) -> None:
        """Record one problem per position, describing only the first few.

        Args:
            positions: Positions of the bad rows.
            describe: The message for a position.
            lines: Line number of each position (``lines[pos]``).
        """
        for pos in positions[:MAX_REPORTED_PROBLEMS]:
            self.add(describe(pos), lines[pos])
        self.total += max(0, len(positions) - MAX_REPORTED_PROBLEMS)

    def raise_if_any(self) -> None:
        """Raise what was recorded, first lines first.

        Raises:
            InvalidBatchInput: If any problem was recorded.
        """
        if self.total:
            ordered = sorted(self._heap, reverse=True)
            raise InvalidBatchInput([message for _, _, message in ordered], total=self.total)


def where(line: int, custom_id: object = None) -> str:
    """Name a line for a message: ``line 3 (custom_id 'a')``, or ``line 3`` without an id.

    Args:
        line: The 1-based line number.
        custom_id: The line's id; shown only if it is a non-empty string (cut at 60).

    Returns:
        The line's name.
    """
    if isinstance(custom_id, str) and custom_id:
        shown = custom_id if len(custom_id) <= 60 else custom_id[:57] + "..."
        return f"line {line} (custom_id {shown!r})"
    return f"line {line}"


def custom_id_problem(value: object) -> str | None:
    """What is wrong with a ``custom_id`` value.

    Args:
        value: The value given as the id.

    Returns:
        ``MISSING_ID`` for None / NaN / ``pd.NA``, a message for a non-string or an
        empty string, or None if the id is fine.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return MISSING_ID
    if not isinstance(value, str):
        return f"custom_id must be a string, got {type(value).__name__}"
    if not value:
        return EMPTY_ID
    return None


def invalid_text(values: list[Any] | pd.Series) -> list[int]:
    """Positions of values that are missing, not a str, or empty.

    Args:
        values: The values; a string-dtype Series is checked vectorised.

    Returns:
        The bad positions, in order.
    """
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.StringDtype):
            return np.flatnonzero((values.isna() | (values.str.len() == 0)).to_numpy()).tolist()
        values = values.tolist()
    return [i for i, v in enumerate(values) if not isinstance(v, str) or not v]


def check_custom_ids(
    ids: list[Any], problems: Problems, lines: Sequence[int], bad: list[int] | None = None
) -> set[int]:
    """Report missing, non-string, empty and duplicate ids.

    Args:
        ids: The ids, one per line.
        problems: Where to report.
        lines: Line number of each id.
        bad: The precomputed :func:`invalid_text` positions of ``ids``, if known.

    Returns:
        The positions of every reported id.
    """
    bad = invalid_text(ids) if bad is None else bad
    problems.add_rows(bad, lambda i: f"{where(lines[i])}: {custom_id_problem(ids[i])}", lines)
    bad_set = set(bad)
    if bad or len(set(ids)) < len(ids):  # (bad ids may be unhashable) the set: fast check
        first: dict[str, int] = {}
        dups = []
        for i, v in enumerate(ids):
            if i not in bad_set and first.setdefault(v, i) != i:
                dups.append(i)
        problems.add_rows(
            dups,
            lambda i: (
                f"{where(lines[i], ids[i])}: duplicate custom_id "
                f"(first on line {lines[first[ids[i]]]})"
            ),
            lines,
        )
        bad_set.update(dups)
    return bad_set


def column_ids(column: pd.Series) -> list[Any]:
    """Ids from a DataFrame column; integer columns become decimal strings.

    Args:
        column: The id column.

    Returns:
        One id per row (None for a missing integer).
    """
    if pd.api.types.is_integer_dtype(column.dtype):
        return [None if pd.isna(v) else str(v) for v in column.tolist()]
    return column.tolist()


def _non_finite_path(value: Any, path: str) -> str | None:
    """Path of the first NaN / infinity inside ``value`` (which orjson writes as null)."""
    if isinstance(value, (float, np.floating)):
        return None if math.isfinite(value) else path or "value"
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        if not np.isfinite(value).all():
            return path or "value"
    return None


def dumps_checked(value: Any, place: str, problems: Problems, line: int) -> bytes | None:
    """Encode ``value`` as compact JSON, reporting what JSON cannot carry instead of raising.

    Args:
        value: The value to encode (numpy values allowed).
        place: How messages name it (e.g. the output of :func:`where`).
        problems: Where to report.
        line: The line number to report under.

    Returns:
        The JSON bytes, or None if a problem was reported (NaN, infinity, an
        unserialisable value, a lone surrogate).
    """
    try:
        data = orjson.dumps(value, option=_DUMPS_OPTIONS)
    except orjson.JSONEncodeError as exc:
        problems.add(f"{place}: value JSON cannot carry ({exc})", line)
        return None
    if b"null" in data:  # orjson turns NaN and infinity into null; look closer only then
        bad = _non_finite_path(value, "")
        if bad:
            problems.add(f"{place}: {bad} is NaN or infinity, which JSON cannot carry", line)
            return None
    return data


def check_line_sizes(
    lines: list[bytes], start: int, ids: list[str], max_line_bytes: int, problems: Problems
) -> None:
    """Report lines over the size limit.

    Args:
        lines: A run of encoded lines, those of ``ids[start:]``.
        start: Position of the run's first line (its line number is ``start + 1``).
        ids: Every line's id.
        max_line_bytes: The largest line allowed, newline excluded.
        problems: Where to report.
    """
    if max(map(len, lines), default=0) <= max_line_bytes:  # the usual case: one C-level pass
        return
    for i, line in enumerate(lines, start):
        if len(line) > max_line_bytes:
            problems.add(
                f"{where(i + 1, ids[i])}: line is {len(line)} bytes, "
                f"over the {max_line_bytes}-byte limit",
                i + 1,
            )


def check_endpoint(endpoint: str) -> None:
    """Check that the endpoint is one a batch may use with some provider.

    Args:
        endpoint: The url path, e.g. ``/v1/chat/completions``.

    Raises:
        InvalidBatchInput: If it is not one of ``ENDPOINTS``.
    """
    if endpoint not in ENDPOINTS:
        raise InvalidBatchInput([f"unsupported url {endpoint!r}: use one of {list(ENDPOINTS)}"])
