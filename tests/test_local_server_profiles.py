"""The local server playing a provider (``--profile``), its ``/v1/models`` list, upload
pacing, and the offline embeddings and Responses answers, through the openai SDK."""

from __future__ import annotations

import base64
import time

import numpy as np
import openai
import pytest
from openai.types import CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.responses import Response

from dagster_inference_batch.local_server import ServerConfig
from dagster_inference_batch.local_server.cli import main
from tests.server_fixtures import jsonl, read_lines, request_line, sdk_client, submit, wait_final

CHAT_MODEL = "meta-llama/llama-3.1-8b-instruct/fp-8"
EMBEDDING_MODEL = "qwen/qwen3-embedding-4b"


def line(custom_id: str, url: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def results_by_id(client: openai.OpenAI, batch) -> dict[str, dict]:
    lines = read_lines(client, batch.output_file_id) + read_lines(client, batch.error_file_id)
    return {row["custom_id"]: row for row in lines}


# profiles: endpoints and create options


@pytest.mark.parametrize(
    ("profile", "endpoint"),
    [("inference.net", "/v1/responses"), ("compatible", "/v1/moderations")],
)
def test_profile_refuses_an_endpoint_it_does_not_offer(batch_server, profile, endpoint):
    client = sdk_client(batch_server(profile=profile, model=["test-model"]))
    with pytest.raises(openai.BadRequestError) as caught:
        submit(client, [request_line("a")], endpoint=endpoint)
    assert caught.value.body["param"] == "endpoint"
    assert caught.value.body["code"] == "invalid_value"
    assert profile in caught.value.body["message"]


def test_openai_profile_refuses_webhook_url(batch_server):
    client = sdk_client(batch_server(profile="openai", model=["test-model"]))
    with pytest.raises(openai.BadRequestError) as caught:
        submit(client, [request_line("a")], extra_body={"webhook_url": "https://example.com/h"})
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "webhook_url"
    assert caught.value.body["code"] == "unknown_parameter"


def test_inference_net_profile_refuses_output_expires_after(batch_server):
    client = sdk_client(batch_server(profile="inference.net", model=["test-model"]))
    expiry = {"anchor": "created_at", "seconds": 3600}
    with pytest.raises(openai.BadRequestError) as caught:
        submit(client, [request_line("a")], extra_body={"output_expires_after": expiry})
    assert caught.value.body["param"] == "output_expires_after"


def test_openai_profile_caps_embedding_inputs_per_batch(batch_server):
    client = sdk_client(batch_server(profile="openai"))
    many = line("a", "/v1/embeddings", model="text-embedding-3-small", input=["x"] * 50_001)
    batch = wait_final(client, submit(client, [many], endpoint="/v1/embeddings").id)
    assert batch.status == "failed"
    assert [e.code for e in batch.errors.data] == ["too_many_embedding_inputs"]


# upload pacing


def test_upload_within_the_interval_gets_429_with_retry_after(batch_server):
    client = sdk_client(batch_server(profile="inference.net", upload_interval=2))
    upload = {"file": ("in.jsonl", jsonl([request_line("a")])), "purpose": "batch"}
    client.files.create(**upload)
    with pytest.raises(openai.RateLimitError) as caught:
        client.files.create(**upload)
    refused = caught.value
    assert refused.status_code == 429
    assert refused.body["code"] == "rate_limit_exceeded" and refused.body["type"] == "requests"
    retry_after = int(refused.response.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert 0 < int(refused.response.headers["retry-after-ms"]) <= 2000
    # another key is paced on its own; the first one may upload once the interval is over
    other = openai.OpenAI(base_url=str(client.base_url), api_key="other-key", max_retries=0)
    other.files.create(**upload)
    time.sleep(int(refused.response.headers["retry-after-ms"]) / 1000 + 0.05)
    assert client.files.create(**upload).purpose == "batch"


def test_inference_net_profile_paces_uploads_a_minute_apart(batch_server):
    client = sdk_client(batch_server(profile="inference.net"))
    upload = {"file": ("in.jsonl", jsonl([request_line("a")])), "purpose": "batch"}
    client.files.create(**upload)
    with pytest.raises(openai.RateLimitError) as caught:
        client.files.create(**upload)
    assert 55 <= int(caught.value.response.headers["retry-after"]) <= 60


def test_refused_upload_does_not_use_the_slot(batch_server):
    client = sdk_client(batch_server(profile="inference.net", upload_interval=30))
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")


def test_no_profile_means_no_pacing_and_every_endpoint(batch_server):
    client = sdk_client(batch_server())
    for _ in range(3):
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    for endpoint in ("/v1/embeddings", "/v1/responses", "/v1/moderations"):
        assert submit(client, [request_line("a")], endpoint=endpoint).endpoint == endpoint


# models


def test_models_lists_built_in_ids_and_model_flags(batch_server):
    client = sdk_client(batch_server(profile="inference.net", model=["my-org/custom-model"]))
    ids = [m.id for m in client.models.list()]
    for model in (CHAT_MODEL, "meta-llama/llama-3.2-3b-instruct/fp-16", EMBEDDING_MODEL):
        assert model in ids
    assert "my-org/custom-model" in ids and "m" not in ids
    model = client.models.retrieve(CHAT_MODEL)
    assert (model.id, model.object, model.owned_by) == (CHAT_MODEL, "model", "inference.net")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("meta-llama/llama-3.1-8b-instrukt/fp-8")
    assert caught.value.body["code"] == "model_not_found"


def test_models_without_profile_lists_the_placeholder_ids(batch_server):
    ids = {m.id for m in sdk_client(batch_server()).models.list()}
    assert {"m", "test-model", CHAT_MODEL} <= ids


def test_profile_answers_an_unlisted_model_with_a_404_line(batch_server):
    client = sdk_client(batch_server(profile="inference.net"))
    lines = [
        request_line("known", model=CHAT_MODEL),
        request_line("typo", model="meta-llama/llama-3.1-8b-instrukt/fp-8"),
    ]
    batch = wait_final(client, submit(client, lines).id)
    assert batch.status == "completed"
    rows = results_by_id(client, batch)
    assert rows["known"]["response"]["status_code"] == 200
    assert rows["typo"]["response"]["status_code"] == 404
    assert rows["typo"]["response"]["body"]["error"]["code"] == "model_not_found"


# offline embeddings and responses


def test_embeddings_are_deterministic_unit_vectors(batch_server, openapi_validate):
    client = sdk_client(batch_server())
    url = "/v1/embeddings"
    lines = [
        line("one", url, model=EMBEDDING_MODEL, input="great product", dimensions=64),
        line("again", url, model=EMBEDDING_MODEL, input="great product", dimensions=64),
        line(
            "b64",
            url,
            model=EMBEDDING_MODEL,
            input="great product",
            dimensions=64,
            encoding_format="base64",
        ),
        line("pair", url, model=EMBEDDING_MODEL, input=["great product", "bad product"]),
        line("tokens", url, model="m", input=[1, 2, 3]),
    ]
    batch = wait_final(client, submit(client, lines, endpoint=url).id)
    assert batch.status == "completed" and batch.request_counts.completed == 5
    bodies = {cid: row["response"]["body"] for cid, row in results_by_id(client, batch).items()}
    for cid, body in bodies.items():
        if cid != "b64":  # the spec and the SDK type `embedding` as numbers only
            openapi_validate(body, "CreateEmbeddingResponse")
            CreateEmbeddingResponse.model_validate(body)
    one = np.array(bodies["one"]["data"][0]["embedding"], dtype=np.float32)
    assert one.shape == (64,)
    assert abs(float(np.linalg.norm(one.astype(np.float64))) - 1.0) < 1e-5
    assert bodies["again"]["data"][0]["embedding"] == bodies["one"]["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(bodies["b64"]["data"][0]["embedding"]), "<f4")
    np.testing.assert_array_equal(decoded, one)
    pair = bodies["pair"]
    assert [d["index"] for d in pair["data"]] == [0, 1]
    first, second = (np.array(d["embedding"], dtype=np.float32) for d in pair["data"])
    assert first.shape == second.shape == (2560,)  # the model's native size
    assert not np.allclose(first, second)
    assert bodies["pair"]["object"] == "list" and bodies["pair"]["model"] == EMBEDDING_MODEL
    assert pair["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert len(bodies["tokens"]["data"]) == 1 and bodies["tokens"]["usage"]["prompt_tokens"] == 3
    assert len(bodies["tokens"]["data"][0]["embedding"]) == 1024  # the default size


def test_responses_answer_offline(batch_server):
    client = sdk_client(batch_server(profile="openai"))
    url = "/v1/responses"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a colour"}]},
    ]
    lines = [
        line("text", url, model="gpt-4o-mini", input="Say hello"),
        line("messages", url, model="gpt-4o-mini", input=messages),
    ]
    batch = wait_final(client, submit(client, lines, endpoint=url).id)
    assert batch.status == "completed" and batch.request_counts.completed == 2
    bodies = {cid: row["response"]["body"] for cid, row in results_by_id(client, batch).items()}
    for body in bodies.values():
        assert Response.model_validate(body).output_text.startswith("Answer: ")
        assert (body["object"], body["status"]) == ("response", "completed")
        (message,) = body["output"]
        assert (message["type"], message["role"]) == ("message", "assistant")
        assert message["content"][0]["type"] == "output_text"
        usage = body["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert bodies["text"]["output"][0]["content"][0]["text"] == "Answer: Say hello"
    assert bodies["messages"]["output"][0]["content"][0]["text"] == "Answer: Name a colour"
    assert batch.usage.input_tokens == sum(b["usage"]["input_tokens"] for b in bodies.values())


def test_moderations_answer_offline_under_openai(batch_server):
    client = sdk_client(batch_server(profile="openai"))
    url = "/v1/moderations"
    lines = [line("a", url, model="omni-moderation-latest", input=["one", "two"])]
    batch = wait_final(client, submit(client, lines, endpoint=url).id)
    assert batch.status == "completed" and batch.request_counts.completed == 1
    body = results_by_id(client, batch)["a"]["response"]["body"]
    answer = ModerationCreateResponse.model_validate(body)
    assert [r.flagged for r in answer.results] == [False, False]


# options


def test_cli_help_lists_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--profile", "--upload-interval", "--model", "--max-requests-per-batch"):
        assert flag in out


def test_config_checks_profile_and_round_trips_models():
    with pytest.raises(ValueError, match="unknown provider 'openia'"):
        ServerConfig(data_dir="d", profile="openia")
    with pytest.raises(ValueError, match="upload_interval"):
        ServerConfig(data_dir="d", upload_interval=-1)
    config = ServerConfig(data_dir="d", profile="openai", model=["a", "b"], upload_interval=2)
    assert config.to_argv()[2:] == [
        "--profile",
        "openai",
        "--upload-interval",
        "2",
        "--model",
        "a",
        "--model",
        "b",
    ]
