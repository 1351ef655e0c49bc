"""Dagster components of the package: the ``dg`` registry module (entry point
``dagster_dg_cli.registry_modules``), so ``dg list components`` shows them."""

from .inference_batch import InferenceBatchComponent

__all__ = ["InferenceBatchComponent"]
