"""The code location: everything under ``defs/`` (the source asset and the pipeline)."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """The definitions found in ``defs/``."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
