"""Dagster components of the package. ``dg`` finds them through the package's
``dagster_dg_cli.registry_modules`` entry point (``dagster_inference_batch``, which
exports them lazily), so their type is ``dagster_inference_batch.InferenceBatchComponent``."""

from .inference_batch import InferenceBatchComponent

__all__ = ["InferenceBatchComponent"]
