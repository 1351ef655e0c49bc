"""Whether a provider's final answer about a batch can be trusted yet.

Some OpenAI-compatible services report ``completed`` (or ``expired``) before they fill in
the file ids: ``request_counts.completed > 0`` with ``output_file_id: null``, or failed
requests with no ``error_file_id``. A later read shows the id. Until then the batch is
not final for us, or the answers it paid for would come back ``missing``.
"""

from __future__ import annotations

from .batch_record import BatchShard

DEFAULT_FINAL_STATE_WAIT_SECONDS = 600.0  # how long an inconsistent final state is re-read


def absent_files(shard: BatchShard) -> list[str]:
    """The file ids a final shard's counts promise but its record lacks.

    Args:
        shard: A shard as last refreshed.

    Returns:
        ``output_file_id`` (completed requests, no output file) and/or
        ``error_file_id`` (failed requests, no error file); empty for a shard that is
        not final or is consistent.

    Example:
        >>> shard = BatchShard(index=0, attempt=1, idempotency_key="k", file_id="f",
        ...                    request_count=2, bytes=10, sha256="0", status="completed",
        ...                    request_counts={"total": 2, "completed": 2, "failed": 0})
        >>> absent_files(shard)
        ['output_file_id']
    """
    if not shard.is_final:
        return []
    counts = shard.request_counts
    absent = []
    if int(counts.get("completed", 0) or 0) > 0 and not shard.output_file_id:
        absent.append("output_file_id")
    if int(counts.get("failed", 0) or 0) > 0 and not shard.error_file_id:
        absent.append("error_file_id")
    return absent
