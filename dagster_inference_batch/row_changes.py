"""How the request lines built from the upstream now differ from those a job submitted.

The results step joins answers to the upstream's rows by custom_id. If the upstream was
materialized again since the submission, its rows may no longer be the ones the answers
belong to; ``compare_lines`` says which ids were added, removed or changed, so the step
can refuse the join and name them. This module knows nothing about Dagster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_EXAMPLES = 5  # ids named per kind of change


@dataclass
class _Kind:
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, custom_id: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(custom_id)

    def describe(self, verb: str) -> str:
        if not self.count:
            return f"0 {verb}"
        more = ", ..." if self.count > len(self.examples) else ""
        return f"{self.count} {verb} ({', '.join(self.examples)}{more})"


@dataclass
class RowChanges:
    """Ids added to, removed from and changed in the request lines since submission,
    each counted with up to ``MAX_EXAMPLES`` examples (in file order)."""

    added: _Kind = field(default_factory=_Kind)
    removed: _Kind = field(default_factory=_Kind)
    changed: _Kind = field(default_factory=_Kind)

    def __bool__(self) -> bool:
        return bool(self.added.count or self.removed.count or self.changed.count)

    def describe(self) -> str:
        """The changes in words, e.g. ``"1 added (r4), 0 removed, 2 changed (r1, r2)"``.

        Returns:
            The description.
        """
        return ", ".join(
            (self.added.describe("added"), self.removed.describe("removed"),
             self.changed.describe("changed"))
        )  # fmt: skip

    def as_metadata(self) -> dict[str, dict[str, object]]:
        """Counts and example ids per kind, for a JSON metadata value.

        Returns:
            ``{"added": {"count", "examples"}, "removed": ..., "changed": ...}``.

        Example:
            >>> compare_lines([("a", b"1")], ["a"], [b"2"]).as_metadata()["changed"]
            {'count': 1, 'examples': ['a']}
        """
        return {
            kind: {"count": value.count, "examples": value.examples}
            for kind, value in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
        }


def compare_lines(
    submitted: Iterable[tuple[str, bytes]], custom_ids: Sequence[str], lines: Sequence[bytes]
) -> RowChanges:
    """What changed from the submitted request lines to the current ones.

    Lines are compared byte for byte without their line endings; the order of the lines
    does not count.

    Args:
        submitted: the (custom_id, line) pairs the job submitted.
        custom_ids: the current ids; ``custom_ids[i]`` is the id of ``lines[i]``.
        lines: the current request lines.

    Returns:
        The ids added, removed and changed (true when anything changed).

    Example:
        >>> changes = compare_lines([("a", b"1"), ("b", b"2")], ["b", "c"], [b"3", b"4"])
        >>> changes.describe()
        '1 added (c), 1 removed (a), 1 changed (b)'
        >>> bool(compare_lines([("a", b"1")], ["a"], [b"1\\n"]))
        False
    """
    current = dict(zip(custom_ids, lines, strict=True))
    changes = RowChanges()
    seen: set[str] = set()
    for custom_id, line in submitted:
        seen.add(custom_id)
        now = current.get(custom_id)
        if now is None:
            changes.removed.add(custom_id)
        elif now.rstrip(b"\r\n") != line.rstrip(b"\r\n"):
            changes.changed.add(custom_id)
    for custom_id in custom_ids:
        if custom_id not in seen:
            changes.added.add(custom_id)
    return changes
