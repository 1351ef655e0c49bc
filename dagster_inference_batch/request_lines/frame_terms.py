"""Problems with request lines built from a DataFrame, said in the DataFrame's terms.

The checks name a line by its 1-based number and ``custom_id``. A user who passed a
DataFrame knows rows by their index label and columns by their names, so
:func:`in_frame_terms` names the row (index label), the id column with the id, and the
prompt or body column: ``line 3 (custom_id 't2'): duplicate custom_id (first on line 1)``
becomes ``row index 2 (ticket_id 't2', custom_id 't2'): duplicate ticket_id (first at row
index 0)``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidBatchInput

_LINE = re.compile(
    r"^line (?P<line>\d+)"
    r"(?: \(custom_id (?P<id>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\))?: (?P<rule>.*)$",
    re.S,
)
_FIRST_ON_LINE = re.compile(r"\(first on line (\d+)\)")
_ID_RULES = ("duplicate custom_id", "missing custom_id", "empty custom_id", "custom_id must")


@dataclass(frozen=True)
class FrameTerms:
    """How to name a DataFrame's rows and columns in problems.

    Args:
        labels: The index label of each row, in line order.
        id_column: The column holding the ids.
        content_column: The column holding each row's prompt or body, if any.
        content: What that column holds: ``"prompt"`` or ``"body"``.

    Example:
        >>> terms = FrameTerms(labels=[0, 1], id_column="ticket_id", content_column="text")
        >>> terms.row(2, "'t2'")
        "row index 1 (ticket_id 't2', custom_id 't2')"
    """

    labels: Sequence[Hashable]
    id_column: str
    content_column: str | None = None
    content: str = "prompt"

    def row(self, line: int, id_repr: str | None) -> str:
        """A line named as its DataFrame row, with the id column and the custom_id."""
        label = self.labels[line - 1] if 0 < line <= len(self.labels) else None
        if isinstance(label, np.generic):  # numpy's repr would show np.int64(12)
            label = label.item()
        head = f"row index {label!r}" if label is not None else f"line {line}"
        if id_repr is None:
            return head
        if self.id_column == "custom_id":
            return f"{head} (custom_id {id_repr})"
        return f"{head} ({self.id_column} {id_repr}, custom_id {id_repr})"

    def rule(self, rule: str) -> str:
        """A rule broken, in the column's terms."""
        if rule.startswith(_ID_RULES):
            rule = rule.replace("custom_id", self.id_column, 1)
            return _FIRST_ON_LINE.sub(lambda m: f"(first at {self.row(int(m[1]), None)})", rule)
        column = self.content_column
        for word in ("empty prompt", "prompt must") if self.content == "prompt" else ("body",):
            if column is not None and rule.startswith(word):
                return rule.replace(self.content, f"{self.content} in column {column!r}", 1)
        return rule


def in_frame_terms(error: InvalidBatchInput, terms: FrameTerms) -> InvalidBatchInput:
    """The same problems, naming the DataFrame's rows and columns.

    Args:
        error: Problems as the line checks reported them.
        terms: The DataFrame's index labels and columns.

    Returns:
        An ``InvalidBatchInput`` with the same count, each line-naming problem renamed;
        problems of the whole input (a missing column) are kept as they are.

    Example:
        >>> error = InvalidBatchInput([
        ...     "line 2 (custom_id 't1'): duplicate custom_id (first on line 1)",
        ...     "line 3 (custom_id 't3'): empty prompt (missing value)"])
        >>> terms = FrameTerms(labels=["a", "b", "c"], id_column="ticket_id",
        ...                    content_column="text")
        >>> for problem in in_frame_terms(error, terms).problems:
        ...     print(problem)
        row index 'b' (ticket_id 't1', custom_id 't1'): duplicate ticket_id (first at row index 'a')
        row index 'c' (ticket_id 't3', custom_id 't3'): empty prompt in column 'text' (missing value)
    """
    renamed = []
    for problem in error.problems:
        match = _LINE.match(problem)
        if match is None:
            renamed.append(problem)
            continue
        where = terms.row(int(match["line"]), match["id"])
        renamed.append(f"{where}: {terms.rule(match['rule'])}")
    return InvalidBatchInput(renamed, total=error.total)
