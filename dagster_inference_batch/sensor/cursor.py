"""``SensorCursor``: what the sensor remembers between ticks.

The cursor only remembers what the event log cannot answer cheaply: the progress and
the on-time verdict last reported, the partitions a tick did not reach (they go first next time), the
materializations whose results run was already requested, given up on, or failed
validation (those cost no runs query), and the orphaned partitions already handled.
Losing it costs a repeated observation, never a duplicate run nor a second cancel, so
a cursor this version cannot read is replaced by an empty one (see ``SensorCursor.load``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field

import orjson

from ..batch_record import (
    FORMAT_VERSION,
    StoredStateError,
    read_stored_fields,
    stored_format_version,
)

_CURSOR_ENTRIES: dict[str, tuple[type, ...]] = {
    "progress": (str,),
    "progress_at": (int, float),
    "requested": (int,),
    "run_keys": (str,),
    "gave_up": (int,),
    "failed": (int,),
    "orphaned": (int,),
    "resume": (str,),
    "on_time": (str,),
}


@dataclass
class SensorCursor:
    """What the sensor remembers between ticks, per slot (the partition key, or ``""``
    for an unpartitioned pipeline); the batch storage ids name the materialization the
    entry is about, so a newer one starts afresh.

    Example:
        >>> cursor = SensorCursor(requested={"a": 42}, run_keys={"a": "llm:a:42:completed"})
        >>> SensorCursor.load(cursor.dump()) == cursor
        True
    """

    progress: dict[str, str] = field(default_factory=dict)  # the progress last recorded
    progress_at: dict[str, float] = field(default_factory=dict)  # when (unix seconds)
    requested: dict[str, int] = field(default_factory=dict)  # results run requested
    run_keys: dict[str, str] = field(default_factory=dict)  # ... under this first run key
    gave_up: dict[str, int] = field(default_factory=dict)  # results runs given up on
    failed: dict[str, int] = field(default_factory=dict)  # failed validation, run ended
    orphaned: dict[str, int] = field(default_factory=dict)  # partition gone, handled
    resume: list[str] = field(default_factory=list)  # not reached: first next tick
    on_time: dict[str, str] = field(default_factory=dict)  # "<storage id>:<verdict>" reported

    @classmethod
    def load(cls, text: str | None) -> SensorCursor:
        """The cursor as ``dump`` wrote it, in this version or an earlier one.

        Args:
            text: The tick context's cursor, or None before the first tick.

        Returns:
            The cursor; unknown fields are ignored, missing ones start empty.

        Raises:
            StoredStateError: The text is not JSON, has the wrong shape or a newer
                ``format_version``.
        """
        if not text:
            return cls()
        what = "the sensor's cursor"
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise StoredStateError(f"{what} is not valid JSON: {exc}") from exc
        stored_format_version(data, what)
        values = read_stored_fields(cls, data, what)
        for name, kinds in _CURSOR_ENTRIES.items():
            entries = values.get(name, ())
            entries = entries.values() if isinstance(entries, dict) else entries
            if not all(isinstance(e, kinds) and not isinstance(e, bool) for e in entries):
                kind = " or ".join(k.__name__ for k in kinds)
                raise StoredStateError(f"{what}: {name!r} holds an entry that is not {kind}")
        return cls(**values)

    def dump(self) -> str:
        """The cursor as JSON, with this version's ``format_version``.

        Returns:
            The text to hand back as the tick's cursor.
        """
        return orjson.dumps({"format_version": FORMAT_VERSION, **asdict(self)}).decode()

    def kept(self, live: Collection[str], resume: Sequence[str]) -> SensorCursor:
        """A copy holding only the slots still in flight, resuming ``resume`` first.

        Args:
            live: The slots whose jobs are still uncollected.
            resume: The slots this tick did not reach.

        Returns:
            A new cursor.
        """
        copy = SensorCursor(resume=list(resume))
        for name in _CURSOR_ENTRIES:
            if name != "resume":
                kept = {s: v for s, v in getattr(self, name).items() if s in live}
                setattr(copy, name, kept)
        return copy
