"""Parsed results merged and joined: one row per request, in the requests' order.

A request answered in several attempts keeps its best row (a success, else the latest
attempt); a request never answered gets status ``missing``; the rows the requests were
built from can be appended. Also which requests are left to run again, and the status an
unanswered request of an ended batch takes. Works on Arrow tables and pandas frames;
reading the files is ``results.py``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .result_bodies import EMBEDDING_COLUMN, embedding_array, embedding_series

RETRYABLE_STATUS_CODES = frozenset({408, 409, 429})
RETRYABLE_ERROR_CODES = frozenset(
    {"rate_limit_exceeded", "server_error", "internal_error", "timeout", "service_unavailable"}
)
# Text columns with a handful of distinct values, reordered by their dictionary codes.
_FEW_VALUES = frozenset({"status", "finish_reason", "model", "batch_id"})


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow to pandas: text as pandas' ``str`` dtype, integers as nullable ``Int64``,
    embeddings as float32 arrays (see ``result_bodies``)."""
    position = table.schema.get_field_index(EMBEDDING_COLUMN)
    if position >= 0:
        vectors = embedding_series(table[EMBEDDING_COLUMN])
        table = table.remove_column(position)
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    if position >= 0:
        frame.insert(position, EMBEDDING_COLUMN, vectors.to_numpy())
    return frame


def _table(frame: pd.DataFrame) -> pa.Table:
    """Pandas to Arrow; the ``embedding`` column goes as lists of vectors."""
    if EMBEDDING_COLUMN not in frame.columns:
        return pa.Table.from_pandas(frame, preserve_index=False)
    position = frame.columns.get_loc(EMBEDDING_COLUMN)
    table = pa.Table.from_pandas(frame.drop(columns=[EMBEDDING_COLUMN]), preserve_index=False)
    vectors = embedding_array(frame[EMBEDDING_COLUMN].tolist())
    return table.add_column(position, EMBEDDING_COLUMN, vectors)


def _best_first(table: pa.Table) -> np.ndarray:
    """Row positions ordered so that each custom_id's best row comes first: a success,
    else an answer that did not validate (``invalid_output``), else the latest attempt,
    else the later row."""
    succeeded = pc.fill_null(pc.equal(table["status"], "succeeded"), False).to_numpy()
    invalid = pc.fill_null(pc.equal(table["status"], "invalid_output"), False).to_numpy()
    rank = 2 * succeeded.astype(np.int8) + invalid.astype(np.int8)
    attempt = pc.fill_null(table["attempt"], 0).to_numpy()
    return np.lexsort((-np.arange(table.num_rows), -attempt, -rank))


def _lookup(keys: Any, wanted: pa.Array) -> pa.Array:
    """For each wanted id, the position of its first occurrence in ``keys`` (or null)."""
    value_set = pa.chunked_array(keys).combine_chunks() if not isinstance(keys, pa.Array) else keys
    return pc.index_in(wanted, value_set=value_set.cast(pa.large_string()))


def _winner_rows(table: pa.Table, wanted: pa.Array) -> pa.Array:
    """For each wanted id, the position of its best row (null when it has none)."""
    order = _best_first(table)
    return pa.array(order).take(_lookup(table["custom_id"].take(order), wanted))


def _take_few(column: pa.ChunkedArray, rows: pa.Array) -> pa.Array:
    """``column.take(rows)`` for a text column of few distinct values (a status, a model):
    the small codes are reordered, not the strings (about 3x faster for a million rows)."""
    taken = column.combine_chunks().dictionary_encode().take(rows)
    return taken.dictionary.take(taken.indices)


def id_array(wanted: Sequence[str] | pa.Array) -> pa.Array:
    """The requested ids as one Arrow ``large_string`` array (not copied when they
    already are one).

    Example:
        >>> id_array(["a", "b"]).type
        DataType(large_string)
    """
    if isinstance(wanted, pa.Array):
        return wanted if wanted.type == pa.large_string() else wanted.cast(pa.large_string())
    return pa.array(list(wanted), pa.large_string())


def join_table(table: pa.Table, wanted: list[str] | pa.Array) -> pa.Table:
    """One row per wanted id, in order; status ``missing`` where there is no row."""
    ids = id_array(wanted)
    rows = _winner_rows(table, ids)

    def take(field: pa.Field) -> pa.Array | pa.ChunkedArray:
        column = table[field.name]
        if field.name == "custom_id":
            return ids
        if field.name in _FEW_VALUES and pa.types.is_large_string(field.type):
            return _take_few(column, rows)
        return column.take(rows)

    # Arrow's take runs on one thread and mostly waits on memory: the columns are taken
    # side by side (as many at once as Arrow's CPU count), the largest first
    fields = sorted(table.schema, key=lambda field: -table[field.name].nbytes)
    with ThreadPoolExecutor(max(1, pa.cpu_count())) as pool:
        taken = dict(zip([f.name for f in fields], pool.map(take, fields), strict=True))
    columns = [taken[name] for name in table.column_names]
    status = table.schema.get_field_index("status")
    columns[status] = pc.fill_null(columns[status].cast(pa.large_string()), "missing")
    joined = pa.Table.from_arrays(columns, names=table.column_names)
    return joined.replace_schema_metadata(table.schema.metadata)


def with_inputs(
    result: pd.DataFrame,
    wanted: list[str] | pa.Array,
    inputs: pd.DataFrame | None,
    id_column: str,
) -> pd.DataFrame:
    """Append the input columns, row for row (``_input`` suffix on clashing names)."""
    if inputs is None:
        return result
    extra = input_columns(inputs, wanted, list(result.columns), id_column)
    return pd.concat([result, extra], axis=1)


def input_columns(
    inputs: pd.DataFrame, wanted: list[str] | pa.Array, result_columns: list[str], id_column: str
) -> pd.DataFrame:
    """The rows of ``inputs`` in ``wanted`` order (empty where an id has none), without the
    id column when it is ``custom_id``, names in ``result_columns`` suffixed ``_input``.

    Raises:
        ValueError: ``inputs`` repeats an id it must be looked up by (its ids are not
            ``wanted`` in order).
    """
    column = inputs[id_column]
    if not pd.api.types.is_string_dtype(column):
        column = column.astype(str)
    keys = pa.array(column, pa.large_string())
    extra = inputs.drop(columns=["custom_id"]) if id_column == "custom_id" else inputs
    extra = extra.rename(columns={c: f"{c}_input" for c in extra.columns if c in result_columns})
    extra = extra.reset_index(drop=True)
    ids = id_array(wanted)
    if not keys.equals(ids):  # (the same ids in the same order: row for row, no lookup)
        raise_if_repeated(keys, f"inputs column {id_column!r} repeats the id")
        rows = _lookup(keys, ids)
        extra = extra.reindex(rows.fill_null(-1).to_numpy()).reset_index(drop=True)
    return extra


def raise_if_repeated(ids: pa.Array, message: str) -> None:
    """Raise ``ValueError(f"{message} {id!r}")`` for the first id that ``ids`` repeats
    (each id's first position, looked up in one Arrow hash: no Python set of millions of
    strings, and less memory than a distinct count).

    Example:
        >>> raise_if_repeated(pa.array(["a", "b", "a"]), "repeats")
        Traceback (most recent call last):
        ...
        ValueError: repeats 'a'
    """
    first = pc.index_in(ids, value_set=ids).fill_null(-1).to_numpy()
    repeated = np.flatnonzero(first != np.arange(len(ids)))
    if repeated.size:
        raise ValueError(f"{message} {ids[int(repeated[0])].as_py()!r}")


def merge_attempts(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ``custom_id``: a success beats anything, otherwise the latest attempt.

    Ties (the same id twice in one attempt) go to the later row. Rows keep the order in
    which they were parsed.

    Args:
        frame: Parsed rows with at least ``custom_id``, ``status`` and ``attempt``.

    Returns:
        The winning row of each ``custom_id``.

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["a", "a"], "status": ["expired", "succeeded"],
        ...                      "attempt": [1, 2]})
        >>> merge_attempts(rows).status.tolist()
        ['succeeded']
    """
    if frame["custom_id"].is_unique:
        return frame
    table = _table(frame)
    rows = _winner_rows(table, pc.unique(table["custom_id"]).cast(pa.large_string()))
    return frame.take(np.sort(rows.to_numpy())).reset_index(drop=True)


def join_results(
    frame: pd.DataFrame,
    custom_ids: Sequence[str],
    inputs: pd.DataFrame | None = None,
    id_column: str = "custom_id",
) -> pd.DataFrame:
    """Exactly one row per requested ``custom_id``, in that order.

    Attempts are merged as in :func:`merge_attempts`. Ids never answered get status
    ``missing``; ids not requested are dropped. With ``inputs`` their columns are
    appended, matched on ``inputs[id_column]`` cast to str (the id column itself is not
    repeated when it is ``custom_id``; a column named like a result column gets the
    suffix ``_input``).

    Args:
        frame: Parsed rows (``results.parse_result_files``).
        custom_ids: The requested ids; one row each, in this order.
        inputs: Rows whose columns are appended.
        id_column: The column of ``inputs`` holding the ids.

    Returns:
        One row per requested id.

    Raises:
        ValueError: ``inputs`` repeats an id.

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["b", "x"], "status": ["succeeded"] * 2,
        ...                      "attempt": [1, 1]})
        >>> join_results(rows, ["a", "b"]).status.tolist()
        ['missing', 'succeeded']
    """
    wanted = list(custom_ids)
    return with_inputs(to_frame(join_table(_table(frame), wanted)), wanted, inputs, id_column)


def leftover_custom_ids(
    frame: pd.DataFrame,
    custom_ids: Sequence[str],
    include_failed: bool = False,
    include_invalid: bool = False,
) -> list[str]:
    """Requested ids still to run: merged status expired, cancelled or missing.

    With ``include_failed`` retryable failures join them: status code 408, 409, 429 or
    5xx, or an error code such as ``rate_limit_exceeded`` or ``server_error``. With
    ``include_invalid`` so do answers that did not validate (``invalid_output``).

    Args:
        frame: Parsed rows of every attempt so far.
        custom_ids: The requested ids.
        include_failed: Also retryable failures.
        include_invalid: Also ``invalid_output`` rows.

    Returns:
        The ids to run again, in ``custom_ids`` order.

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "expired"],
        ...                      "attempt": [1, 1], "error_code": [None, "batch_expired"],
        ...                      "status_code": [200, None]})
        >>> leftover_custom_ids(rows, ["a", "b", "c"])
        ['b', 'c']
    """
    joined = join_results(frame, custom_ids)
    status = joined["status"]
    leftover = status.isin(["expired", "cancelled", "missing"])
    if include_invalid:
        leftover |= status == "invalid_output"
    if include_failed:
        code = pd.to_numeric(joined["status_code"], errors="coerce")
        retryable = (
            code.isin(list(RETRYABLE_STATUS_CODES))
            | (code >= 500)
            | joined["error_code"].isin(list(RETRYABLE_ERROR_CODES))
        )
        leftover |= (status == "failed") & retryable
    return joined.loc[leftover, "custom_id"].tolist()


_ENDED_ERROR_CODES = {"expired": "batch_expired", "cancelled": "batch_cancelled"}


def mark_unanswered(
    frame: pd.DataFrame, owners: Mapping[str, tuple[str, str, int]]
) -> pd.DataFrame:
    """Give ``missing`` rows whose batch ended ``expired`` or ``cancelled`` that status.

    A batch stopped before it processed anything may write no error file at all; its
    requests were not lost, they were never run.

    Args:
        frame: Joined rows (one per request).
        owners: custom_id -> (status, batch_id, attempt) of the ended batch that held it.

    Returns:
        ``frame`` with those rows' status, error code and message, batch and attempt set
        (a copy when anything changed).

    Example:
        >>> rows = pd.DataFrame({"custom_id": ["a", "b"], "status": ["succeeded", "missing"],
        ...     "error_code": [None, None], "error_message": [None, None],
        ...     "batch_id": ["b1", None], "attempt": pd.array([1, None], dtype="Int64")})
        >>> mark_unanswered(rows, {"b": ("cancelled", "b1", 1)})["status"].tolist()
        ['succeeded', 'cancelled']
    """
    owned = frame["custom_id"].map(lambda custom_id: owners.get(custom_id))
    rows = (frame["status"] == "missing") & owned.notna()
    if not rows.any():
        return frame
    frame = frame.copy()
    status = owned[rows].map(lambda owner: owner[0])
    frame.loc[rows, "status"] = status
    frame.loc[rows, "error_code"] = status.map(_ENDED_ERROR_CODES)
    frame.loc[rows, "error_message"] = "not run: the batch ended " + status
    frame.loc[rows, "batch_id"] = owned[rows].map(lambda owner: owner[1])
    frame.loc[rows, "attempt"] = owned[rows].map(lambda owner: owner[2]).astype("Int64")
    return frame
