"""A finished job's results: its files downloaded, parsed and joined, one row per request.

Requests that no file answers and whose batch expired or was cancelled take that batch's
status; the rest stay ``missing``. The rows come as one DataFrame, or streamed into a
Parquet dataset (``results_stream``). Also the job's submitted lines read back, and the
deletion of its files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from .answer_store import AnswerStore
from .batch_record import BatchJob
from .downloads import download_inputs, download_result_files, input_records
from .errors import BatchAPIError, BatchFailedError
from .incremental import answers_for_unsent
from .job_manifest import read_manifest
from .provider_calls import ProviderCalls
from .result_join import mark_unanswered
from .results import ResultFile, collect_results
from .results_stream import ResultsDataset, write_results_dataset
from .structured_output import StructuredOutput


@dataclass(frozen=True)
class _JobFiles:
    """A final job's result files, downloaded, and the ids they answer."""

    folder: Path
    files: list[ResultFile]
    custom_ids: pa.Array  # large_string: millions of ids without a Python object each
    from_store: list[str]


@contextmanager
def _job_files(
    provider: ProviderCalls,
    job: BatchJob,
    inputs: pd.DataFrame | None,
    id_column: str,
    answer_store: AnswerStore | None,
    structured: StructuredOutput | None = None,
) -> Iterator[_JobFiles]:
    """Download the job's result files (and the stored answers of an incremental job's
    rows not sent) into a temporary folder, kept until the block ends. With
    ``structured``, answers that do not validate are not stored."""
    raise_if_failed(job)
    if not job.is_final:
        raise BatchAPIError(f"job {job.idempotency_key} is still {job.status}")
    with tempfile.TemporaryDirectory(prefix="dib-results-") as tmp:
        folder = Path(tmp)
        files = download_result_files(provider, job.shards, folder)
        manifest = read_manifest(job.manifest) if job.manifest else None
        from_store: list[str] = []
        if manifest is not None and answer_store is not None:
            reused, from_store = answers_for_unsent(
                manifest, files, answer_store, folder, structured
            )
            files = [*files, *reused]
        if inputs is not None:
            custom_ids = pa.array(inputs[id_column].astype(str), pa.large_string())
        elif manifest is not None:
            custom_ids = pa.array(manifest.custom_ids, pa.large_string())
        else:
            custom_ids = pa.array(_submitted_custom_ids(provider, job, folder), pa.large_string())
        yield _JobFiles(folder, files, custom_ids, from_store)


def job_results(
    provider: ProviderCalls,
    job: BatchJob,
    inputs: pd.DataFrame | None = None,
    *,
    id_column: str = "custom_id",
    answer_store: AnswerStore | None = None,
    structured: StructuredOutput | None = None,
) -> pd.DataFrame:
    """One row per request of a final job (see ``InferenceBatchClient.results``).

    An incremental job's rows not sent are answered from its batches (a duplicate) or
    from ``answer_store``; its batches' new answers are stored. Column ``source`` says
    which rows came from the store.

    Args:
        provider: The client's calls.
        job: A final job.
        inputs: The rows the requests were built from.
        id_column: The column of ``inputs`` holding the custom_ids.
        answer_store: The store of an incremental job (one with a manifest).
        structured: The answers' expected shape: validated, and typed columns added.

    Returns:
        One row per request.

    Raises:
        BatchFailedError: A batch of the latest attempt failed.
        BatchAPIError: The job is not final, or a file could not be downloaded.
    """
    with _job_files(provider, job, inputs, id_column, answer_store, structured) as got:
        frame = collect_results(
            got.files, got.custom_ids, inputs, id_column=id_column, structured=structured
        )
        frame.insert(
            frame.columns.get_loc("status") + 1,
            "source",
            np.where(frame["custom_id"].isin(got.from_store), "store", "batch"),
        )
        missing = set(frame.loc[frame["status"] == "missing", "custom_id"])
        owners = _ended_owners(provider, job, missing, got.folder)
        return mark_unanswered(frame, owners) if owners else frame


def job_results_dataset(
    provider: ProviderCalls,
    job: BatchJob,
    location: str,
    inputs: pd.DataFrame | None = None,
    *,
    id_column: str = "custom_id",
    answer_store: AnswerStore | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
) -> ResultsDataset:
    """The rows of :func:`job_results`, streamed into a Parquet dataset at ``location``.

    Args:
        provider: The client's calls.
        job: A final job.
        location: The dataset's folder: a local path or an fsspec URL.
        inputs: The rows the requests were built from.
        id_column: The column of ``inputs`` holding the custom_ids.
        answer_store: The store of an incremental job (one with a manifest).
        filesystem: The fsspec filesystem to write with (default: from ``location``).

    Returns:
        The dataset's handle.

    Raises:
        BatchFailedError: A batch of the latest attempt failed.
        BatchAPIError: The job is not final, or a file could not be downloaded.
    """
    with _job_files(provider, job, inputs, id_column, answer_store) as got:
        return write_results_dataset(
            got.files,
            got.custom_ids,
            location,
            inputs,
            id_column,
            from_store=got.from_store,
            owners=lambda missing: _ended_owners(provider, job, missing, got.folder),
            filesystem=filesystem,
        )


def raise_if_failed(job: BatchJob) -> None:
    """Raise when a batch of the latest attempt failed.

    Args:
        job: The job.

    Raises:
        BatchFailedError: With the provider's ``errors.data``.
    """
    if job.status == "failed":
        failed = [s.batch_id for s in job.current_shards if s.status == "failed"]
        raise BatchFailedError(
            f"batch {', '.join(str(b) for b in failed)} failed at the provider", job.errors()
        )


def _submitted_custom_ids(provider: ProviderCalls, job: BatchJob, folder: Path) -> list[str]:
    first = [s for s in job.shards if s.attempt == 1]
    paths = download_inputs(provider, first, folder)
    return [custom_id for custom_id, _ in input_records(paths)]


def _ended_owners(
    provider: ProviderCalls, job: BatchJob, missing: set[str], folder: Path
) -> dict[str, tuple[str, str, int]]:
    """For requests no file answers, the expired or cancelled batch that held them (a
    batch cancelled while validating has no error file to say so)."""
    ended = [s for s in job.shards if s.status in ("expired", "cancelled")]
    owners: dict[str, tuple[str, str, int]] = {}
    if not ended or not missing:
        return owners
    paths = download_inputs(provider, ended, folder)
    for shard, path in zip(ended, paths, strict=True):
        for custom_id, _ in input_records([path]):
            if custom_id in missing:  # later attempts come later and win
                owners[custom_id] = (shard.status, shard.batch_id or "", shard.attempt)
    return owners


def submitted_lines(provider: ProviderCalls, job: BatchJob) -> Iterator[tuple[str, bytes]]:
    """Every request line the job submitted (see ``InferenceBatchClient.submitted_lines``).

    Args:
        provider: The client's calls.
        job: The job.

    Yields:
        (custom_id, line), in file order.
    """
    first = [s for s in job.shards if s.attempt == 1]
    with tempfile.TemporaryDirectory(prefix="dib-submitted-") as tmp:
        for custom_id, line in input_records(download_inputs(provider, first, Path(tmp))):
            yield custom_id, line.rstrip(b"\r\n")


def delete_job_files(provider: ProviderCalls, job: BatchJob, *, inputs_only: bool = False) -> None:
    """Delete the job's files; a file that cannot be deleted is logged.

    Args:
        provider: The client's calls.
        job: The job.
        inputs_only: The input files only, not the output and error files.
    """
    file_ids = [
        file_id
        for s in job.shards
        for file_id in (
            (s.file_id,) if inputs_only else (s.file_id, s.output_file_id, s.error_file_id)
        )
        if file_id
    ]
    provider.map(provider.delete_file, file_ids)
