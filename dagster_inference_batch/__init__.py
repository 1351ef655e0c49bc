"""LLM batch inference (Inference.net, OpenAI and compatible Batch APIs) for Dagster.

The plain client (``InferenceBatchClient``, ``build_requests``, ``BatchJob``) imports
without Dagster; the Dagster names load Dagster the first time they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .client import InferenceBatchClient
from .errors import (
    BatchAPIError,
    BatchFailedError,
    BatchWaitTimeout,
    InvalidBatchInput,
    PartialCreateError,
    ProviderNotConfigured,
)
from .job import BatchJob, BatchShard
from .request_lines import EncodedRequests, build_requests

if TYPE_CHECKING:
    from .assets import InferenceBatchDefinitions, build_inference_batch_assets
    from .resource import InferenceBatchResource

_DAGSTER_NAMES = {
    "InferenceBatchDefinitions": ".assets",
    "build_inference_batch_assets": ".assets",
    "InferenceBatchResource": ".resource",
}

__all__ = [
    "BatchAPIError",
    "BatchFailedError",
    "BatchJob",
    "BatchShard",
    "BatchWaitTimeout",
    "EncodedRequests",
    "InferenceBatchClient",
    "InferenceBatchDefinitions",
    "InferenceBatchResource",
    "InvalidBatchInput",
    "PartialCreateError",
    "ProviderNotConfigured",
    "build_inference_batch_assets",
    "build_requests",
]


def __getattr__(name: str) -> Any:
    if name in _DAGSTER_NAMES:
        value = getattr(importlib.import_module(_DAGSTER_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
