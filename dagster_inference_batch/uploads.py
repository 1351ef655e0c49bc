"""Uploading request lines: a job's shards as input files, each uploaded at most once.

Each shard's upload is named after its batch key, so an upload made by an earlier,
interrupted call is found again (in a ledger by id, or in one page of the provider's file
listing) and reused rather than paid for twice.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from .batch_record import BatchJob, BatchShard
from .errors import BatchAPIError, InvalidBatchInput
from .ledger import Ledger
from .provider_calls import FILE_LISTING, ProviderCalls
from .request_lines import EncodedRequests, shard_requests, write_jsonl
from .retries import retry_after_seconds
from .upload_pacing import UploadPacer

MAX_IDEMPOTENCY_KEY_CHARS = 256  # batch keys must fit a 512-character metadata value


def batch_key(job_key: str, shard_index: int, attempt: int, sha256: str) -> str:
    """The key one batch carries: job, shard, attempt and the shard's content, so a batch
    is reused only for the very same request lines.

    Example:
        >>> batch_key("job", 0, 1, "ab" * 32)
        'job#s0a1:abababababababab'
    """
    return f"{job_key}#s{shard_index}a{attempt}:{sha256[:16]}"


def upload_name(key: str) -> str:
    """The file name a shard is uploaded under, derived from its batch key.

    Example:
        >>> upload_name("job#s0a1:abababababababab").startswith("dib-")
        True
    """
    return f"dib-{hashlib.sha256(key.encode()).hexdigest()[:32]}.jsonl"


def new_job(
    encoded: EncodedRequests, metadata: dict[str, str], idempotency_key: str | None
) -> BatchJob:
    """A job for ``encoded`` with no shards yet.

    Args:
        encoded: The request lines.
        metadata: The caller's batch metadata.
        idempotency_key: The caller's job key; default ``sha256:`` and the lines' digest.

    Returns:
        The job, without shards.

    Raises:
        InvalidBatchInput: The key is too long for the provider's metadata.
    """
    digest = encoded.sha256()
    job_key = idempotency_key or f"sha256:{digest[:32]}"
    if len(job_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidBatchInput(
            [
                f"idempotency_key has {len(job_key)} characters; at most "
                f"{MAX_IDEMPOTENCY_KEY_CHARS} fit in the provider's metadata"
            ]
        )
    return BatchJob(
        endpoint=encoded.endpoint,
        idempotency_key=job_key,
        metadata=metadata,
        request_count=len(encoded),
        submitted_at=time.time(),
        sha256=digest,
    )


def upload_shards(
    provider: ProviderCalls,
    encoded: EncodedRequests,
    job_key: str,
    attempt: int,
    ledger: Ledger | None,
    *,
    max_requests: int,
    max_bytes: int,
    max_embedding_inputs: int | None = None,
    pacer: UploadPacer | None = None,
) -> list[BatchShard]:
    """Shard ``encoded`` within the limits and upload each shard not uploaded before.

    Uploads wait for their turn with ``pacer`` (the provider's upload limit).

    Args:
        provider: The client's calls.
        encoded: The request lines.
        job_key: The job's idempotency key.
        attempt: The attempt the shards belong to.
        ledger: The caller's record of uploads.
        max_requests: Requests per shard at most.
        max_bytes: Bytes per shard at most.
        max_embedding_inputs: Embedding inputs per shard at most (None: no cap).
        pacer: Spaces the uploads (None: no pacing).

    Returns:
        One shard per uploaded (or reused) file, without batches.

    Raises:
        BatchAPIError: An upload or a lookup failed, or waited past ``max_upload_wait``.
    """
    shards = shard_requests(
        encoded,
        max_requests=max_requests,
        max_bytes=max_bytes,
        max_embedding_inputs=max_embedding_inputs,
    )
    keys = [batch_key(job_key, s.index, attempt, s.sha256) for s in shards]
    wanted = {upload_name(key): s.nbytes for key, s in zip(keys, shards, strict=True)}
    uploaded = _recorded_files(provider, wanted, ledger)
    if len(uploaded) < len(wanted):
        listed = uploaded_files(provider)  # one listing for every shard
        uploaded.update(
            {name: listed[(name, n)] for name, n in wanted.items() if (name, n) in listed}
        )
    with tempfile.TemporaryDirectory(prefix="dib-upload-") as tmp:

        def upload_one(numbered: tuple[str, Any]) -> BatchShard:
            key, shard = numbered
            path = Path(tmp) / upload_name(key)
            file_id = uploaded.get(path.name)
            if file_id:
                provider.log.info("reusing uploaded file %s (%s)", file_id, path.name)
            else:
                write_jsonl(encoded, path, shard.positions)
                file_id = _upload_file(provider, path, shard.nbytes, ledger, pacer)
            return BatchShard(
                index=shard.index,
                attempt=attempt,
                idempotency_key=key,
                file_id=file_id,
                request_count=shard.request_count,
                bytes=shard.nbytes,
                sha256=shard.sha256,
                model=shard.model,
            )

        return provider.map(upload_one, list(zip(keys, shards, strict=True)))


def _recorded_files(
    provider: ProviderCalls, wanted: dict[str, int], ledger: Ledger | None
) -> dict[str, str]:
    """Uploads recorded under these names (by the caller or by this process) that the
    provider still holds with the same size: fetched by id, no listing."""
    recorded = {
        **provider.process_ledger.recorded("file", list(wanted)),
        **(ledger.recorded("file", list(wanted)) if ledger is not None else {}),
    }

    def still_there(item: tuple[str, str]) -> bool:
        name, file_id = item
        try:
            stored = provider.call(
                f"retrieve {file_id}", lambda: provider.sdk.files.retrieve(file_id)
            )
        except BatchAPIError as error:
            if error.status_code == 404:
                return False
            raise
        return stored.filename == name and stored.bytes == wanted[name]

    kept = provider.map(still_there, list(recorded.items()))
    return {name: file_id for (name, file_id), ok in zip(recorded.items(), kept, strict=True) if ok}


def _upload_file(
    provider: ProviderCalls,
    path: Path,
    nbytes: int,
    ledger: Ledger | None,
    pacer: UploadPacer | None,
) -> str:
    def find() -> str | None:  # an upload that failed may still have gone through
        return uploaded_files(provider).get((path.name, nbytes))

    def create() -> str:
        while True:
            try:
                with path.open("rb") as handle:
                    return provider.sdk.files.create(file=(path.name, handle), purpose="batch").id
            except openai.RateLimitError as error:  # the upload limit: a wait, not a failure
                hinted = retry_after_seconds(error)
                if pacer is None or hinted is None:
                    raise
                pacer.wait(hinted, "the provider's upload limit (429, Retry-After)")

    if pacer is None:
        file_id = provider.call(f"upload {path.name}", create, before_retry=find)
    else:
        with pacer.turn():
            file_id = provider.call(f"upload {path.name}", create, before_retry=find)
    provider.record("file", path.name, file_id, ledger)
    provider.log.info("uploaded %s as %s (%d bytes)", path.name, file_id, nbytes)
    return file_id


def latest_upload_time(provider: ProviderCalls) -> float | None:
    """When the newest batch input file was uploaded, by anyone using the key.

    Reads one page of ``GET /files?purpose=batch`` (newest first at OpenAI-compatible
    providers). A listing that fails says nothing: the provider's 429s pace instead.

    Args:
        provider: The client's calls.

    Returns:
        Its ``created_at`` (Unix seconds), or None without files or a file listing.
    """
    try:
        page = provider.listing(
            FILE_LISTING, lambda: provider.sdk.files.list(purpose="batch", limit=100)
        )
    except BatchAPIError as error:
        provider.log.info("upload pacing without the file list: %s", error)
        return None
    if page is None or not page.data:
        return None
    return float(max(item.created_at for item in page.data))


def uploaded_files(provider: ProviderCalls) -> dict[tuple[str, int], str]:
    """Recent batch input files (one page of ``GET /files``).

    Args:
        provider: The client's calls.

    Returns:
        (filename, bytes) -> file id; empty without a file listing.
    """
    page = provider.listing(
        FILE_LISTING, lambda: provider.sdk.files.list(purpose="batch", limit=100)
    )
    if page is None:
        return {}
    return {(item.filename, item.bytes): item.id for item in reversed(page.data)}
