"""Submit one partition of the `tests.dagster_harness` pipeline under the `inference.net`
profile, started at the same moment as other processes doing the same for theirs;
`tests/test_provider_pacing_dagster.py` runs five of these as subprocesses.

    python tests/paced_submit.py --home DAGSTER_HOME --base-url URL --partition p0 \\
        --partitions p0,p1,... --barrier DIR --upload-interval SECONDS

Materializes `prompts`, `llm_input_file` and `llm_batch` of `--partition` as a run worker
would, with `InferenceBatchResource(provider="inference.net",
upload_interval_seconds=SECONDS)`, after every process named in `--partitions` has
touched its file in `--barrier` (so the uploads all want the same minute). The instance
is the persistent one in `--home`, shared with the others and the parent test. Prints
`<partition> ok|failed <run_id>`; exits 1 if the run failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from tests.dagster_harness import Harness  # noqa: E402

BARRIER_TIMEOUT_SECONDS = 60.0
ROWS = 2


def pacing_harness(
    instance: dg.DagsterInstance, base_url: str, partitions: list[str], interval: float
) -> Harness:
    """The pipeline every process (and the parent test) builds: same assets, same
    resource, the `inference.net` profile with its minute scaled to `interval`."""
    return Harness(
        instance,
        base_url,
        rows=ROWS,
        partitions_def=dg.StaticPartitionsDefinition(partitions),
        resource_options={"provider": "inference.net", "upload_interval_seconds": interval},
    )


def wait_for_all(barrier: Path, name: str, count: int) -> None:
    """Touch `name` in `barrier`, then wait until `count` files are there."""
    (barrier / name).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while len(list(barrier.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(barrier.iterdir()))} of {count} started")
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--partition", required=True)
    parser.add_argument("--partitions", required=True)
    parser.add_argument("--barrier", required=True)
    parser.add_argument("--upload-interval", type=float, required=True)
    args = parser.parse_args()

    partitions = args.partitions.split(",")
    with dg.DagsterInstance.from_config(args.home) as instance:
        harness = pacing_harness(instance, args.base_url, partitions, args.upload_interval)
        wait_for_all(Path(args.barrier), args.partition, len(partitions))
        result = harness.submit_without_raising(args.partition)
    outcome = "ok" if result.success else "failed"
    print(f"{args.partition} {outcome} {result.run_id}", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
