"""InferenceBatchClient against the local server over real HTTP (issue 3's 'done when')."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter

import openai
import pandas as pd
import pytest

from dagster_inference_batch import (
    BatchFailedError,
    BatchJob,
    BatchWaitTimeout,
    InferenceBatchClient,
    InvalidBatchInput,
)
from dagster_inference_batch.batch_record import BatchShard

API_KEY = "test-key"


def chat_requests(n: int, *, model: str = "demo-model", prefix: str = "req") -> pd.DataFrame:
    ids = [f"{prefix}-{i}" for i in range(n)]
    bodies = [
        {"model": model, "messages": [{"role": "user", "content": f"Say hello to {i}"}]}
        for i in range(n)
    ]
    return pd.DataFrame({"custom_id": ids, "body": bodies})


def make_client(server, **kwargs) -> InferenceBatchClient:
    kwargs.setdefault("backoff_seconds", 0.05)
    return InferenceBatchClient(api_key=API_KEY, base_url=server.base_url, **kwargs)


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)


def server_batches(server) -> list:
    return list(sdk(server).batches.list(limit=100))


def server_file_count(server) -> int:
    return len(list(sdk(server).files.list(purpose="batch")))


@pytest.fixture
def fast_server(batch_server):
    return batch_server(api_key=API_KEY, validating_seconds=0.05, finalizing_seconds=0.05)


def test_sharded_job_joins_every_row_whatever_the_order(fast_server):
    inputs = chat_requests(1_050)
    client = make_client(fast_server, max_requests_per_batch=100)
    job = client.wait(client.submit(inputs), poll_interval=0.2, timeout=120)

    assert len(job.shards) == 11
    assert len({s.batch_id for s in job.shards}) == 11
    assert sum(s.request_count for s in job.shards) == 1_050
    assert job.status == "completed"

    frame = client.results(job, inputs)
    assert len(frame) == 1_050
    assert frame["custom_id"].tolist() == inputs["custom_id"].tolist()
    assert set(frame["status"]) == {"succeeded"}
    # each answer belongs to its own request: the offline responder echoes the prompt
    for custom_id, content in zip(frame["custom_id"][:50], frame["content"][:50], strict=True):
        assert custom_id.split("-")[1] in content
    assert frame["prompt_tokens"].notna().all()
    assert job.usage()["total_tokens"] > 0


def test_results_without_inputs_reads_ids_from_the_uploaded_files(fast_server):
    client = make_client(fast_server, max_requests_per_batch=7)
    job = client.wait(client.submit(chat_requests(20)), poll_interval=0.2, timeout=60)
    frame = client.results(job)
    assert sorted(frame["custom_id"]) == sorted(f"req-{i}" for i in range(20))
    assert set(frame["status"]) == {"succeeded"}


def test_submitting_twice_reuses_the_batches(fast_server):
    client = make_client(fast_server, max_requests_per_batch=30)
    inputs = chat_requests(100)
    first = client.submit(inputs, metadata={"team": "search"})
    second = client.submit(inputs, metadata={"team": "search"})
    assert first.batch_ids == second.batch_ids
    assert len(first.batch_ids) == 4
    batches = server_batches(fast_server)
    assert len(batches) == 4
    assert all(b.metadata["team"] == "search" for b in batches)
    assert Counter(b.metadata["idempotency_key"] for b in batches).most_common(1)[0][1] == 1


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import pandas as pd
    from dagster_inference_batch import InferenceBatchClient

    base_url, mode = sys.argv[1], sys.argv[2]
    n = 60
    inputs = pd.DataFrame({
        "custom_id": [f"req-{i}" for i in range(n)],
        "body": [{"model": "demo-model", "messages": [{"role": "user", "content": f"hi {i}"}]}
                 for i in range(n)],
    })
    client = InferenceBatchClient(api_key="test-key", base_url=base_url,
                                  max_requests_per_batch=25)
    if mode == "after-upload":
        client.upload(inputs)
        os._exit(3)
    real_create = client._openai.batches.create
    def create_then_die(**kwargs):
        real_create(**kwargs)
        os._exit(3)  # the batch exists, but the caller never hears of it
    client._openai.batches.create = create_then_die
    client.submit(inputs)
    """
)


@pytest.mark.parametrize("mode", ["after-upload", "after-create"])
def test_rerun_after_a_crash_never_pays_twice(fast_server, mode, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    died = subprocess.run(
        [sys.executable, str(script), fast_server.base_url, mode],
        capture_output=True,
        timeout=120,
        env={**os.environ},
    )
    assert died.returncode == 3, died.stderr.decode()
    files_after_crash = server_file_count(fast_server)

    inputs = pd.DataFrame(
        {
            "custom_id": [f"req-{i}" for i in range(60)],
            "body": [
                {"model": "demo-model", "messages": [{"role": "user", "content": f"hi {i}"}]}
                for i in range(60)
            ],
        }
    )
    client = make_client(fast_server, max_requests_per_batch=25)
    job = client.submit(inputs)
    assert len(job.shards) == 3
    assert len(server_batches(fast_server)) == 3  # one per shard, never a second paid batch
    assert server_file_count(fast_server) == files_after_crash  # uploads were reused too
    job = client.wait(job, poll_interval=0.2, timeout=60)
    assert set(client.results(job, inputs)["status"]) == {"succeeded"}


def test_expired_rows_are_kept_and_resubmitted(batch_server):
    # every batch expires right after 120 of its requests are answered
    server = batch_server(api_key=API_KEY, expire_after_requests=120)
    client = make_client(server)
    inputs = chat_requests(200)
    job = client.wait(client.submit(inputs), poll_interval=0.1, timeout=60)
    assert job.status == "expired"

    first = client.results(job, inputs)
    assert first["status"].value_counts().to_dict() == {"succeeded": 120, "expired": 80}
    finished_first = set(first.loc[first.status == "succeeded", "custom_id"])

    retry = client.resubmit(job)
    assert retry.attempt == 2
    assert sum(s.request_count for s in retry.current_shards) == 80
    assert client.resubmit(job).batch_ids == retry.batch_ids  # resubmission is idempotent

    done = client.wait(retry, poll_interval=0.1, timeout=60)
    assert done.status == "completed"
    frame = client.results(done, inputs)
    assert len(frame) == 200
    assert set(frame["status"]) == {"succeeded"}
    kept = frame[frame.custom_id.isin(finished_first)]
    assert set(kept["attempt"]) == {1}  # finished results of attempt 1 were kept, not redone
    assert set(frame.loc[~frame.custom_id.isin(finished_first), "attempt"]) == {2}
    assert client.resubmit(done).batch_ids == done.batch_ids  # nothing left to resubmit


def test_provider_validation_failure_is_raised_with_its_errors(fast_server):
    api = sdk(fast_server)
    bad = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}\nnot json\n'
    uploaded = api.files.create(file=("bad.jsonl", bad), purpose="batch")
    job = BatchJob(
        endpoint="/v1/chat/completions",
        idempotency_key="hand-made",
        shards=[
            BatchShard(
                index=0,
                attempt=1,
                idempotency_key="hand-made#s0a1",
                file_id=uploaded.id,
                request_count=2,
                bytes=len(bad),
                sha256="",
            )
        ],
    )
    client = make_client(fast_server)
    job = client.wait(client.create(job), poll_interval=0.1, timeout=30)
    assert job.status == "failed"
    with pytest.raises(BatchFailedError) as raised:
        client.results(job)
    assert raised.value.errors
    assert raised.value.errors[0]["line"] == 2
    assert "line 2" in str(raised.value)


def test_server_side_limit_failure_names_the_batch(batch_server):
    server = batch_server(api_key=API_KEY, max_requests_per_batch=5, validating_seconds=0.05)
    client = make_client(server)
    job = client.wait(client.submit(chat_requests(8)), poll_interval=0.1, timeout=30)
    assert job.status == "failed"
    with pytest.raises(BatchFailedError, match=job.batch_ids[0]):
        client.results(job)


def test_flaky_slow_api_still_accounts_for_every_row(batch_server):
    server = batch_server(api_key=API_KEY, fault_rate=0.2, latency_ms=50, seed=7)
    client = make_client(server, max_requests_per_batch=1_000, max_retries=12)
    inputs = chat_requests(5_000)
    job = client.wait(client.submit(inputs), poll_interval=0.3, timeout=240)
    assert job.status == "completed"
    frame = client.results(job, inputs)
    assert len(frame) == 5_000
    assert frame["custom_id"].is_unique
    assert set(frame["status"]) == {"succeeded"}

    keys = [b.metadata["idempotency_key"] for b in _list_all_batches_despite_faults(server)]
    assert len(keys) == 5 == len(set(keys))  # no duplicate batch


def _list_all_batches_despite_faults(server) -> list:
    client = openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=20)
    return list(client.batches.list(limit=100))


BAD_INPUTS = {
    "missing custom_id": (
        [{"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}],
        "line 1",
    ),
    "duplicate custom_id": (
        [
            {
                "custom_id": "x",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m"},
            },
            {
                "custom_id": "x",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m"},
            },
        ],
        "x",
    ),
    "method": (
        [
            {
                "custom_id": "a",
                "method": "GET",
                "url": "/v1/chat/completions",
                "body": {"model": "m"},
            }
        ],
        "a",
    ),
    "url": (
        [{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}],
        "a",
    ),
    "no model": (
        [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}],
        "a",
    ),
    "nan": (
        [
            {
                "custom_id": "a",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "temperature": float("nan")},
            }
        ],
        "a",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_any_upload(fast_server, case):
    lines, named = BAD_INPUTS[case]
    client = make_client(fast_server)
    before = server_file_count(fast_server)
    with pytest.raises(InvalidBatchInput) as raised:
        client.submit(lines)
    assert named in str(raised.value)
    assert server_file_count(fast_server) == before
    assert server_batches(fast_server) == []


def test_cancel_keeps_finished_rows(batch_server):
    server = batch_server(api_key=API_KEY, requests_per_second=50)
    client = make_client(server)
    inputs = chat_requests(300)
    job = client.submit(inputs)
    deadline = time.monotonic() + 30
    while client.refresh(job).request_counts()["completed"] < 10:
        assert time.monotonic() < deadline, "the server answered nothing in 30 s"
        time.sleep(0.05)
    job = client.wait(client.cancel(job), poll_interval=0.1, timeout=30)
    assert job.status == "cancelled"
    frame = client.results(job, inputs)
    counts = frame["status"].value_counts().to_dict()
    assert counts.get("succeeded", 0) >= 10
    assert counts["succeeded"] + counts["cancelled"] == 300


def test_wait_timeout_leaves_batches_running(batch_server):
    server = batch_server(api_key=API_KEY, requests_per_second=5)
    client = make_client(server)
    job = client.submit(chat_requests(50))
    started = time.monotonic()
    with pytest.raises(BatchWaitTimeout, match="keep running"):
        client.wait(job, poll_interval=30, timeout=0.5)  # waits the timeout, not a poll
    assert 0.5 <= time.monotonic() - started < 10
    assert client.refresh(job).status in {"validating", "in_progress"}


def test_wait_needs_created_batches(fast_server):
    client = make_client(fast_server)
    uploaded = client.upload(chat_requests(3))
    with pytest.raises(ValueError, match="create"):
        client.wait(uploaded, timeout=1)


def test_same_key_with_other_lines_gets_its_own_batches(fast_server):
    client = make_client(fast_server)
    hello = chat_requests(5, prefix="x")
    world = hello.assign(
        body=[{**b, "messages": [{"role": "user", "content": "Say world"}]} for b in hello.body]
    )
    first = client.wait(client.submit(hello, idempotency_key="nightly"), poll_interval=0.1)
    second = client.wait(client.submit(world, idempotency_key="nightly"), poll_interval=0.1)
    assert set(first.batch_ids).isdisjoint(second.batch_ids)
    assert {s.file_id for s in first.shards}.isdisjoint(s.file_id for s in second.shards)
    answers = client.results(second, world)["content"]
    assert all("world" in answer for answer in answers), answers.tolist()
    again = client.submit(world, idempotency_key="nightly")  # answered: nothing to pay
    assert again.batch_ids == [] and again.rows_reused == 5 and again.status == "completed"


def test_cancel_of_a_batch_that_just_finished_is_no_error(fast_server):
    client = make_client(fast_server)
    stale = client.submit(chat_requests(5))
    client.wait(stale, poll_interval=0.1, timeout=30)
    job = client.cancel(stale)  # the provider answers 409: nothing left to cancel
    assert job.status == "completed"


def test_cancelled_before_it_ran_reports_every_row_cancelled(batch_server):
    server = batch_server(api_key=API_KEY, validating_seconds=3)
    client = make_client(server, max_requests_per_batch=10)
    inputs = chat_requests(25)
    job = client.wait(client.cancel(client.submit(inputs)), poll_interval=0.1, timeout=30)
    assert job.status == "cancelled"
    frame = client.results(job, inputs)
    assert frame["status"].tolist() == ["cancelled"] * 25
    assert set(frame["error_code"]) == {"batch_cancelled"}
    assert frame["batch_id"].notna().all()


def test_list_batches_follows_pages(fast_server):
    client = make_client(fast_server, max_requests_per_batch=1)
    job = client.submit(chat_requests(7))
    listed = [b.id for b in client.list_batches(limit=2)]  # four pages of at most two
    assert sorted(listed) == sorted(job.batch_ids)
    assert len(listed) == 7


def test_clean_up_deletes_provider_files(fast_server):
    client = make_client(fast_server, delete_files_after_results=True)
    inputs = chat_requests(10)
    job = client.wait(client.submit(inputs), poll_interval=0.1, timeout=30)
    assert len(client.results(job, inputs)) == 10
    assert server_file_count(fast_server) == 0


def test_the_key_never_reaches_errors_or_logs(batch_server, caplog):
    secret = "sk-very-secret-4242"
    server = batch_server(api_key=secret, fault_rate=0.3, seed=3)
    caplog.set_level(logging.DEBUG)
    client = InferenceBatchClient(api_key=secret, base_url=server.base_url, backoff_seconds=0.01)
    job = client.wait(client.submit(chat_requests(20)), poll_interval=0.1, timeout=60)
    client.results(job)
    wrong = InferenceBatchClient(api_key=secret + "-wrong", base_url=server.base_url)
    with pytest.raises(Exception) as raised:
        wrong.submit(chat_requests(3))
    assert "401" in str(raised.value)
    assert secret not in str(raised.value)
    assert secret not in repr(client) and secret not in repr(wrong)
    assert caplog.records, "the client logs its work"
    assert all(secret not in record.getMessage() for record in caplog.records)
