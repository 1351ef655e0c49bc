"""LLM batch inference (Inference.net, OpenAI and compatible Batch APIs) for Dagster.

The plain client (``InferenceBatchClient``, ``build_requests``, ``BatchJob``) imports
without Dagster. Names that pull in heavy libraries (pandas for the client and request
lines, Dagster for the resource and the factory) load the first time they are used, so
``python -m dagster_inference_batch.local_server.cli`` starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .batch_record import BatchJob, BatchShard
from .errors import (
    BatchAPIError,
    BatchFailedError,
    BatchWaitTimeout,
    InvalidBatchInput,
    PartialCreateError,
    ProviderNotConfigured,
)

if TYPE_CHECKING:
    from .answer_store import AnswerStore
    from .assets import InferenceBatchDefinitions, build_inference_batch_assets
    from .client import InferenceBatchClient
    from .components import InferenceBatchComponent
    from .cost_estimate import BudgetExceeded
    from .on_time_check import OnTimeOptions
    from .request_lines import EncodedRequests, build_requests
    from .resource import InferenceBatchResource
    from .results_stream import ResultsDataset
    from .schedules import ScheduleOptions

_LAZY_NAMES = {
    "InferenceBatchClient": ".client",
    "EncodedRequests": ".request_lines",
    "build_requests": ".request_lines",
    "InferenceBatchDefinitions": ".assets",
    "build_inference_batch_assets": ".assets",
    "InferenceBatchResource": ".resource",
    "BudgetExceeded": ".cost_estimate",
    "AnswerStore": ".answer_store",
    "InferenceBatchComponent": ".components",
    "ResultsDataset": ".results_stream",
    "OnTimeOptions": ".on_time_check",
    "ScheduleOptions": ".schedules",
}

__all__ = [
    "AnswerStore",
    "BatchAPIError",
    "BatchFailedError",
    "BatchJob",
    "BatchShard",
    "BatchWaitTimeout",
    "BudgetExceeded",
    "EncodedRequests",
    "InferenceBatchClient",
    "InferenceBatchComponent",
    "InferenceBatchDefinitions",
    "InferenceBatchResource",
    "InvalidBatchInput",
    "OnTimeOptions",
    "PartialCreateError",
    "ProviderNotConfigured",
    "ResultsDataset",
    "ScheduleOptions",
    "build_inference_batch_assets",
    "build_requests",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """Every name, the lazy ones too: dg's registry (the entry point) finds
    ``InferenceBatchComponent`` through ``dir()``."""
    return sorted(set(globals()) | set(_LAZY_NAMES))
