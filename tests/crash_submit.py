"""Run the submission of the `tests.dagster_harness` pipeline and SIGKILL this process at
one point of it; `tests/test_flow_crashes.py` runs it as a subprocess.

    python tests/crash_submit.py --home DAGSTER_HOME --base-url URL --point POINT \\
        [--rows N] [--max-requests-per-batch N]

POINT:
- `upload`: right after `InferenceBatchClient.upload` returned (the input files are at the
  provider, no batch yet, nothing recorded for `llm_input_file`);
- `create`: right after `InferenceBatchClient.create` returned (the batches exist at the
  provider, the `llm_batch` step has not returned);
- `record`: when the `llm_batch` step's materialization reaches the instance, before it
  is written (the step computed its result and metadata; the event log never hears of it);
- `collect`: the submission succeeds, the sensor is ticked until it launches the results
  run, and that run dies right after `InferenceBatchClient.results` returned (the answers
  are downloaded and joined, `llm_results` is not recorded; the run stays STARTED, as
  after a run worker's crash).

The instance is the persistent one in `--home` (its `dagster.yaml`), so the parent test
opens the same event log afterwards. Exits 3 if the run ended without reaching the point.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from dagster_inference_batch.client import InferenceBatchClient  # noqa: E402
from tests.dagster_harness import NAME, Harness  # noqa: E402

POINTS = ("upload", "create", "record", "collect")


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def die_after(owner: Any, name: str) -> None:
    """Replace `owner.name` by a wrapper that makes the real call, then SIGKILLs."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        die()
        return result

    setattr(owner, name, wrapper)


def die_before_recording(asset: str) -> None:
    """SIGKILL when the materialization of `asset` is handed to the instance to store."""
    real = dg.DagsterInstance.handle_new_event

    @functools.wraps(real)
    def wrapper(self: dg.DagsterInstance, event: Any, *args: Any, **kwargs: Any) -> Any:
        dagster_event = event.dagster_event
        if (
            dagster_event is not None
            and dagster_event.is_step_materialization
            and dagster_event.asset_key == dg.AssetKey(asset)
        ):
            die()
        return real(self, event, *args, **kwargs)

    dg.DagsterInstance.handle_new_event = wrapper  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--point", choices=POINTS, required=True)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--max-requests-per-batch", type=int, default=5)
    args = parser.parse_args()

    if args.point == "upload":
        die_after(InferenceBatchClient, "upload")
    elif args.point == "create":
        die_after(InferenceBatchClient, "create")
    elif args.point == "record":
        die_before_recording(f"{NAME}_batch")
    with dg.DagsterInstance.from_config(args.home) as instance:
        harness = Harness(
            instance,
            args.base_url,
            rows=args.rows,
            resource_options={"max_requests_per_batch": args.max_requests_per_batch},
        )
        result = harness.submit()
        if args.point == "collect":
            assert result.success
            die_after(InferenceBatchClient, "results")
            harness.tick_until(harness.results_done, timeout=60)
        print(f"submission ended without a crash: success={result.success}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
