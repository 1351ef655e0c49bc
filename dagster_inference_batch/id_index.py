"""Requested ids looked up by 64-bit hashes: 16 bytes per id, no hash table of strings.

The streaming join (``results_stream``) must find, for every line of millions, which
requested id it answers. An Arrow hash of the id strings (``pyarrow.compute.index_in``)
holds every string again plus its table, and every line's id until the lookup: the
memory peak of a 5,000,000-line join. ``IdIndex`` keeps each requested id's 64-bit hash
in a sorted array (and the order that sorts them), and looks up a chunk of lines at a
time; each hit is then compared with the requested id's string, so a hash collision never
attaches a line to another id. Requested ids sharing a hash are looked up by string.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_SLICE = 65_536  # ids made Python strings at a time, to hash


def hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each id (pandas' SipHash), computed a slice at a time.

    Args:
        ids: Strings (a null hashes like any value; lookups compare strings anyway).

    Returns:
        One ``uint64`` per id.

    Example:
        >>> a, b, c = hash_ids(pa.array(["x", "y", "x"]))
        >>> bool(a == c), bool(a == b)
        (True, False)
    """
    hashes = np.empty(len(ids), np.uint64)
    for start in range(0, len(ids), _SLICE):
        part = ids.slice(start, _SLICE).to_numpy(zero_copy_only=False)
        hashes[start : start + len(part)] = pd.util.hash_array(part, categorize=False)
    return hashes


class IdIndex:
    """The positions of requested ids, found by hash and confirmed by string.

    Args:
        ids: The requested ids (strings).

    Attributes:
        repeated: The first id that ``ids`` holds twice (by the position of its second
            occurrence), else None.

    Example:
        >>> index = IdIndex(pa.array(["a", "b", "c"], pa.large_string()))
        >>> index.positions(pa.array(["c", "z", "a"], pa.large_string())).tolist()
        [2, -1, 0]
        >>> IdIndex(pa.array(["a", "b", "a"])).repeated
        'a'
    """

    def __init__(self, ids: pa.Array) -> None:
        self._ids = ids
        hashes = hash_ids(ids)
        self._order = np.argsort(hashes, kind="stable")
        self._sorted = hashes[self._order]
        del hashes
        same = self._sorted[1:] == self._sorted[:-1]
        self._shared = np.unique(self._sorted[1:][same])  # hashes of more than one id
        self._exact: dict[str, int] = {}
        self.repeated: str | None = None
        if self._shared.size:
            holders = np.sort(self._order[np.isin(self._sorted, self._shared)])
            for position in holders.tolist():
                text = ids[position].as_py()
                if text in self._exact:
                    self.repeated = self.repeated if self.repeated is not None else text
                else:
                    self._exact[text] = position

    @property
    def size(self) -> int:
        """How many ids were requested."""
        return len(self._ids)

    def positions(self, chunk_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The requested position of each id of ``chunk_ids``, -1 where it is not one.

        Args:
            chunk_ids: Ids of a chunk of lines.

        Returns:
            One ``int64`` per id.
        """
        if isinstance(chunk_ids, pa.ChunkedArray):
            chunk_ids = chunk_ids.combine_chunks()
        if not len(self._sorted) or not len(chunk_ids):
            return np.full(len(chunk_ids), -1, np.int64)
        hashes = hash_ids(chunk_ids)
        at = np.minimum(np.searchsorted(self._sorted, hashes), len(self._sorted) - 1)
        hit = self._sorted[at] == hashes
        place = np.where(hit, self._order[at], -1).astype(np.int64)
        if self._shared.size:
            for i in np.flatnonzero(hit & np.isin(hashes, self._shared)).tolist():
                place[i] = self._exact.get(chunk_ids[i].as_py(), -1)
        found = np.flatnonzero(place >= 0)
        if found.size:  # a hash collision must never attach a line to another id
            same = pc.equal(chunk_ids.take(pa.array(found)), self._ids.take(pa.array(place[found])))
            place[found[~pc.fill_null(same, False).to_numpy(zero_copy_only=False)]] = -1
        return place
