"""Script entry used by `LocalBatchServer`: runs the CLI without importing the parent
package's `__init__` (which loads Dagster and pandas), so the server starts in a fraction
of the time. The installed `dagster-inference-batch` console script is equivalent."""

import sys
import types
from pathlib import Path

if "dagster_inference_batch" not in sys.modules:
    _package = types.ModuleType("dagster_inference_batch")
    _package.__path__ = [str(Path(__file__).resolve().parents[1])]
    sys.modules["dagster_inference_batch"] = _package

from dagster_inference_batch.local_server.cli import main  # noqa: E402

main()
