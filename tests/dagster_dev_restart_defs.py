"""Code location for `tests/test_e2e_dagster_dev_restart.py`: the `tests.dagster_harness`
pipeline (`prompts` -> `llm_input_file` -> `llm_batch` -> `llm_results`) in two shards,
served by `dagster dev -m tests.dagster_dev_restart_defs`.

The server comes from the environment: `RESTART_TEST_BASE_URL` and `RESTART_TEST_API_KEY`
(both passed to the resource explicitly, so nothing depends on the resource's own
environment lookup), `RESTART_TEST_ROWS` and `RESTART_TEST_PER_BATCH`.
"""

import os

import dagster as dg

from dagster_inference_batch import InferenceBatchResource, build_inference_batch_assets
from tests.dagster_harness import MODEL, NAME, prompts_asset

ROWS = int(os.environ.get("RESTART_TEST_ROWS", "20"))
PER_BATCH = int(os.environ.get("RESTART_TEST_PER_BATCH", "10"))
SUBMIT_JOB = f"{NAME}_daily"

prompts = prompts_asset(ROWS, None)
pipeline = build_inference_batch_assets(
    NAME,
    upstream=prompts,
    prompt_column="prompt",
    model=MODEL,
    results_wait_seconds=0,
    sensor_interval_seconds=1,
)
defs = dg.Definitions.merge(
    pipeline.defs,
    dg.Definitions(
        assets=[prompts],
        jobs=[
            dg.define_asset_job(
                SUBMIT_JOB,
                selection=dg.AssetSelection.assets(
                    prompts.key, pipeline.input_file_key, pipeline.batch_key
                ),
            )
        ],
        # one process per run, not one per step: the test is about restarts, not the executor
        executor=dg.in_process_executor,
        resources={
            "inference_batch": InferenceBatchResource(
                base_url=os.environ.get("RESTART_TEST_BASE_URL"),
                api_key=os.environ.get("RESTART_TEST_API_KEY"),
                max_requests_per_batch=PER_BATCH,
            )
        },
    ),
)
