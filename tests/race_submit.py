"""Submit partitions of the `tests.dagster_harness` pipeline in step with another process
doing the same, so that both batch steps of a partition create at the same moment;
`tests/test_graph_idempotency.py` runs two of these as subprocesses.

    python tests/race_submit.py --home DAGSTER_HOME --base-url URL --name A \\
        --barrier DIR --partitions p0,p1,... [--rows N] [--max-requests-per-batch N]

For each partition, in order, this process materializes `prompts`, `llm_input_file` and
`llm_batch` as a run worker would. Its `InferenceBatchClient.create` first waits at a
barrier (files `<round>-<name>` in `--barrier`) until the other process's batch step of
the same partition reaches it too, then both go on together: two runs of the same
partition racing, as after a double click or a backfill overlapping a schedule.

The instance is the persistent one in `--home`, shared with the other process and the
parent test. Prints one line `<partition> ok|failed <seconds>` per partition; exits 1 if
a run failed.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from dagster_inference_batch.client import InferenceBatchClient  # noqa: E402
from tests.dagster_harness import Harness  # noqa: E402

BARRIER_TIMEOUT_SECONDS = 120.0


def wait_at_barrier_before_create(barrier: Path, name: str, partition: str | None = None) -> None:
    """Make each `create` wait until the other racer's `create` of the same round; with
    `partition`, only the creates of that partition's jobs (the others go straight on)."""
    real = InferenceBatchClient.create
    rounds = iter(range(10**6))

    @functools.wraps(real)
    def create(self: InferenceBatchClient, job: Any, *args: Any, **kwargs: Any) -> Any:
        if partition is not None and job.metadata.get("dagster_partition") != partition:
            return real(self, job, *args, **kwargs)
        number = next(rounds)
        (barrier / f"{number}-{name}").touch()
        deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
        while len(list(barrier.glob(f"{number}-*"))) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the other racer never reached create #{number}")
            time.sleep(0.005)
        return real(self, job, *args, **kwargs)

    InferenceBatchClient.create = create  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--barrier", required=True)
    parser.add_argument("--partitions", required=True)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--max-requests-per-batch", type=int, default=2)
    args = parser.parse_args()

    wait_at_barrier_before_create(Path(args.barrier), args.name)
    partitions = args.partitions.split(",")
    failed = 0
    with dg.DagsterInstance.from_config(args.home) as instance:
        harness = Harness(
            instance,
            args.base_url,
            rows=args.rows,
            partitions_def=dg.StaticPartitionsDefinition(partitions),
            resource_options={
                "max_requests_per_batch": args.max_requests_per_batch,
                "backoff_seconds": 0.05,
            },
        )
        for partition in partitions:
            started = time.monotonic()
            result = harness.submit_without_raising(partition)
            failed += not result.success
            outcome = "ok" if result.success else "failed"
            print(f"{partition} {outcome} {time.monotonic() - started:.1f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
