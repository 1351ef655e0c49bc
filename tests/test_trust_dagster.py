"""The trust promises on the Dagster side: the local server only on request and named in
every materialization, and no second paid batch when the provider has no batch listing
and a step dies between the create and its materialization."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import openai
import pytest

from dagster_inference_batch import InferenceBatchResource
from dagster_inference_batch import assets as assets_module
from dagster_inference_batch import client as client_module
from tests.dagster_harness import Harness
from tests.loopback_proxy import LoopbackProxy

PROVIDER_KEY = "inference_batch/provider"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def test_every_materialization_on_the_local_server_says_its_answers_are_synthetic(
    instance, local_state_dir
):
    harness = Harness(instance, "", rows=3, resource=InferenceBatchResource(use_local_server=True))
    harness.submit()
    harness.tick_until(harness.results_done)
    pipeline = harness.pipeline
    for key in (pipeline.input_file_key, pipeline.batch_key, pipeline.results_key):
        latest = harness.materializations(key)[-1]
        assert latest.metadata[PROVIDER_KEY].value == "local (synthetic answers)", key


def test_without_a_key_or_an_opt_in_the_first_step_fails_and_says_why(instance, monkeypatch):
    for name in ("INFERENCE_API_KEY", "INFERENCE_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    harness = Harness(instance, "", rows=2, resource=InferenceBatchResource())
    result = harness.submit_without_raising()
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert "INFERENCE_API_KEY is not set" in message
    assert "use_local_server=True" in message
    assert instance.fetch_materializations(harness.pipeline.input_file_key, limit=1).records == []


@pytest.fixture
def no_listing_provider(batch_server) -> Iterator[LoopbackProxy]:
    """A provider that offers no batch or file listing at all (`.server` is behind it)."""
    server = batch_server(api_key="test-key")
    proxy = LoopbackProxy(server.base_url, refuse=[("GET", "/v1/batches"), ("GET", "/v1/files")])
    proxy.server = server
    yield proxy
    proxy.close()


def forget_this_process(monkeypatch) -> None:
    """The re-run is a new process: only the event log remembers what was created."""
    if hasattr(client_module, "CREATED_IN_THIS_PROCESS"):
        fresh = type(client_module.CREATED_IN_THIS_PROCESS)()
        monkeypatch.setattr(client_module, "CREATED_IN_THIS_PROCESS", fresh)


def two_shards_behind(instance: dg.DagsterInstance, provider: LoopbackProxy) -> Harness:
    """Six rows in two shards, sent through `provider`."""
    return Harness(
        instance,
        provider.base_url,
        rows=6,
        resource_options={"max_requests_per_batch": 3, "backoff_seconds": 0.01},
    )


def files_held(server) -> list:
    sdk = openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
    return list(sdk.files.list(purpose="batch").data)


def test_an_input_file_step_that_dies_after_upload_is_rerun_without_a_second_upload(
    instance, no_listing_provider, monkeypatch
):
    harness = two_shards_behind(instance, no_listing_provider)
    recorded_metadata = assets_module.input_file_metadata

    def dies_before_recording(*args):
        raise RuntimeError("the step died after the upload, before its materialization")

    monkeypatch.setattr(assets_module, "input_file_metadata", dies_before_recording)
    assert not harness.submit_without_raising().success
    assert len(files_held(no_listing_provider.server)) == 2  # uploaded, unrecorded
    monkeypatch.setattr(assets_module, "input_file_metadata", recorded_metadata)
    forget_this_process(monkeypatch)

    harness.submit()
    assert len(files_held(no_listing_provider.server)) == 2  # reused from the ledger
    assert no_listing_provider.batch_creates == 2
    harness.tick_until(harness.results_done)
    assert len(harness.results_frame()) == 6


def test_a_batch_step_that_dies_after_create_is_rerun_without_a_second_batch(
    instance, no_listing_provider, monkeypatch
):
    harness = two_shards_behind(instance, no_listing_provider)
    recorded_metadata = assets_module.batch_metadata

    def dies_before_recording(job):
        raise RuntimeError("the step died after the create, before its materialization")

    monkeypatch.setattr(assets_module, "batch_metadata", dies_before_recording)
    assert not harness.submit_without_raising().success
    assert no_listing_provider.batch_creates == 2  # both shards' batches exist, unrecorded
    monkeypatch.setattr(assets_module, "batch_metadata", recorded_metadata)
    forget_this_process(monkeypatch)

    harness.submit()  # the re-run, as a user would click it
    assert no_listing_provider.batch_creates == 2  # reused from the event log's ledger
    batch = harness.materializations(harness.pipeline.batch_key)[-1]
    assert batch.metadata["inference_batch/idempotency"].value == "ledger"
    harness.tick_until(harness.results_done)
    assert set(harness.results_frame()["status"]) == {"succeeded"}
    assert len(harness.results_frame()) == 6


@pytest.fixture
def late_file_ids(batch_server):
    """A provider whose final batches show their file ids only from a later read on
    (`.hide(reads)` starts a proxy hiding them for that many reads of each batch)."""
    server = batch_server(api_key="test-key")
    proxies: list[LoopbackProxy] = []

    def hide(reads: int) -> LoopbackProxy:
        proxies.append(LoopbackProxy(server.base_url, hide_file_ids=reads))
        return proxies[-1]

    yield hide
    for proxy in proxies:
        proxy.close()


def test_the_sensor_waits_out_a_completed_batch_without_its_output_file(instance, late_file_ids):
    provider = late_file_ids(3)
    harness = Harness(
        instance, provider.base_url, rows=5, resource_options={"backoff_seconds": 0.01}
    )
    harness.submit()
    harness.tick_until(harness.results_done)
    results = harness.materializations(harness.pipeline.results_key)[-1]
    assert results.metadata["inference_batch/succeeded"].value == 5
    assert results.metadata["inference_batch/missing"].value == 0
    assert results.metadata["inference_batch/attempts"].value == 1  # nothing paid again
    assert provider.batch_creates == 1


def test_rows_still_without_an_answer_after_the_wait_are_resubmitted_then_counted_missing(
    instance, late_file_ids
):
    provider = late_file_ids(10**6)  # the output file id never shows
    harness = Harness(
        instance,
        provider.base_url,
        rows=4,
        max_attempts=2,
        resource_options={"backoff_seconds": 0.01, "final_state_wait_seconds": 0.5},
    )
    harness.submit()
    harness.tick_until(harness.results_done)
    batches = harness.materializations(harness.pipeline.batch_key)
    assert [m.metadata["inference_batch/attempt"].value for m in batches] == [1, 2]
    assert batches[-1].metadata[PROVIDER_KEY].value == provider.base_url
    results = harness.materializations(harness.pipeline.results_key)[-1]
    assert results.metadata["inference_batch/missing"].value == 4
    assert provider.batch_creates == 2  # one per attempt, and no third
