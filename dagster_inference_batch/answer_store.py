"""The answer store: successful Batch API answers kept for incremental runs (issue 11).

Each answer is stored under its request fingerprint (a hash of endpoint and canonical
body, computed by the caller and opaque here); a later run sends only the requests whose
fingerprint has no stored answer. Only successful answers are stored (2xx status, no
``error``), and entries never expire on their own (``lookup(max_age=...)`` ignores old
ones). When a fingerprint has several entries, the newest ``stored_at`` wins.

Layout: plain files on any fsspec URL (a local path, ``file://``, ``s3://``, ``gs://``,
``memory://``)::

    <root>/<namespace>/segments/segment-<utc time>-<uuid4>.parquet

The namespace separates providers (the caller passes a hash of the base URL, see
``namespace_for``), so answers from one provider, such as a local test server's synthetic
ones, are never returned for another. Each ``put`` writes one immutable Parquet segment
(columns ``fingerprint``, ``line`` (binary), ``batch_id``, ``stored_at``,
``input_tokens``, ``output_tokens``). A lookup reads only the ``fingerprint`` and
``stored_at`` columns of every segment (the index, cached per segment in the
``AnswerStore`` instance), then the other columns only of the segments holding the newest
wanted entries.

Concurrency: a segment is never rewritten or appended to, and its name (time and uuid4)
is unique across processes and machines, so writers never touch each other's files: no
locks, no read-modify-write, no lost entries. A segment is written under a temporary name
that readers ignore (``_tmp-<uuid4>.parquet`` in the same folder) and then moved to its
final name (an atomic rename on a local filesystem; on object stores the upload itself is
atomic), so readers never see a half-written one. A segment that still cannot be read
(truncated or corrupt, e.g. from a crashed writer on a filesystem without atomic renames)
is skipped with a warning naming it; its entries count as missing, so their requests are
sent again. A writer killed between write and move leaves a ``_tmp-`` file that readers
ignore.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ANSWER_STORE_ENV = "INFERENCE_BATCH_ANSWER_STORE"
"""Environment variable naming the answer store's URL (see ``default_store_url``)."""

_log = logging.getLogger(__name__)
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]+")
_SEGMENT_PREFIX = "segment-"
_SUFFIX = ".parquet"
_SCHEMA = pa.schema(
    [
        ("fingerprint", pa.string()),
        ("line", pa.binary()),
        ("batch_id", pa.string()),
        ("stored_at", pa.float64()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
    ]
)
_INDEX_COLUMNS = ["fingerprint", "stored_at"]
_UNREADABLE = (OSError, ValueError, TypeError, KeyError, pa.ArrowException)


def default_store_url() -> str:
    """The answer store's default URL.

    In order: the ``INFERENCE_BATCH_ANSWER_STORE`` environment variable;
    ``$DAGSTER_HOME/inference_batch/answers``;
    ``$XDG_CACHE_HOME/dagster-inference-batch/answers``;
    ``~/.cache/dagster-inference-batch/answers``. Empty variables count as unset.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {ANSWER_STORE_ENV: "s3://bucket/answers"}):
        ...     default_store_url()
        's3://bucket/answers'
        >>> with mock.patch.dict(os.environ, {"DAGSTER_HOME": "/opt/dagster"}):
        ...     _ = os.environ.pop(ANSWER_STORE_ENV, None)
        ...     default_store_url()
        '/opt/dagster/inference_batch/answers'
    """
    if url := os.environ.get(ANSWER_STORE_ENV):
        return url
    if dagster_home := os.environ.get("DAGSTER_HOME"):
        return os.path.join(dagster_home, "inference_batch", "answers")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(cache, "dagster-inference-batch", "answers")


def namespace_for(base_url: str) -> str:
    """A stable, filesystem-safe namespace for a provider's base URL.

    Args:
        base_url: The provider's base URL; a trailing slash makes no difference.

    Returns:
        ``"p-"`` and the first 16 hex digits of the URL's SHA-256.

    Example:
        >>> url = "https://api.example.com/v1"
        >>> namespace_for(url) == namespace_for(url + "/")
        True
        >>> namespace_for("http://127.0.0.1:8000/v1") == namespace_for(url)
        False
        >>> namespace_for(url).startswith("p-"), len(namespace_for(url))
        (True, 18)
    """
    return "p-" + sha256(base_url.rstrip("/").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoredAnswer:
    """One stored answer.

    Attributes:
        fingerprint: The request's fingerprint (opaque here).
        line: The provider's output line exactly as returned, without the newline.
        batch_id: The batch that produced it.
        stored_at: When it was stored (unix seconds).
        input_tokens: Prompt tokens, if known.
        output_tokens: Completion tokens, if known.

    Example:
        >>> line = b'{"custom_id": "a", "response": {"status_code": 200}, "error": null}'
        >>> answer = StoredAnswer("f1", line, "batch_1", stored_at=1700000000.0, input_tokens=3)
        >>> answer.output_tokens is None
        True
    """

    fingerprint: str
    line: bytes
    batch_id: str
    stored_at: float
    input_tokens: int | None = None
    output_tokens: int | None = None


class AnswerStore:
    """Successful answers under their request fingerprints, in one namespace of a store.

    Args:
        url: The store's root: a local path or any fsspec URL.
        namespace: The provider's namespace (``[A-Za-z0-9._-]+``, e.g. ``namespace_for``).
        storage_options: Passed to ``fsspec.core.url_to_fs`` (credentials, endpoints).

    Raises:
        ValueError: If ``namespace`` is not a safe name.

    Example:
        >>> store = AnswerStore("answers", namespace=namespace_for("https://api.example.com/v1"))
        >>> line = b'{"custom_id": "a", "response": {"status_code": 200}, "error": null}'
        >>> store.put([StoredAnswer("f1", line, "batch_1", stored_at=time.time())])
        1
        >>> found = store.lookup(["f1", "f2"])
        >>> list(found), found["f1"].line == line, len(store)
        (['f1'], True, 1)
    """

    def __init__(self, url: str, *, namespace: str, storage_options: dict | None = None) -> None:
        if not _NAMESPACE.fullmatch(namespace) or namespace in {".", ".."}:
            raise ValueError(
                f"AnswerStore namespace must match [A-Za-z0-9._-]+ (and not be '.' or '..'); "
                f"got {namespace!r}"
            )
        self.url = url
        self.namespace = namespace
        self._fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self._dir = posixpath.join(root.rstrip("/") or "/", namespace, "segments")
        self._index: dict[str, pa.Table] = {}

    def put(self, answers: Iterable[StoredAnswer], *, checked: bool = False) -> int:
        """Store ``answers`` as one new segment.

        Args:
            answers: Successful answers; all are checked before anything is written.
            checked: The caller parsed every line and ``answer_problem`` found nothing
                (``incremental.py`` does, reading the output files): skip parsing again.

        Returns:
            The number of entries written (0: nothing given, no segment written).

        Raises:
            ValueError: If a line is not a successful answer (invalid JSON, a
                ``response.status_code`` outside 2xx, a non-null ``error``) or holds a
                newline; nothing is written then.

        Example:
            >>> store = AnswerStore("answers", namespace="example")
            >>> store.put([])
            0
            >>> failed = b'{"custom_id": "a", "response": {"status_code": 500}, "error": null}'
            >>> store.put([StoredAnswer("f1", failed, "batch_1", stored_at=0.0)])
            Traceback (most recent call last):
            ...
            ValueError: answer for fingerprint 'f1' not stored: response.status_code 500 is not 2xx
        """
        entries = list(answers)
        if not entries:
            return 0
        for answer in entries if not checked else ():
            _check_successful(answer)
        # column by column: dataclasses.asdict per entry deep-copies every field (slow)
        table = pa.table(
            {name: [getattr(a, name) for a in entries] for name in _SCHEMA.names}, schema=_SCHEMA
        )
        self._fs.makedirs(self._dir, exist_ok=True)
        temporary = posixpath.join(self._dir, f"_tmp-{uuid.uuid4().hex}{_SUFFIX}")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        final = posixpath.join(self._dir, f"{_SEGMENT_PREFIX}{stamp}-{uuid.uuid4().hex}{_SUFFIX}")
        try:
            with self._fs.open(temporary, "wb") as file:
                pq.write_table(table, file, compression="zstd")
            self._fs.mv(temporary, final)
        except BaseException:
            if self._fs.exists(temporary):
                self._fs.rm(temporary)
            raise
        return len(entries)

    def lookup(
        self, fingerprints: Iterable[str], *, max_age: float | None = None
    ) -> dict[str, StoredAnswer]:
        """The newest stored answer of each fingerprint that has one.

        Args:
            fingerprints: The fingerprints wanted.
            max_age: If given, entries stored more than this many seconds ago are ignored.

        Returns:
            Fingerprint to answer, for the fingerprints found (``{}`` for an empty or
            missing store; nothing is created on read).

        Example:
            >>> AnswerStore("nowhere", namespace="example").lookup(["f1"])
            {}
        """
        wanted = pa.array(set(fingerprints), pa.string())
        if not len(wanted):
            return {}
        oldest = None if max_age is None else time.time() - max_age
        newest: dict[str, tuple[float, str, int]] = {}
        for segment, index in self._indexes():
            mask = pc.is_in(index["fingerprint"], value_set=wanted)
            if oldest is not None:
                mask = pc.and_(mask, pc.greater_equal(index["stored_at"], oldest))
            rows = pc.indices_nonzero(mask)
            found = index.take(rows)
            for fingerprint, stored_at, row in zip(
                found["fingerprint"].to_pylist(),
                found["stored_at"].to_pylist(),
                rows.to_pylist(),
                strict=True,
            ):
                candidate = (stored_at, segment, row)
                if fingerprint not in newest or candidate > newest[fingerprint]:
                    newest[fingerprint] = candidate
        by_segment: dict[str, dict[int, str]] = {}
        for fingerprint, (_, segment, row) in newest.items():
            by_segment.setdefault(segment, {})[row] = fingerprint
        answers: dict[str, StoredAnswer] = {}
        for segment, wanted_rows in by_segment.items():
            table = self._read(segment, ["line", "batch_id", "input_tokens", "output_tokens"])
            if table is None:
                continue
            taken = table.take(list(wanted_rows)).to_pylist()
            for fingerprint, values in zip(wanted_rows.values(), taken, strict=True):
                answers[fingerprint] = StoredAnswer(
                    fingerprint=fingerprint, stored_at=newest[fingerprint][0], **values
                )
        return answers

    def __len__(self) -> int:
        """The number of distinct fingerprints stored (any age).

        Example:
            >>> len(AnswerStore("nowhere", namespace="example"))
            0
        """
        indexes = [index["fingerprint"] for _, index in self._indexes()]
        if not indexes:
            return 0
        return pc.count_distinct(pa.chunked_array(indexes, pa.string())).as_py()

    def _indexes(self) -> list[tuple[str, pa.Table]]:
        """The ``fingerprint``/``stored_at`` columns of every readable segment, by name."""
        self._fs.invalidate_cache(self._dir)
        try:
            listed = self._fs.ls(self._dir, detail=False)
        except FileNotFoundError:
            return []
        segments = sorted(
            path
            for path in listed
            if posixpath.basename(path).startswith(_SEGMENT_PREFIX) and path.endswith(_SUFFIX)
        )
        indexes = []
        for segment in segments:
            if segment not in self._index:
                index = self._read(segment, _INDEX_COLUMNS)
                if index is None:
                    continue
                self._index[segment] = index.combine_chunks()
            indexes.append((segment, self._index[segment]))
        return indexes

    def _read(self, segment: str, columns: list[str]) -> pa.Table | None:
        """``columns`` of ``segment``, or None (with a warning) if it cannot be read."""
        try:
            with self._fs.open(segment, "rb") as file:
                table = pq.ParquetFile(file).read(columns=columns).select(columns)
            return table.cast(pa.schema([_SCHEMA.field(name) for name in columns]))
        except _UNREADABLE as error:
            _log.warning("Skipping unreadable answer store segment %s: %s", segment, error)
            return None


def answer_problem(parsed: Any, line: bytes) -> str | None:
    """Why an output line (``parsed`` from ``line``) is not a successful answer, or None.

    Args:
        parsed: The line as parsed JSON.
        line: The line's bytes.

    Returns:
        The rule it breaks, in words; None for a storable answer.

    Example:
        >>> line = b'{"custom_id": "a", "response": {"status_code": 200}, "error": null}'
        >>> answer_problem(orjson.loads(line), line) is None
        True
        >>> answer_problem({"response": {"status_code": 429}, "error": None}, b"")
        'response.status_code 429 is not 2xx'
    """
    response = parsed.get("response") if isinstance(parsed, dict) else None
    status = response.get("status_code") if isinstance(response, dict) else None
    if b"\n" in line:
        return "the line holds a newline"
    return status_problem(status, parsed.get("error") if isinstance(parsed, dict) else None)


def status_problem(status: Any, error: Any) -> str | None:
    """Why a line whose ``response.status_code`` is ``status`` and whose ``error`` is
    ``error`` is not a successful answer, or None (the rule of :func:`answer_problem`).

    Example:
        >>> status_problem(200, None) is None, status_problem(200, {"code": "x"})
        (True, "error is {'code': 'x'}")
    """
    if not isinstance(status, int) or not 200 <= status < 300:
        return f"response.status_code {status} is not 2xx"
    if error is not None:
        return f"error is {error!r}"
    return None


def _check_successful(answer: StoredAnswer) -> None:
    """Raise ValueError unless ``answer.line`` is one successful answer line."""
    try:
        problem = answer_problem(orjson.loads(answer.line), answer.line)
    except orjson.JSONDecodeError as error:
        problem = f"the line is not JSON ({error})"
    if problem is not None:
        raise ValueError(f"answer for fingerprint {answer.fingerprint!r} not stored: {problem}")
