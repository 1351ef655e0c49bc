"""Two Dagster homes, as two hosts, that share only Postgres and an S3 bucket.

One home submits; the other's sensor collects, reading the upstream rows through an IO
manager on the bucket and storing the answers in the answer store on the bucket. The
first home's next submission of the same rows is answered from that store: no upload,
no batch.
"""

from __future__ import annotations

from collections import Counter

import dagster as dg
import fsspec
import pytest

from tests.dagster_harness import Harness
from tests.provider_state import provider_batches

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ROWS = 4


def test_submit_on_one_home_collect_on_another_sharing_postgres_and_a_bucket(
    postgres_server, s3_bucket, batch_server, tmp_path, monkeypatch
):
    server = batch_server(api_key="test-key", validating_seconds=0.05, finalizing_seconds=0.05)
    monkeypatch.setenv("INFERENCE_BATCH_ANSWER_STORE", f"s3://{s3_bucket}/answers")
    database = postgres_server.create_database()
    homes = [tmp_path / "host-a", tmp_path / "host-b"]
    for home in homes:
        home.mkdir()
        (home / "dagster.yaml").write_text(postgres_server.dagster_yaml(database))

    def harness(instance: dg.DagsterInstance) -> Harness:
        # values on the bucket (UPath: s3fs, reaching moto through AWS_ENDPOINT_URL)
        io_manager = dg.FilesystemIOManager(base_dir=f"s3://{s3_bucket}/io")
        return Harness(instance, server.base_url, rows=ROWS, io_manager=io_manager)

    with (
        dg.DagsterInstance.from_config(str(homes[0])) as host_a,
        dg.DagsterInstance.from_config(str(homes[1])) as host_b,
    ):
        submitter, collector = harness(host_a), harness(host_b)
        assert submitter.submit().success
        collector.tick_until(collector.results_done)
        (collected,) = collector.collect_runs
        assert host_a.get_run_by_id(collected.run_id) is not None  # one shared run storage
        frame = collector.results_frame()
        assert Counter(frame["status"]) == {"succeeded": ROWS}
        assert len(provider_batches(server)) == 1

        # the same rows again, from the first host: every answer is in the bucket's store
        assert submitter.submit().success
        latest = submitter.materializations(submitter.pipeline.input_file_key)[-1]
        assert latest.metadata["inference_batch/rows_reused"].value == ROWS
        assert len(provider_batches(server)) == 1
    # the hosts' own disks hold only their compute logs; the values are in the bucket
    local = [p for home in homes for p in home.glob("storage/**/*") if p.is_file()]
    assert all("compute_logs" in p.parts for p in local), local
    stored = fsspec.filesystem("s3").ls(f"{s3_bucket}/io")
    assert {p.rsplit("/", 1)[-1] for p in stored} >= {"prompts", "llm_results"}, stored
