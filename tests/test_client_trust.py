"""The client's promises against providers that misbehave the way real ones do: never a
second paid batch after a hiccup, never a lost answer to an inconsistent read, and
nothing uploaded (or left behind) for a create the provider would refuse."""

from __future__ import annotations

import logging
import time

import openai
import pytest

from dagster_inference_batch import InferenceBatchClient, InvalidBatchInput
from tests.server_fixtures import completions

API_KEY = "test-key"
LISTINGS = [("GET", "/v1/batches"), ("GET", "/v1/files")]


def client_for(base_url: str, **options) -> InferenceBatchClient:
    options.setdefault("backoff_seconds", 0.01)
    return InferenceBatchClient(api_key=API_KEY, base_url=base_url, **options)


def provider_holds(server) -> tuple[list, list]:
    """(batches, input files) the provider holds, read directly."""
    sdk = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    return list(sdk.batches.list(limit=100)), list(sdk.files.list(purpose="batch").data)


# ----------------------------------------------------------------- idempotency


def test_one_404_on_the_batch_listing_does_not_switch_idempotency_off(provider_server, proxy_to):
    provider = proxy_to(refuse=[("GET", "/v1/batches")], refuse_times=1)
    inputs = completions(4)
    first = client_for(provider.base_url).submit(inputs, endpoint="/v1/completions")
    again = client_for(provider.base_url).submit(inputs, endpoint="/v1/completions")
    assert provider.refused == ["GET /v1/batches"]  # the hiccup happened, once
    assert again.batch_ids == first.batch_ids
    assert provider.batch_creates == 1
    batches, _ = provider_holds(provider_server)
    assert len(batches) == 1


def test_the_same_job_twice_in_one_process_creates_its_batches_once(
    provider_server, proxy_to, caplog
):
    provider = proxy_to(refuse=LISTINGS)  # no listing at all, ever
    inputs = completions(6)
    caplog.set_level(logging.WARNING)
    first_client = client_for(provider.base_url, max_requests_per_batch=3)
    first = first_client.submit(inputs, endpoint="/v1/completions")
    again = client_for(provider.base_url, max_requests_per_batch=3).submit(
        inputs, endpoint="/v1/completions"
    )
    assert len(first.batch_ids) == 2
    assert again.batch_ids == first.batch_ids
    assert provider.batch_creates == 2  # one per shard, not per submit
    batches, files = provider_holds(provider_server)
    assert len(batches) == 2
    assert len(files) == 2  # the second submit's uploads were not left behind
    assert first_client.idempotency == "degraded"
    assert any("idempotency is degraded" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------- inconsistent final reads


def test_a_completed_batch_read_before_its_output_file_id_is_read_again(proxy_to):
    provider = proxy_to(hide_file_ids=2)
    inputs = completions(5)
    client = client_for(provider.base_url)
    job = client.wait(client.submit(inputs, endpoint="/v1/completions"), poll_interval=0.05)
    assert job.status == "completed"
    assert all(reads == 2 for reads in provider.hidden_reads.values())
    frame = client.results(job, inputs)
    assert frame["status"].tolist() == ["succeeded"] * 5


def test_a_batch_that_never_shows_its_files_counts_as_missing_only_after_the_wait(proxy_to):
    provider = proxy_to(hide_file_ids=10**6)
    inputs = completions(4)
    client = client_for(provider.base_url, final_state_wait_seconds=2.5)
    started = time.monotonic()
    submitted = client.submit(inputs, endpoint="/v1/completions")
    job = client.wait(submitted, poll_interval=0.1)
    # read again, not taken at the first read: the wait runs from the provider's
    # completed_at, in whole seconds, so at most one second of it may lie before submit
    assert time.monotonic() - started >= 1.5
    assert job.status == "completed" and job.shards[0].output_file_id is None
    assert client.results(job, inputs)["status"].tolist() == ["missing"] * 4

    again = client.resubmit(job)  # the missing rows go again, as expired ones would
    assert again.attempt == 2
    assert sum(s.request_count for s in again.current_shards) == 4


def test_an_output_file_missing_lines_is_downloaded_again(proxy_to):
    provider = proxy_to(short_downloads=1)
    inputs = completions(8)
    client = client_for(provider.base_url)
    job = client.wait(client.submit(inputs, endpoint="/v1/completions"), poll_interval=0.05)
    frame = client.results(job, inputs)
    assert provider.shorts_left == 0  # one download came back short
    assert frame["status"].tolist() == ["succeeded"] * 8


# ------------------------------------------------------------ refuse before upload


@pytest.mark.parametrize(
    ("submit_options", "named"),
    [
        ({"metadata": {"k" * 65: "v"}}, "metadata key"),
        ({"metadata": {"note": "x" * 513}}, "513 characters"),
        ({"metadata": {"count": 3}}, "strings only"),
        ({"metadata": {f"k{i}": "v" for i in range(14)}}, "at most 13"),
        ({"metadata": {"idempotency_key": "mine"}}, "set by the client"),
        ({"webhook_url": "http://hooks.example.com/batch"}, "webhook_url"),
    ],
)
def test_what_the_provider_would_refuse_is_refused_before_any_upload(
    provider_server, submit_options, named
):
    client = client_for(provider_server.base_url)
    with pytest.raises(InvalidBatchInput, match=named):
        client.submit(completions(2), endpoint="/v1/completions", **submit_options)
    assert provider_holds(provider_server) == ([], [])


def test_an_unaccepted_completion_window_is_refused_before_any_upload(provider_server):
    client = client_for(provider_server.base_url, completion_window="48h")
    with pytest.raises(InvalidBatchInput, match="completion_window '48h'"):
        client.submit(completions(2), endpoint="/v1/completions")
    with pytest.raises(InvalidBatchInput, match="completion_window"):
        client.upload(completions(2), endpoint="/v1/completions")
    assert provider_holds(provider_server) == ([], [])


def test_a_create_refused_after_upload_leaves_no_file_behind(provider_server, proxy_to):
    provider = proxy_to(refuse=[("POST", "/v1/batches")])
    client = client_for(provider.base_url, max_requests_per_batch=2)
    with pytest.raises(Exception, match="404"):
        client.submit(completions(4), endpoint="/v1/completions")
    batches, files = provider_holds(provider_server)
    assert batches == []
    assert files == []
