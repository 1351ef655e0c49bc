"""Results streamed into a Parquet dataset (``results_format="parquet_dataset"``).

The dataset must hold exactly the in-memory join's rows and values (in file order), be
readable by pandas, pyarrow.dataset and DuckDB, work on any fsspec URL, and give the
results asset the same metadata and checks as the DataFrame mode on the same batch.
Its memory bound is a benchmark (``bench/bench_stream.py``), not a test.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import fsspec
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from dagster_inference_batch import id_index, results
from dagster_inference_batch.batch_record import BatchJob
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from dagster_inference_batch.results import collect_results
from dagster_inference_batch.results_stream import (
    DATA_FILE,
    ResultsDataset,
    write_results_dataset,
)
from dagster_inference_batch.results_summary import failure_rate, results_summary
from dagster_inference_batch.results_tally import ResultsTally
from tests.dagster_harness import Harness
from tests.test_embeddings_responses import embedding_body, output_line, write_lines
from tests.test_graph_results import NO_COMPUTE_LOGS, evaluations
from tests.test_results import Files, batch_error, chat_ok, completion_ok, http_error


@pytest.fixture
def files(tmp_path: Path) -> Files:
    (tmp_path / "files").mkdir()
    return Files(tmp_path / "files")


def in_memory(files_: list, wanted: list[str], inputs: pd.DataFrame | None) -> pd.DataFrame:
    """What ``InferenceBatchClient.results`` returns for the same files (no store)."""
    frame = collect_results(files_, wanted, inputs)
    frame.insert(frame.columns.get_loc("status") + 1, "source", "batch")
    return frame


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("custom_id").reset_index(drop=True)


@pytest.fixture
def attempts(files: Files, monkeypatch: pytest.MonkeyPatch) -> list:
    """Two attempts over 40 ids in small blocks (many chunks): successes, HTTP errors,
    expiries retried, a repeated line, a line nobody asked for."""
    monkeypatch.setattr(results, "_BLOCK_BYTES", 700)
    first = files(
        [chat_ok(f"id-{i}", f"first {i}") for i in range(0, 20)]
        + [http_error("id-20", 500, {"code": "server_error", "message": "boom"})]
        + [chat_ok("stranger", "not asked")],
        batch_id="b1",
    )
    expired = files([batch_error(f"id-{i}", "batch_expired") for i in range(21, 30)], "error", "b1")
    second = files(
        [completion_ok(f"id-{i}", f"second {i}") for i in range(21, 28)]
        + [chat_ok("id-3", "again")],
        batch_id="b2",
        attempt=2,
    )
    return [first, expired, second]


WANTED = [f"id-{i}" for i in range(40)]
INPUTS = pd.DataFrame(
    {"custom_id": WANTED[::-1], "prompt": [f"q{i}" for i in range(40)], "status": "x"}
)


def test_the_dataset_holds_the_in_memory_rows(attempts, tmp_path) -> None:
    handle = write_results_dataset(attempts, WANTED, str(tmp_path / "ds"), INPUTS)
    expected = in_memory(attempts, WANTED, INPUTS)

    streamed = handle.to_pandas()
    assert list(streamed.columns) == list(expected.columns)
    assert "status_input" in streamed.columns  # clashing input names get the suffix
    pd.testing.assert_frame_equal(by_id(streamed), by_id(expected), check_dtype=False)
    assert [str(t) for t in streamed.dtypes[:14]] == [str(t) for t in expected.dtypes[:14]]
    # answered ids in the order of their winning lines in the files, then the rest
    first = [i for i in range(21) if i != 3]  # id-3 answered again in attempt 2: that wins
    order = [*first, 28, 29, *range(21, 28), 3, *range(30, 40)]
    assert streamed["custom_id"].tolist() == [f"id-{i}" for i in order]
    assert streamed.set_index("custom_id").loc["id-3", "content"] == "again"

    by_pandas = pd.read_parquet(handle.url)
    assert by_pandas["custom_id"].tolist() == streamed["custom_id"].tolist()
    lazy = handle.dataset()
    assert isinstance(lazy, ds.Dataset)
    failed = lazy.to_table(filter=ds.field("status") == "failed", columns=["custom_id"])
    assert failed["custom_id"].to_pylist() == ["id-20"]


def test_duckdb_reads_the_dataset(attempts, tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    handle = write_results_dataset(attempts, WANTED, str(tmp_path / "ds"), INPUTS)
    counts = duckdb.sql(
        f"select status, count(*) from read_parquet('{handle.url}/*.parquet') "
        "group by status order by status"
    ).fetchall()
    assert counts == [("expired", 2), ("failed", 1), ("missing", 10), ("succeeded", 27)]


def test_the_summary_is_the_in_memory_one(attempts, tmp_path) -> None:
    handle = write_results_dataset(attempts, WANTED, str(tmp_path / "ds"), INPUTS)
    expected = ResultsTally.of(in_memory(attempts, WANTED, INPUTS))
    summary = handle.summary
    for field in ("rows", "distinct_ids", "statuses", "tokens", "batch_tokens", "dtypes"):
        assert getattr(summary, field) == getattr(expected, field), field
    assert summary.statuses["missing"] == 10 and summary.tokens["total_tokens"] > 0
    # what 15's markdown summary and failure rate and 16's invalid counts are made from
    assert summary.errors == expected.errors and summary.invalid == expected.invalid == {}
    assert summary.errors["server_error"] == (1, "boom")
    frame = in_memory(attempts, WANTED, INPUTS)
    job = BatchJob(endpoint="/v1/chat/completions", idempotency_key="k")
    usage = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    assert results_summary(summary, job, usage, None) == results_summary(frame, job, usage, None)
    assert failure_rate(summary) == failure_rate(frame) == 0.325


def _digits_or_3(ids) -> np.ndarray:
    """A weak hash: ``id-<n>`` hashes to n, anything else to 3 (``id-3``'s hash)."""
    texts = ids.to_pylist()
    return np.array([int(s[3:]) if s.startswith("id-") else 3 for s in texts], np.uint64)


@pytest.mark.parametrize(
    "weak_hash",
    [lambda ids: np.zeros(len(ids), np.uint64), _digits_or_3],
    ids=["every id one hash", "a stranger shares id-3's hash"],
)
def test_hash_collisions_never_attach_an_answer_to_another_id(
    attempts, tmp_path, monkeypatch, weak_hash
) -> None:
    monkeypatch.setattr(id_index, "hash_ids", weak_hash)
    handle = write_results_dataset(attempts, WANTED, str(tmp_path / "ds"), INPUTS)
    expected = in_memory(attempts, WANTED, INPUTS)
    pd.testing.assert_frame_equal(by_id(handle.to_pandas()), by_id(expected), check_dtype=False)
    assert "stranger" not in set(handle.to_pandas()["custom_id"])
    with pytest.raises(ValueError, match="they repeat 'id-1'"):
        write_results_dataset(attempts, [*WANTED, "id-1"], str(tmp_path / "ds2"))


def test_any_fsspec_url(attempts) -> None:
    url = "memory://results/run-1"
    handle = write_results_dataset(attempts, WANTED, url)
    assert handle.url == url
    assert handle.to_pandas(["custom_id"])["custom_id"].nunique() == 40
    assert pd.read_parquet(url)["status"].value_counts()["missing"] == 10


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_write_failing_part_way_leaves_no_dataset(attempts, tmp_path, where, request) -> None:
    if where == "s3":  # moto's server (tests/s3_fixtures.py): closing uploads what was written
        url = f"s3://{request.getfixturevalue('s3_bucket')}/results/run-1"
    else:
        url = str(tmp_path / "ds")

    def unreachable(missing: set[str]) -> dict[str, tuple[str, str, int]]:
        raise ConnectionError("the provider is unreachable")

    # 30 answered rows are written before the 10 unanswered ones need their owners
    with pytest.raises(ConnectionError, match="unreachable"):
        write_results_dataset(attempts, WANTED, url, owners=unreachable)
    fs, path = fsspec.core.url_to_fs(url)
    assert not fs.exists(f"{path}/{DATA_FILE}")


def test_unanswered_ids_take_the_status_of_their_ended_batch(attempts, tmp_path) -> None:
    def owners(missing: set[str]) -> dict[str, tuple[str, str, int]]:
        return {c: ("cancelled", "b2", 2) for c in missing if c in {"id-30", "id-31"}}

    handle = write_results_dataset(attempts, WANTED, str(tmp_path / "ds"), owners=owners)
    frame = handle.to_pandas().set_index("custom_id")
    assert frame.loc["id-30", "status"] == "cancelled" and frame.loc["id-30", "attempt"] == 2
    assert frame.loc["id-32", "status"] == "missing"
    assert handle.summary.statuses["cancelled"] == 2


def test_embeddings_keep_their_vectors(tmp_path) -> None:
    vectors = {c: np.full(4, i, dtype=np.float32) for i, c in enumerate("ab")}
    lines = [output_line(c, embedding_body([v], "float")) for c, v in vectors.items()]
    path = write_lines(tmp_path / "out.jsonl", lines)
    files_ = [results.ResultFile(path, "output", "b", 1)]
    handle = write_results_dataset(files_, ["a", "b", "c"], str(tmp_path / "ds"))
    frame = handle.to_pandas()
    np.testing.assert_array_equal(frame.embedding[1], vectors["b"])
    assert frame.embedding[2] is None and handle.summary.embedding_dimension == 4


def test_repeated_requested_ids_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="they repeat 'a'"):
        write_results_dataset([], ["a", "b", "a"], str(tmp_path / "ds"))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"parse_content": dict}, "parse_content"),
        (
            {"response_model": {"type": "object", "properties": {"a": {"type": "string"}}}},
            "response_model works with results_format='dataframe'",
        ),
    ],
)
def test_content_options_need_the_dataframe_format(option, message) -> None:
    with pytest.raises(ValueError, match=message):
        Harness(
            dg.DagsterInstance.ephemeral(),
            "http://127.0.0.1:1/v1",
            results_format="parquet_dataset",
            **option,
        )


# ------------------------------------------------------------------ the results asset

SAME_KEYS = ("succeeded", "failed", "missing", "input_tokens", "total_tokens", "request_count")


def test_the_asset_returns_the_handle_with_the_same_metadata_and_checks(
    shared_batch_server,
) -> None:
    outcomes = {}
    for results_format in ("dataframe", "parquet_dataset"):
        with dg.instance_for_test(overrides=NO_COMPUTE_LOGS) as instance:
            harness = Harness(
                instance,
                shared_batch_server.base_url,
                rows=6,
                results_wait_seconds=30,
                incremental=False,  # no answers shared between the two runs
                results_format=results_format,
            )
            keys = harness.pipeline
            run = harness.materialize(keys.input_file_key, keys.batch_key, keys.results_key)
            assert run.success
            node = keys.results_key.to_python_identifier()
            value = run.output_for_node(node)
            if isinstance(value, ResultsDataset):  # by default under the instance's storage
                assert value.url.startswith(instance.storage_directory())
                assert value.url.endswith(f"/llm_results/__unpartitioned/{run.run_id}")
                assert os.listdir(value.url) == [DATA_FILE]
                value = value.to_pandas()  # read while the instance's folder exists
            metadata = run.asset_materializations_for_node(node)[0].metadata
            outcomes[results_format] = (value, metadata, evaluations(run))

    frame, memory_meta, memory_checks = outcomes["dataframe"]
    streamed, stream_meta, stream_checks = outcomes["parquet_dataset"]
    pd.testing.assert_frame_equal(by_id(streamed), by_id(frame), check_dtype=False)

    # the same keys and values, but for the run's own ids and storage path, and the
    # preview's first rows, which follow the output file's order in the dataset
    ignored = {"path", "inference_batch/collected_storage_id", "inference_batch/job_key",
               "inference_batch/batch_ids", "inference_batch/seconds_to_final",
               "inference_batch/preview"}  # fmt: skip
    assert set(stream_meta) == set(memory_meta)
    for key in set(memory_meta) - ignored:
        assert stream_meta[key] == memory_meta[key], key
    preview = stream_meta["inference_batch/preview"]
    assert preview.schema == memory_meta["inference_batch/preview"].schema
    assert len(preview.records) == 6
    assert InferenceBatchMetadataSet.extract(stream_meta).succeeded == 6

    assert set(stream_checks) == set(memory_checks)
    for name, check in stream_checks.items():
        assert check.passed and memory_checks[name].passed
        assert check.metadata == memory_checks[name].metadata
