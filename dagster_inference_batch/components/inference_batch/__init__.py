"""The ``InferenceBatchComponent`` and its scaffolder."""

from .component import InferenceBatchComponent, MessageModel, ResourceModel
from .scaffolder import InferenceBatchScaffolder, InferenceBatchScaffoldParams

__all__ = [
    "InferenceBatchComponent",
    "InferenceBatchScaffoldParams",
    "InferenceBatchScaffolder",
    "MessageModel",
    "ResourceModel",
]
