"""Results beyond memory: the join streamed into a Parquet dataset, a chunk at a time.

The same rows as ``collect_results`` (one per requested id, the same columns and
values), written to ``<location>/part-0.parquet`` in row groups of a few thousand rows
through fsspec (a local path, ``s3://``, ``gs://``, ...). Two passes over the files: the
first keeps only each line's id, status and attempt to pick every id's best line, the
second parses again and writes the winning lines, in file order, with their input
columns; ids that no line answers come last. Memory follows the ids, never the answers:
the requested ids are found by 64-bit hash (``id_index``), confirmed by string, and pass 1
keeps 8 bytes per line.
The summary the metadata and checks need is added up while writing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .id_index import IdIndex
from .result_bodies import EMBEDDING_COLUMN
from .result_join import (
    _table,
    input_columns,
    mark_unanswered,
    to_frame,
)
from .results import CHUNK_SCHEMA, ResultFile, parse_chunks
from .results_tally import ResultsTally

DATA_FILE = "part-0.parquet"
MISSING_ROWS_PER_GROUP = 65_536
Owners = Callable[[set[str]], Mapping[str, tuple[str, str, int]]]


@dataclass(frozen=True)
class ResultsDataset:
    """Results written as a Parquet dataset: where, and the summary written with them.

    A small picklable handle (the value of ``<name>_results`` with
    ``results_format="parquet_dataset"``): read it lazily with ``dataset()``, or give
    ``url`` to pandas, Polars, DuckDB or Spark. Credentials are never part of it: the
    reader's fsspec configuration (environment, instance role) supplies them.

    Args:
        url: The dataset's folder, a local path or an fsspec URL (``s3://bucket/...``).
        summary: Counts, tokens, schema and first rows, as computed while writing.

    Example:
        >>> import tempfile
        >>> handle = write_results_dataset([], ["a"], tempfile.mkdtemp())
        >>> handle.dataset().to_table(columns=["custom_id", "status"]).to_pylist()
        [{'custom_id': 'a', 'status': 'missing'}]
    """

    url: str
    summary: ResultsTally

    def dataset(self, filesystem: fsspec.AbstractFileSystem | None = None) -> ds.Dataset:
        """The rows as a lazy ``pyarrow.dataset.Dataset`` (nothing read yet).

        Args:
            filesystem: The fsspec filesystem to read with (default: from ``url``).
        """
        fs, path = _filesystem(self.url, filesystem)
        return ds.dataset(f"{path}/{DATA_FILE}", filesystem=fs, format="parquet")

    def to_pandas(
        self,
        columns: Sequence[str] | None = None,
        filesystem: fsspec.AbstractFileSystem | None = None,
    ) -> pd.DataFrame:
        """Read the rows (or ``columns``) into memory, with the in-memory mode's dtypes.

        Args:
            columns: The columns to read (default: all).
            filesystem: The fsspec filesystem to read with (default: from ``url``).
        """
        return to_frame(self.dataset(filesystem).to_table(columns=columns))


def _filesystem(
    url: str, filesystem: fsspec.AbstractFileSystem | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    if filesystem is not None:
        return filesystem, filesystem._strip_protocol(url)
    return fsspec.core.url_to_fs(url)


def _winners(files: Sequence[ResultFile], index: IdIndex) -> tuple[np.ndarray, np.ndarray, bool]:
    """First pass: for each line, the wanted position it answers (-1: none), for each
    wanted id whether a line answers it, and whether any line holds embeddings.

    Each line gets a rank, ``succeeded << 62 | attempt << 32 | line``, so an id's best
    line (a success, else the latest attempt, else the later line; as
    ``merge_attempts``) is the one of highest rank: one ``maximum.at`` per chunk into
    one slot per wanted id, no sort, and nothing kept per line but that slot.
    """
    wanted = index.size
    best = np.full(wanted + 1, -1, dtype=np.int64)  # unwanted lines go to the extra slot
    has_vectors, lines = False, 0
    for chunk in parse_chunks(files):
        succeeded = pc.fill_null(pc.equal(chunk["status"], "succeeded"), False).to_numpy(
            zero_copy_only=False
        )
        attempt = pc.fill_null(chunk["attempt"], 0).to_numpy().astype(np.int64)
        line = np.arange(lines, lines + chunk.num_rows, dtype=np.int64)
        rank = (succeeded.astype(np.int64) << 62) | (attempt << 32) | line
        place = index.positions(chunk["custom_id"])
        place[place < 0] = wanted
        np.maximum.at(best, place, rank)
        has_vectors = has_vectors or chunk[EMBEDDING_COLUMN].null_count < chunk.num_rows
        lines += chunk.num_rows
    answered = best[:-1] >= 0
    target = np.full(lines, -1, dtype=np.int64)
    target[best[:-1][answered] & 0xFFFFFFFF] = np.flatnonzero(answered)
    return target, answered, has_vectors


class _Writer:
    """Writes frames of result rows as row groups of one Parquet file, summing them up."""

    def __init__(
        self,
        url: str,
        filesystem: fsspec.AbstractFileSystem | None,
        extra: pd.DataFrame | None,
        from_store: frozenset[str],
    ) -> None:
        fs, path = _filesystem(url, filesystem)
        fs.makedirs(path, exist_ok=True)
        self._fs, self._path = fs, f"{path}/{DATA_FILE}"
        self._file = fs.open(self._path, "wb")
        self._writer: pq.ParquetWriter | None = None
        self._extra = extra
        self._input_schema = (
            pa.Schema.from_pandas(extra, preserve_index=False) if extra is not None else None
        )
        self._from_store = from_store
        self.summary = ResultsTally()

    def write(self, frame: pd.DataFrame, positions: np.ndarray) -> None:
        """Write joined rows; ``positions`` are their places among the requested ids."""
        frame.insert(
            frame.columns.get_loc("status") + 1,
            "source",
            np.where(frame["custom_id"].isin(self._from_store), "store", "batch"),
        )
        if self._extra is not None:
            extra = self._extra.take(positions).reset_index(drop=True)
            frame = pd.concat([frame, extra], axis=1)
        table = _table(frame)
        if self._writer is None:
            schema = table.schema
            if self._input_schema is not None:  # input types from every row, not one chunk
                for field in self._input_schema:
                    schema = schema.set(schema.get_field_index(field.name), field)
            self._writer = pq.ParquetWriter(self._file, schema)
        self._writer.write_table(table.cast(self._writer.schema))
        self.summary = self.summary.plus(frame)

    def close(self) -> None:
        """Finish the file (a dataset without rows still gets its schema)."""
        if self._writer is not None:
            self._writer.close()
        self._file.close()

    def abort(self) -> None:
        """Close and delete the unfinished file: a failed write leaves no dataset that
        looks complete (on object storage, closing uploads what was written)."""
        try:
            self.close()
        finally:
            if self._fs.exists(self._path):
                self._fs.rm(self._path)


def write_results_dataset(
    files: Sequence[ResultFile],
    custom_ids: Sequence[str] | pa.Array,
    location: str,
    inputs: pd.DataFrame | None = None,
    id_column: str = "custom_id",
    *,
    from_store: Iterable[str] = (),
    owners: Owners | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
) -> ResultsDataset:
    """Join the files to the requested ids into a Parquet dataset at ``location``.

    The rows and columns of ``collect_results`` (plus ``source``, as
    ``InferenceBatchClient.results`` adds it), in another order: answered ids in the
    order their winning lines come in the files, then the ids no line answers. A write
    that fails part way (an ``owners`` lookup, the storage) deletes the data file it
    began, so ``location`` never holds a dataset that lacks rows.

    Args:
        files: The downloaded output and error files of every attempt.
        custom_ids: The requested ids (each once); an Arrow array keeps millions of them
            without a Python object each.
        location: The dataset's folder: a local path or an fsspec URL; its data file is
            replaced.
        inputs: Rows whose columns are appended, matched on ``inputs[id_column]``.
        id_column: The column of ``inputs`` holding the ids.
        from_store: Ids answered from the answer store (``source`` ``store``).
        owners: For the ids no line answers, the (status, batch_id, attempt) of an
            expired or cancelled batch that held them (see ``mark_unanswered``).
        filesystem: The fsspec filesystem to write with (default: from ``location``).

    Returns:
        The handle: ``location`` and the summary of what was written.

    Raises:
        ValueError: An unreadable line, a repeated requested id, or ``inputs``
            repeating an id.

    Example:
        >>> import tempfile
        >>> handle = write_results_dataset([], ["a", "b"], tempfile.mkdtemp())
        >>> handle.summary.rows, handle.summary.statuses["missing"]
        (2, 2)
    """
    if isinstance(custom_ids, pa.Array):
        ids = custom_ids.cast(pa.large_string())
    else:
        ids = pa.array(map(str, custom_ids), pa.large_string(), size=len(custom_ids))
    index = IdIndex(ids)
    if index.repeated is not None:
        raise ValueError(
            f"a results dataset holds each requested id once; they repeat {index.repeated!r}"
        )
    target, answered, has_vectors = _winners(files, index)
    del index
    columns = [f.name for f in CHUNK_SCHEMA if has_vectors or f.name != EMBEDDING_COLUMN]
    extra = input_columns(inputs, ids, columns, id_column) if inputs is not None else None
    writer = _Writer(location, filesystem, extra, frozenset(from_store))
    try:
        start = 0
        for chunk in parse_chunks(files):
            places = target[start : start + chunk.num_rows]
            start += chunk.num_rows
            keep = np.flatnonzero(places >= 0)
            if keep.size:
                rows = chunk.take(keep).select(columns)
                writer.write(to_frame(rows), places[keep])
        unanswered = np.flatnonzero(~answered)
        for first in range(0, unanswered.size, MISSING_ROWS_PER_GROUP):
            positions = unanswered[first : first + MISSING_ROWS_PER_GROUP]
            writer.write(_missing_rows(ids.take(positions), columns, owners), positions)
        if writer.summary.rows == 0:
            writer.write(_missing_rows(ids[:0], columns, owners), unanswered)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return ResultsDataset(url=location, summary=writer.summary)


def _missing_rows(ids: pa.Array, columns: list[str], owners: Owners | None) -> pd.DataFrame:
    """Rows of ids no line answers: ``missing``, or the status of the ended batch that
    held them."""
    empty = {f.name: pa.nulls(len(ids), f.type) for f in CHUNK_SCHEMA}
    empty["custom_id"] = ids
    empty["status"] = pa.repeat(pa.scalar("missing", pa.large_string()), len(ids))
    table = pa.table(empty, schema=CHUNK_SCHEMA).select(columns)
    frame = to_frame(table)
    if owners is not None and len(frame):
        frame = mark_unanswered(frame, owners(set(frame["custom_id"])))
    return frame
