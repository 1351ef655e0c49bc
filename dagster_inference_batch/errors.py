"""Exceptions raised by dagster-inference-batch.

Every message names what went wrong and where (line number, custom_id, batch id or
setting) and never contains an API key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_REPORTED_PROBLEMS = 20


class InvalidBatchInput(ValueError):
    """Request lines that a Batch API would refuse, found before anything is uploaded.

    Args:
        problems: One human-readable string per problem, each naming the line number or
            ``custom_id`` and the rule broken; the first 20 are kept in ``problems``.
        total: How many problems there were (default: ``len(problems)``).

    Example:
        >>> err = InvalidBatchInput(["line 3 (custom_id 'a'): duplicate custom_id"])
        >>> print(err)
        invalid batch input (1 problem):
          - line 3 (custom_id 'a'): duplicate custom_id
        >>> line = {"custom_id": "a", "body": {"model": "m", "prompt": "twice"}}
        >>> try:
        ...     client.submit([line, line], endpoint="/v1/completions")
        ... except InvalidBatchInput as error:
        ...     error.problems
        ["line 2 (custom_id 'a'): duplicate custom_id (first on line 1)"]
    """

    def __init__(self, problems: Sequence[str], *, total: int | None = None) -> None:
        self.problems = list(problems)[:MAX_REPORTED_PROBLEMS]
        self.total = total if total is not None else len(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems)
        more = self.total - len(self.problems)
        suffix = f"\n  ... and {more} more" if more > 0 else ""
        noun = "problem" if self.total == 1 else "problems"
        super().__init__(f"invalid batch input ({self.total} {noun}):\n{shown}{suffix}")


class ProviderNotConfigured(ValueError):
    """No provider to send batches to: no API key and no base URL, and the local server
    (synthetic answers) was not asked for. The message says how to set one.

    Raised by ``InferenceBatchResource.get_client()``.

    Example:
        >>> raise ProviderNotConfigured("set INFERENCE_API_KEY")
        Traceback (most recent call last):
        ...
        dagster_inference_batch.errors.ProviderNotConfigured: set INFERENCE_API_KEY
    """


class BatchError(RuntimeError):
    """Base class for errors about submitted batches (catch this for all of them)."""


class BatchFailedError(BatchError):
    """A batch ended ``failed`` (usually input validation at the provider).

    Raised by ``InferenceBatchClient.results`` for a job whose latest attempt failed.

    Args:
        message: What failed, naming the batches.
        errors: The provider's ``errors.data`` entries (``code``, ``message``, ``line``,
            ``batch_id``) for each failed batch, kept in ``errors``.

    Example:
        >>> error = BatchFailedError("batch b1 failed", [{"batch_id": "b1", "line": 2,
        ...     "code": "invalid_model", "message": "unknown model"}])
        >>> print(error)
        batch b1 failed
          - batch b1 line 2: [invalid_model] unknown model
    """

    def __init__(self, message: str, errors: Sequence[dict]) -> None:
        self.errors = list(errors)
        detail = "\n".join(
            f"  - batch {e.get('batch_id', '?')} line {e.get('line')}: "
            f"[{e.get('code')}] {e.get('message')}"
            for e in self.errors[:MAX_REPORTED_PROBLEMS]
        )
        super().__init__(f"{message}\n{detail}" if detail else message)


class BatchWaitTimeout(BatchError):
    """``wait`` ran out of time; the batches keep running at the provider.

    Example:
        >>> job = client.submit([{"custom_id": "a", "body": {"model": "m", "prompt": "slow"}}],
        ...                     endpoint="/v1/completions")
        >>> try:
        ...     client.wait(job, timeout=0)
        ... except BatchWaitTimeout as error:
        ...     "keep running" in str(error)
        True
    """


class BatchAPIError(BatchError):
    """The Batch API refused a call or kept failing after every retry.

    Args:
        message: What failed (never the API key).
        status_code: The provider's HTTP status when there was one, kept in
            ``status_code``.

    Example:
        >>> from dagster_inference_batch import BatchJob, BatchShard
        >>> try:
        ...     client.refresh(BatchJob(endpoint="/v1/completions", idempotency_key="k",
        ...         shards=[BatchShard(index=0, attempt=1, idempotency_key="k#s0a1", file_id="f",
        ...                            request_count=1, bytes=1, sha256="0", batch_id="batch_no")]))
        ... except BatchAPIError as error:
        ...     error.status_code
        404
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class PartialCreateError(BatchAPIError):
    """A create failed for some shards; ``job`` records the batches that were made.

    Raised by ``InferenceBatchClient.create`` so that no created batch goes unrecorded.

    Args:
        job: The ``BatchJob`` with every batch that was created, kept in ``job``.
        cause: The first failure; its message and ``status_code`` are this error's.

    Example:
        >>> error = PartialCreateError("the job", BatchAPIError("refused", status_code=400))
        >>> error.job, error.status_code, str(error)
        ('the job', 400, 'refused')
    """

    def __init__(self, job: Any, cause: BatchAPIError) -> None:
        self.job = job
        super().__init__(str(cause), status_code=cause.status_code)
