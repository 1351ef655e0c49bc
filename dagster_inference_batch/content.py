"""Turn each answer's ``content`` into columns of the results table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

ContentParser = Callable[[str], Mapping[str, Any]]
PARSE_ERROR_COLUMN = "parse_error"


def parse_content_columns(frame: pd.DataFrame, parse: ContentParser) -> pd.DataFrame:
    """Add the keys ``parse(content)`` returns, for each succeeded row, as columns.

    Rows that did not succeed get empty values; a row whose content ``parse`` refuses
    (``ValueError``, ``TypeError``, ``KeyError``) keeps the reason in ``parse_error``.

    Args:
        frame: the results table (``status`` and ``content`` columns).
        parse: turns one answer's content into a mapping of column to value.

    Returns:
        ``frame`` with one column per key parsed, and ``parse_error``.

    Raises:
        ValueError: a parsed key clashes with a column of ``frame``.

    Example:
        >>> import json
        >>> frame = pd.DataFrame({"status": ["succeeded", "failed"],
        ...                       "content": ['{"mood": "happy"}', None]})
        >>> parse_content_columns(frame, json.loads)["mood"].tolist()
        ['happy', None]
    """
    parsed: list[Mapping[str, Any]] = []
    errors: list[str | None] = []
    for status, content in zip(frame["status"], frame["content"], strict=True):
        values: Mapping[str, Any] = {}
        error = None
        if status == "succeeded":
            try:
                values = parse(content)
                if not isinstance(values, Mapping):
                    raise TypeError(f"parser returned {type(values).__name__}, not a mapping")
            except (ValueError, TypeError, KeyError) as exc:
                values, error = {}, f"{type(exc).__name__}: {exc}"
        parsed.append(values)
        errors.append(error)
    keys = list(dict.fromkeys(key for values in parsed for key in values))
    clashes = sorted(set(keys) & {*frame.columns, PARSE_ERROR_COLUMN})
    if clashes:
        raise ValueError(f"parsed content keys clash with result columns: {clashes}")
    columns = {
        key: pd.Series([values.get(key) for values in parsed], index=frame.index, dtype=object)
        for key in keys
    }
    columns[PARSE_ERROR_COLUMN] = pd.Series(errors, index=frame.index, dtype=object)
    return pd.concat([frame, pd.DataFrame(columns)], axis=1)
