"""A finished job's results: its files downloaded, parsed and joined, one row per request.

Requests that no file answers and whose batch expired or was cancelled take that batch's
status; the rest stay ``missing``. Also the job's submitted lines read back, and the
deletion of its files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .answer_store import AnswerStore
from .batch_record import BatchJob
from .downloads import download_inputs, download_result_files, input_records
from .errors import BatchAPIError, BatchFailedError
from .incremental import answers_for_unsent
from .job_manifest import read_manifest
from .provider_calls import ProviderCalls
from .result_join import mark_unanswered
from .results import collect_results
from .structured_output import StructuredOutput


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
    raise_if_failed(job)
    if not job.is_final:
        raise BatchAPIError(f"job {job.idempotency_key} is still {job.status}")
    with tempfile.TemporaryDirectory(prefix="dib-results-") as tmp:
        folder = Path(tmp)
        files = download_result_files(provider, job.shards, folder)
        manifest = read_manifest(job.manifest) if job.manifest else None
        from_store: list[str] = []
        if manifest is not None and answer_store is not None:
            reused, from_store = answers_for_unsent(manifest, files, answer_store, folder)
            files = [*files, *reused]
        if inputs is not None:
            custom_ids = inputs[id_column].astype(str).tolist()
        elif manifest is not None:
            custom_ids = manifest.custom_ids
        else:
            custom_ids = _submitted_custom_ids(provider, job, folder)
        frame = collect_results(
            files, custom_ids, inputs, id_column=id_column, structured=structured
        )
        frame.insert(
            frame.columns.get_loc("status") + 1,
            "source",
            np.where(frame["custom_id"].isin(from_store), "store", "batch"),
        )
        return _mark_unanswered(provider, job, frame, folder)


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


def _mark_unanswered(
    provider: ProviderCalls, job: BatchJob, frame: pd.DataFrame, folder: Path
) -> pd.DataFrame:
    """Requests an expired or cancelled batch never answered take that batch's status
    (a batch cancelled while validating has no error file to say so)."""
    ended = [s for s in job.shards if s.status in ("expired", "cancelled")]
    missing = set(frame.loc[frame["status"] == "missing", "custom_id"])
    if not ended or not missing:
        return frame
    owners: dict[str, tuple[str, str, int]] = {}
    paths = download_inputs(provider, ended, folder)
    for shard, path in zip(ended, paths, strict=True):
        for custom_id, _ in input_records([path]):
            if custom_id in missing:  # later attempts come later and win
                owners[custom_id] = (shard.status, shard.batch_id or "", shard.attempt)
    return mark_unanswered(frame, owners)


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
