"""InferenceBatchResource: configuration, the shared local server, cost."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from dagster_inference_batch import (
    InferenceBatchClient,
    InferenceBatchResource,
    ProviderNotConfigured,
)
from dagster_inference_batch.client import DEFAULT_BASE_URL


def test_explicit_base_url_wins(no_provider_env):
    resource = InferenceBatchResource(api_key="k", base_url="http://127.0.0.1:9/v1")
    assert resource.get_client().base_url == "http://127.0.0.1:9/v1"


def test_environment_base_url_overrides_the_default(no_provider_env, monkeypatch):
    monkeypatch.setenv("INFERENCE_BASE_URL", "http://127.0.0.1:9/v1")
    assert InferenceBatchResource(api_key="k").get_client().base_url == "http://127.0.0.1:9/v1"


def test_a_key_alone_means_inference_net(no_provider_env):
    assert InferenceBatchResource(api_key="k").get_client().base_url == DEFAULT_BASE_URL


def test_no_key_no_url_and_no_opt_in_refuses_to_run(local_state_dir):
    resource = InferenceBatchResource()
    with pytest.raises(ProviderNotConfigured) as raised:
        resource.get_client()
    message = str(raised.value)
    assert "INFERENCE_API_KEY is not set" in message
    assert "use_local_server=True" in message
    assert not (local_state_dir / "server.json").exists()  # no server was started


def test_local_server_is_named_as_the_provider(no_provider_env):
    local = InferenceBatchResource(use_local_server=True)
    assert local.provider_label == "local (synthetic answers)"
    assert InferenceBatchResource(api_key="k").provider_label == DEFAULT_BASE_URL
    with pytest.raises(ProviderNotConfigured, match="not both"):
        InferenceBatchResource(use_local_server=True, base_url="http://127.0.0.1:9/v1").get_client()


def test_the_client_reads_no_environment_unless_asked(no_provider_env, monkeypatch):
    monkeypatch.setenv("INFERENCE_API_KEY", "from-env")
    with pytest.raises(ValueError, match="from_env"):
        InferenceBatchClient()  # the default provider, and no key passed
    assert InferenceBatchClient.from_env().base_url == DEFAULT_BASE_URL
    monkeypatch.setenv("INFERENCE_BASE_URL", "http://127.0.0.1:9/v1")
    assert InferenceBatchClient.from_env().base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("INFERENCE_API_KEY")
    monkeypatch.delenv("INFERENCE_BASE_URL")
    with pytest.raises(ValueError, match="INFERENCE_API_KEY is not set"):
        InferenceBatchClient.from_env()


def test_opting_in_starts_one_shared_local_server(local_state_dir, caplog):
    caplog.set_level(logging.WARNING)
    first = InferenceBatchResource(use_local_server=True).get_client()
    again = InferenceBatchResource(use_local_server=True).get_client()
    assert first.base_url == again.base_url
    assert first.base_url.startswith("http://127.0.0.1:")
    warnings = [r.getMessage() for r in caplog.records if "synthetic" in r.getMessage()]
    assert len(warnings) == 1

    # another process on the machine finds the same server rather than starting its own
    code = (
        "from dagster_inference_batch import InferenceBatchResource;"
        "print(InferenceBatchResource(use_local_server=True).get_client().base_url)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert other.stdout.strip() == first.base_url

    # and the server answers: a batch submitted here is listed there
    assert list(first.list_batches(limit=1)) == []


def test_cost_needs_both_prices():
    usage = {"input_tokens": 2_000_000, "output_tokens": 1_000_000}
    assert InferenceBatchResource(api_key="k").cost(usage) is None
    priced = InferenceBatchResource(
        api_key="k", price_per_million_input_tokens=0.5, price_per_million_output_tokens=2.0
    )
    assert priced.cost(usage) == pytest.approx(3.0)


def test_shared_server_ignores_keys_meant_for_a_hand_started_server(local_state_dir, monkeypatch):
    monkeypatch.setenv("INFERENCE_LOCAL_SERVER_API_KEY", "only-for-my-own-server")
    client = InferenceBatchResource(use_local_server=True).get_client()
    assert list(client.list_batches(limit=1)) == []  # no 401: the shared server takes any key


def test_provider_sets_the_client_profile_and_default_url(no_provider_env):
    with InferenceBatchResource(api_key="k", provider="openai").get_client() as client:
        assert client.base_url == "https://api.openai.com/v1"
        assert (client.profile.name, client.max_requests_per_batch) == ("openai", 50_000)
    resource = InferenceBatchResource(
        api_key="k",
        provider="openai",
        max_requests_per_batch=7,
        upload_interval_seconds=3.0,
        max_upload_wait=9.0,
        check_models=False,
    )
    with resource.get_client() as client:
        assert (client.max_requests_per_batch, client.profile.upload_interval_seconds) == (7, 3.0)
    with InferenceBatchResource(api_key="k").get_client() as client:
        assert (client.profile.name, client.max_requests_per_batch) == ("inference.net", 1_000_000)
        assert client.profile.upload_interval_seconds == 60.0


def test_compatible_needs_a_base_url(no_provider_env):
    with pytest.raises(ProviderNotConfigured, match="set base_url"):
        InferenceBatchResource(api_key="k", provider="compatible").get_client()
    resource = InferenceBatchResource(
        api_key="k", provider="compatible", base_url="http://127.0.0.1:9/v1"
    )
    assert resource.get_client().profile.name == "compatible"


def test_local_server_keeps_the_provider_rules_without_client_pacing(local_state_dir):
    with InferenceBatchResource(use_local_server=True, provider="openai").get_client() as client:
        assert client.profile.name == "openai" and client.profile.accepts_webhook_url is False
        assert client.profile.upload_interval_seconds == 0.0  # the local server paces itself


def test_upload_waits_reach_the_hook_and_the_dagster_log(batch_server, caplog):
    server = batch_server(api_key="test-key")
    resource = InferenceBatchResource(
        api_key="test-key",
        base_url=server.base_url,
        upload_interval_seconds=1.0,
        max_requests_per_batch=1,
    )
    waits = []
    lines = [{"custom_id": c, "body": {"model": "m", "prompt": c}} for c in "ab"]
    with caplog.at_level(logging.INFO):
        with resource.get_client(on_upload_wait=lambda s, r: waits.append(r)) as client:
            assert len(client.upload(lines, endpoint="/v1/completions").shards) == 2
    assert waits == ["the provider's upload limit"]
    assert "for the provider's upload limit" in caplog.text and "test-key" not in caplog.text


def test_the_launchpad_help_text_shows_no_doctest_lines():
    description = InferenceBatchResource().get_resource_definition().description
    assert description.startswith("Connection and limits")
    assert ">>>" not in description and "doctest" not in description


def test_local_server_without_key_is_used_only_while_nothing_is_configured(
    no_provider_env, monkeypatch
):
    resource = InferenceBatchResource(local_server_without_key=True)
    assert resource.provider_label == "local (synthetic answers)"
    monkeypatch.setenv("INFERENCE_API_KEY", "a-key")
    assert resource.provider_label == "https://batch.inference.net/v1"
    monkeypatch.delenv("INFERENCE_API_KEY")
    monkeypatch.setenv("INFERENCE_BASE_URL", "http://127.0.0.1:9/v1")
    assert resource.provider_label == "http://127.0.0.1:9/v1"
