"""The client against providers that lack endpoints or cut downloads short."""

from __future__ import annotations

import logging

from dagster_inference_batch import InferenceBatchClient
from tests.server_fixtures import completions

LISTINGS = [("GET", "/v1/batches"), ("GET", "/v1/files")]


def test_client_works_without_list_endpoints(proxy_to, caplog):
    provider = proxy_to(refuse=LISTINGS)
    caplog.set_level(logging.WARNING)
    inputs = completions(6)
    for _ in range(2):  # each client finds out for itself: no process-wide memory
        caplog.clear()
        client = InferenceBatchClient(api_key="test-key", base_url=provider.base_url)
        job = client.submit(inputs, endpoint="/v1/completions")
        job = client.wait(job, poll_interval=0.1, timeout=30)
        assert set(client.results(job, inputs)["status"]) == {"succeeded"}
        assert list(client.list_batches()) == []
        assert list(client.list_batches()) == []
        notices = [r.getMessage() for r in caplog.records if "does not offer" in r.getMessage()]
        # once per missing endpoint and client, not once per call
        assert notices and len(notices) == len(set(notices)), notices

    assert provider.refused  # the clients did try the listings


def test_a_download_cut_short_is_retried(proxy_to):
    provider = proxy_to(cut_downloads=2)
    client = InferenceBatchClient(
        api_key="test-key", base_url=provider.base_url, backoff_seconds=0.01
    )
    inputs = completions(40)
    job = client.wait(client.submit(inputs, endpoint="/v1/completions"), poll_interval=0.1)
    frame = client.results(job, inputs)
    assert provider.cuts_left == 0  # both cuts happened, and were survived
    assert len(frame) == 40
    assert set(frame["status"]) == {"succeeded"}
