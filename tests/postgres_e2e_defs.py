"""Code location for `tests/test_e2e_postgres.py`, served by
`dagster dev -d REPO -m tests.postgres_e2e_defs`: the demo (`definitions.py`) and the
`tests.dagster_harness` pipeline partitioned into `BACKFILL` (twenty partitions, for a
backfill) and `RACE` (two submissions at once), in two shards per partition. Each
partition's prompts name it: with the same prompts everywhere, the race's rows would be
answered from the answer store (the backfill's, collected first) and no run would create
a batch.

The harness pipeline's resource talks to `INFERENCE_BASE_URL`, as the demo's does. With
`POSTGRES_E2E_BARRIER` set, each run's batch create of `RACE` waits at that barrier until
another run's reaches it (`tests/race_submit.py`), so two runs of it create together. The
race's `prompts` are materialized once (`PROMPTS_JOB`), then the racers run the factory's
`llm_submit`.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

import definitions as demo
from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets
from tests.dagster_harness import MODEL, NAME, prompts_asset
from tests.race_submit import wait_at_barrier_before_create
from tests.test_graph_idempotency import API_KEY, RACE_PER_BATCH, RACE_ROWS

BACKFILL = [f"p{i:02d}" for i in range(20)]
RACE = "race"
SUBMIT_JOB = f"{NAME}_prompts_and_submit"  # `prompts`, then the factory's `llm_submit`
PROMPTS_JOB = "prompts_only"  # the race's prompts, once: racers writing them at once would
# truncate the IO manager's file under each other's reads
RESOURCE_KEY = "harness_batch"

partitions = dg.StaticPartitionsDefinition([*BACKFILL, RACE])
prompts = prompts_asset(RACE_ROWS, partitions, distinct=True)
pipeline = build_inference_batch_assets(
    NAME,
    upstream=prompts,
    partitions_def=partitions,
    prompt_column="prompt",
    model=MODEL,
    results_wait_seconds=0,
    sensor_interval_seconds=3,
    resource_key=RESOURCE_KEY,
)
RACE_JOB = pipeline.submit_job.name  # `llm_submit`: input file and batch

if os.environ.get("POSTGRES_E2E_BARRIER"):
    wait_at_barrier_before_create(
        Path(os.environ["POSTGRES_E2E_BARRIER"]), f"pid{os.getpid()}", partition=RACE
    )

defs = dg.Definitions.merge(
    demo.defs,
    pipeline.defs,
    dg.Definitions(
        assets=[prompts],
        jobs=[
            dg.define_asset_job(PROMPTS_JOB, selection=dg.AssetSelection.assets(prompts.key)),
            dg.define_asset_job(
                SUBMIT_JOB,
                selection=dg.AssetSelection.assets(
                    prompts.key, pipeline.input_file_key, pipeline.batch_key
                ),
            ),
        ],
        # one process per run (the run launcher's), not one more per step
        executor=dg.in_process_executor,
        resources={
            RESOURCE_KEY: InferenceBatchResource(
                base_url=os.environ.get("INFERENCE_BASE_URL"),
                api_key=API_KEY,
                max_requests_per_batch=RACE_PER_BATCH,
                backoff_seconds=0.05,
            )
        },
    ),
)
