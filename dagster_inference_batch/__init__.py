"""LLM batch inference (Inference.net, OpenAI and compatible Batch APIs) for Dagster."""

from .client import InferenceBatchClient
from .errors import (
    BatchAPIError,
    BatchFailedError,
    BatchWaitTimeout,
    InvalidBatchInput,
)
from .job import BatchJob, BatchShard
from .resource import InferenceBatchResource

__all__ = [
    "BatchAPIError",
    "BatchFailedError",
    "BatchJob",
    "BatchShard",
    "BatchWaitTimeout",
    "InferenceBatchClient",
    "InferenceBatchResource",
    "InvalidBatchInput",
]
