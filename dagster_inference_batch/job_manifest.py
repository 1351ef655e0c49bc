"""The row manifest of an incremental job: every row's custom_id and fingerprint, and
whether it was sent.

An incremental job sends only some of its rows, so its input files no longer list them
all. The manifest does: one Parquet file beside the answer store's segments
(``<store>/<namespace>/manifests/<job>.parquet``), written before anything is uploaded
and never changed, so the results can answer every row, on any machine that reaches the
store. ``BatchJob.manifest`` holds its URL.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import BatchAPIError


@dataclass(frozen=True)
class Manifest:
    """Every row of a job, in row order.

    Attributes:
        custom_ids: Each row's custom_id.
        fingerprints: Each row's request fingerprint.
        sent: Whether the row was in the uploaded files.

    Example:
        >>> Manifest(["a", "b"], ["f1", "f1"], [True, False]).unsent()
        [(1, 'b', 'f1')]
    """

    custom_ids: list[str]
    fingerprints: list[str]
    sent: list[bool]

    def unsent(self) -> list[tuple[int, str, str]]:
        """The rows answered without being sent.

        Returns:
            ``(position, custom_id, fingerprint)`` per such row.
        """
        return [
            (i, custom_id, self.fingerprints[i])
            for i, custom_id in enumerate(self.custom_ids)
            if not self.sent[i]
        ]


def manifest_url(store_url: str, namespace: str, job_key: str) -> str:
    """Where a job's manifest goes in the store.

    Args:
        store_url: The answer store's root.
        namespace: The provider's namespace in it.
        job_key: The job's idempotency key.

    Returns:
        The manifest's URL (one per key and write, so two writers never share a file).

    Example:
        >>> manifest_url("/tmp/answers", "p-1", "k").startswith("/tmp/answers/p-1/manifests/")
        True
    """
    digest = hashlib.sha256(job_key.encode()).hexdigest()[:24]
    return f"{store_url.rstrip('/')}/{namespace}/manifests/{digest}-{uuid.uuid4().hex[:12]}.parquet"


def write_manifest(url: str, manifest: Manifest, storage_options: dict | None = None) -> None:
    """Write ``manifest`` to ``url`` (a new file).

    Args:
        url: From ``manifest_url``.
        manifest: The rows.
        storage_options: fsspec options for the store.

    Example:
        >>> import tempfile
        >>> url = tempfile.mkdtemp() + "/m.parquet"
        >>> write_manifest(url, Manifest(["a"], ["f"], [True]))
        >>> read_manifest(url).custom_ids
        ['a']
    """
    table = pa.table(
        {
            "custom_id": pa.array(manifest.custom_ids, pa.string()),
            "fingerprint": pa.array(manifest.fingerprints, pa.string()),
            "sent": pa.array(manifest.sent, pa.bool_()),
        }
    )
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        pq.write_table(table, handle)


def read_manifest(url: str, storage_options: dict | None = None) -> Manifest:
    """Read a manifest back.

    Args:
        url: Where ``write_manifest`` wrote it.
        storage_options: fsspec options for the store.

    Returns:
        The rows.

    Raises:
        BatchAPIError: It cannot be read (the store moved or was deleted); names the URL.
    """
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
    except (OSError, pa.ArrowException) as error:
        raise BatchAPIError(
            f"the job's row manifest {url} cannot be read ({error}): the answer store was "
            "moved or deleted; submit the rows again"
        ) from error
    return Manifest(
        table["custom_id"].to_pylist(), table["fingerprint"].to_pylist(), table["sent"].to_pylist()
    )
