"""LLM batch inference (Inference.net, OpenAI and compatible Batch APIs) for Dagster."""

from .assets import InferenceBatchDefinitions, build_inference_batch_assets
from .client import InferenceBatchClient
from .errors import (
    BatchAPIError,
    BatchFailedError,
    BatchWaitTimeout,
    InvalidBatchInput,
)
from .job import BatchJob, BatchShard
from .requests import build_requests
from .resource import InferenceBatchResource

__all__ = [
    "BatchAPIError",
    "BatchFailedError",
    "BatchJob",
    "BatchShard",
    "BatchWaitTimeout",
    "InferenceBatchClient",
    "InferenceBatchDefinitions",
    "InferenceBatchResource",
    "InvalidBatchInput",
    "build_inference_batch_assets",
    "build_requests",
]
