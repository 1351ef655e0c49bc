"""Provider profiles, upload pacing and the model check, against the local server over HTTP
(issue 10, items 1, 2 and 5, client side)."""

from __future__ import annotations

import logging
import time

import openai
import pandas as pd
import pytest

from dagster_inference_batch import BatchAPIError, InferenceBatchClient, InvalidBatchInput
from dagster_inference_batch.request_lines import build_requests

API_KEY = "sk-providers-secret-key"
CHAT_MODEL = "meta-llama/llama-3.1-8b-instruct/fp-8"


def short_chats(n: int, model: str = "m"):
    frame = pd.DataFrame(
        {"custom_id": [f"c{i}" for i in range(n)], "prompt": [f"hi {i}" for i in range(n)]}
    )
    return build_requests(frame, model=model, prompt_column="prompt")


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)


def batch_files(server) -> list:
    return list(sdk(server).files.list(purpose="batch"))


def make_client(server, **options) -> InferenceBatchClient:
    options.setdefault("backoff_seconds", 0.05)
    return InferenceBatchClient(api_key=API_KEY, base_url=str(server.base_url), **options)


@pytest.fixture
def server(batch_server):
    return batch_server(api_key=API_KEY)


# ------------------------------------------------------------------------ profiles


def test_profile_limits_decide_the_shards_of_120000_requests(server):
    requests = short_chats(120_000)
    with make_client(server, provider="inference.net") as inference_net:
        assert len(inference_net.upload(requests).shards) == 1
    with make_client(server, provider="openai") as openai_client:
        shards = openai_client.upload(requests).shards
    assert [s.request_count for s in shards] == [40_000] * 3
    assert len(batch_files(server)) == 4


def test_explicit_limits_override_the_profile(server):
    with make_client(server, provider="openai", max_requests_per_batch=100_000) as client:
        assert (client.max_requests_per_batch, client.max_bytes_per_batch) == (
            100_000,
            200 * 1024 * 1024,
        )
        assert client.profile.upload_interval_seconds == 0.0


def test_provider_urls_and_compatible_needs_a_base_url():
    assert InferenceBatchClient(api_key="k").base_url == "https://batch.inference.net/v1"
    assert InferenceBatchClient(api_key="k", provider="openai").base_url == (
        "https://api.openai.com/v1"
    )
    with pytest.raises(ValueError, match="provider 'compatible' has no default base URL"):
        InferenceBatchClient(api_key="k", provider="compatible")
    with pytest.raises(ValueError, match="unknown provider 'anthropic'"):
        InferenceBatchClient(api_key="k", provider="anthropic")


def test_webhook_refused_under_openai_before_any_upload(server):
    with make_client(server, provider="openai") as client:
        with pytest.raises(
            InvalidBatchInput, match="webhook_url is not accepted by provider 'openai'"
        ):
            client.submit(short_chats(3), webhook_url="https://hooks.example.com/batch")
    assert batch_files(server) == []


def test_endpoint_the_provider_lacks_is_refused_before_upload(server):
    lines = [{"custom_id": "a", "body": {"model": "m", "input": "hello"}}]
    with make_client(server, provider="inference.net") as client:
        with pytest.raises(InvalidBatchInput, match="provider 'inference.net' offers no batches"):
            client.submit(lines, endpoint="/v1/responses")
    assert batch_files(server) == []


def test_output_expires_after_only_where_accepted(server):
    expiry = {"anchor": "created_at", "seconds": 7200}
    with make_client(server, provider="inference.net") as client:
        with pytest.raises(InvalidBatchInput, match="not accepted by provider 'inference.net'"):
            client.submit(short_chats(2), output_expires_after=expiry)
    with make_client(server, provider="openai") as client:
        with pytest.raises(InvalidBatchInput, match="must be"):
            client.submit(short_chats(2), output_expires_after={"seconds": 5})
        assert batch_files(server) == []
        job = client.submit(short_chats(2), output_expires_after=expiry)
    assert len(job.batch_ids) == 1


# ---------------------------------------------------------------------- model check


def test_misspelled_model_is_refused_naming_the_nearest_id(server):
    misspelled = "meta-llama/llama-3.1-8b-instruct/fp8"
    with make_client(server) as client:
        with pytest.raises(InvalidBatchInput) as refused:
            client.submit(short_chats(3, model=misspelled))
        assert misspelled in str(refused.value) and repr(CHAT_MODEL) in str(refused.value)
        assert batch_files(server) == []
        assert len(client.submit(short_chats(3, model=CHAT_MODEL)).batch_ids) == 1


def test_model_list_is_read_once_per_client(proxy_to):
    proxy = proxy_to()
    with InferenceBatchClient(api_key="test-key", base_url=proxy.base_url) as client:
        client.upload(short_chats(2))
        client.upload(short_chats(3))
    assert proxy.requests["GET /v1/models"] == 1


def test_model_check_skipped_without_a_model_list(proxy_to, caplog):
    proxy = proxy_to(refuse=[("GET", "/v1/models")])
    with InferenceBatchClient(api_key="test-key", base_url=proxy.base_url) as client:
        with caplog.at_level(logging.INFO, logger="dagster_inference_batch"):
            client.upload(short_chats(2, model="no-such-model"))
            client.upload(short_chats(2, model="no-such-model-either"))
    skipped = [r for r in caplog.records if "model check is skipped" in r.getMessage()]
    assert len(skipped) == 1 and proxy.requests["GET /v1/models"] == 1


def test_check_models_false_uploads_any_model(server):
    with make_client(server, check_models=False) as client:
        assert len(client.upload(short_chats(2, model="not-listed")).shards) == 1


# -------------------------------------------------------------------- upload pacing


def test_uploads_are_spaced_and_the_wait_logged(server, caplog):
    waits: list[tuple[float, str]] = []
    options = {"upload_interval_seconds": 2.0, "on_upload_wait": lambda s, r: waits.append((s, r))}
    with caplog.at_level(logging.INFO, logger="dagster_inference_batch"):
        with make_client(server, max_requests_per_batch=1, **options) as client:
            started = time.monotonic()
            assert len(client.upload(short_chats(2)).shards) == 2  # two uploads, one submit
            assert time.monotonic() - started >= 1.9
        # Another client (as another process would) queues behind the provider's newest
        # file, read from GET /files.
        with make_client(server, **options) as other:
            started = time.monotonic()
            other.upload(short_chats(3))
            assert time.monotonic() - started >= 0.9
    assert len(waits) == 2 and all(r == "the provider's upload limit" for _, r in waits)
    assert "waiting 2 s for the provider's upload limit" in caplog.text
    assert API_KEY not in caplog.text


def test_a_429_with_retry_after_on_upload_is_a_wait(batch_server, caplog):
    server = batch_server(api_key=API_KEY, upload_interval=2)
    with caplog.at_level(logging.INFO, logger="dagster_inference_batch"):
        with make_client(server, max_retries=0, max_requests_per_batch=1) as client:
            started = time.monotonic()
            job = client.upload(short_chats(2))
    assert len(job.shards) == 2 and time.monotonic() - started >= 1.5
    assert "for the provider's upload limit (429, Retry-After)" in caplog.text
    assert API_KEY not in caplog.text


def test_max_upload_wait_exceeded_raises(batch_server):
    server = batch_server(api_key=API_KEY, upload_interval=60)
    with make_client(server, max_upload_wait=1, max_requests_per_batch=1) as client:
        with pytest.raises(BatchAPIError, match="would pass max_upload_wait") as raised:
            client.upload(short_chats(2))
    assert API_KEY not in str(raised.value)
    assert len(batch_files(server)) == 1
    with make_client(server, upload_interval_seconds=60, max_upload_wait=1) as paced:
        with pytest.raises(BatchAPIError, match="max_upload_wait"):
            paced.upload(short_chats(3))
    assert len(batch_files(server)) == 1  # the client-side wait refused before uploading


@pytest.mark.parametrize(
    ("profile", "model", "server_options"),
    [
        ("inference.net", CHAT_MODEL, {"upload_interval": 1}),
        ("openai", "gpt-4o-mini", {}),
    ],
)
def test_client_runs_against_the_server_playing_its_provider(
    batch_server, profile, model, server_options
):
    server = batch_server(api_key=API_KEY, profile=profile, **server_options)
    with make_client(server, provider=profile, max_requests_per_batch=2) as client:
        job = client.wait(client.submit(short_chats(4, model=model)), poll_interval=0.1)
        assert len(job.batch_ids) == 2
        assert client.results(job)["status"].tolist() == ["succeeded"] * 4
        with pytest.raises(InvalidBatchInput, match="not offered by provider"):
            client.upload(short_chats(1, model="m"))


def test_embedding_input_cap_shards_embeddings(server):
    bodies = [{"model": "qwen/qwen3-embedding-4b", "input": [f"a{i}", f"b{i}"]} for i in range(3)]
    lines = [{"custom_id": f"e{i}", "body": body} for i, body in enumerate(bodies)]
    with make_client(server, provider="openai", max_embedding_inputs_per_batch=3) as client:
        job = client.upload(lines, endpoint="/v1/embeddings")
    assert [s.request_count for s in job.shards] == [1, 1, 1]
