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

    ``problems`` holds one human-readable string per problem (at most 20), each naming
    the line number or ``custom_id`` and the rule broken.

    Example:
        >>> err = InvalidBatchInput(["line 3 (custom_id 'a'): duplicate custom_id"])
        >>> "line 3" in str(err)
        True
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
    (synthetic answers) was not asked for. The message says how to set one."""


class BatchError(RuntimeError):
    """Base class for errors about submitted batches."""


class BatchFailedError(BatchError):
    """A batch ended ``failed`` (usually input validation at the provider).

    ``errors`` carries the provider's ``errors.data`` entries (``code``, ``message``,
    ``line``) for each failed batch.
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
    """``wait`` ran out of time; the batches keep running at the provider."""


class BatchAPIError(BatchError):
    """The Batch API refused a call or kept failing after every retry.

    ``status_code`` is the provider's HTTP status when there was one.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class PartialCreateError(BatchAPIError):
    """A create failed for some shards; ``job`` records the batches that were made.

    Raised by ``InferenceBatchClient.create`` so that no created batch goes unrecorded;
    the message and ``status_code`` are the first failure's.
    """

    def __init__(self, job: Any, cause: BatchAPIError) -> None:
        self.job = job
        super().__init__(str(cause), status_code=cause.status_code)
