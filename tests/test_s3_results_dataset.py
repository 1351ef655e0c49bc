"""Results streamed into a Parquet dataset on S3-compatible storage (moto's server).

Through the client (`results_dataset` to an `s3://` URL, its handle read back on
"another machine" by URL alone, and a second job answered wholly from an answer store on
the same bucket) and through the factory (`results_format="parquet_dataset"` with
`results_location` on the bucket, and the handle stored by an IO manager on the bucket
too, so nothing the steps share is on local disk).
"""

from __future__ import annotations

import pickle
from collections import Counter

import dagster as dg
import fsspec
import pandas as pd

from dagster_inference_batch import InferenceBatchClient
from dagster_inference_batch.results_stream import DATA_FILE, ResultsDataset
from tests.dagster_harness import Harness
from tests.server_fixtures import SHARED_API_KEY
from tests.test_graph_results import NO_COMPUTE_LOGS, evaluations
from tests.test_results_stream import by_id

ROWS = 6


def test_client_streams_results_to_s3_and_another_reader_finds_them_by_url(
    shared_batch_server, s3_bucket, monkeypatch
) -> None:
    monkeypatch.setenv("INFERENCE_BATCH_ANSWER_STORE", f"s3://{s3_bucket}/answers")
    ids = [f"r{i}" for i in range(ROWS)]
    lines = [{"custom_id": c, "body": {"model": "m", "prompt": f"to s3 {c}"}} for c in ids]
    inputs = pd.DataFrame({"custom_id": ids[::-1], "topic": [f"t{i}" for i in range(ROWS)]})
    first_url, second_url = f"s3://{s3_bucket}/results/first", f"s3://{s3_bucket}/results/second"
    with InferenceBatchClient(
        api_key=SHARED_API_KEY, base_url=shared_batch_server.base_url
    ) as client:
        job = client.wait(client.submit(lines, endpoint="/v1/completions"), poll_interval=0.1)
        handle = client.results_dataset(job, first_url, inputs)
        expected = client.results(job, inputs)
        # the same lines again: every answer is in the store on the bucket, no batch
        again = client.submit(lines, endpoint="/v1/completions")
        assert (again.rows_reused, again.batch_ids) == (ROWS, [])
        from_store = client.results_dataset(again, second_url, inputs)

    # another machine: the handle (URL and summary, no credentials) or the URL alone
    reader = pickle.loads(pickle.dumps(handle))
    assert reader.url == first_url and reader.summary.rows == ROWS
    frame = reader.to_pandas()
    pd.testing.assert_frame_equal(by_id(frame), by_id(expected), check_dtype=False)
    assert reader.dataset().count_rows() == ROWS and reader.summary.statuses["succeeded"] == ROWS
    assert Counter(pd.read_parquet(first_url, columns=["status"])["status"]) == {"succeeded": ROWS}
    stored = from_store.to_pandas()
    assert set(stored["source"]) == {"store"}
    answers = ["custom_id", "status", "content", "topic"]
    pd.testing.assert_frame_equal(by_id(stored)[answers], by_id(frame)[answers])

    # one data file per dataset, nothing else (no temporary or partial objects)
    written = fsspec.filesystem("s3", skip_instance_cache=True).find(f"{s3_bucket}/results")
    assert sorted(written) == [
        f"{s3_bucket}/results/{name}/{DATA_FILE}" for name in ("first", "second")
    ]


def test_results_asset_streams_to_the_bucket_and_its_handle_is_stored_there(
    shared_batch_server, s3_bucket
) -> None:
    with dg.instance_for_test(overrides=NO_COMPUTE_LOGS) as instance:
        harness = Harness(
            instance,
            shared_batch_server.base_url,
            rows=ROWS,
            results_wait_seconds=30,
            results_format="parquet_dataset",
            results_location=f"s3://{s3_bucket}/results",
            io_manager=dg.FilesystemIOManager(base_dir=f"s3://{s3_bucket}/io"),
        )
        keys = harness.pipeline
        run = harness.materialize(keys.input_file_key, keys.batch_key, keys.results_key)
        assert run.success
        handle = harness.results_frame()  # loaded by the IO manager, from the bucket

    assert isinstance(handle, ResultsDataset)
    assert handle.url == f"s3://{s3_bucket}/results/llm_results/__unpartitioned/{run.run_id}"
    frame = handle.to_pandas()
    assert sorted(frame["custom_id"]) == [f"row-{i}" for i in range(ROWS)]
    assert Counter(frame["status"]) == {"succeeded": ROWS}
    assert frame["prompt"].str.startswith("Say hello").all()  # the upstream's column
    metadata = run.asset_materializations_for_node(keys.results_key.to_python_identifier())[0]
    assert metadata.metadata["inference_batch/succeeded"].value == ROWS
    checks = evaluations(run)
    assert checks and all(check.passed for check in checks.values()), checks
    stored = fsspec.filesystem("s3", skip_instance_cache=True).ls(f"{s3_bucket}/io")
    assert {p.rsplit("/", 1)[-1] for p in stored} >= {"prompts", "llm_results"}, stored
