"""The local server's Files and Batches API over real HTTP with the openai SDK."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import jsonschema
import openai
import orjson
import pytest

from tests.server_fixtures import (
    SHARED_API_KEY,
    jsonl,
    read_lines,
    request_line,
    sdk_client,
    submit,
    wait_final,
)


def raw_json(response) -> dict:
    return response.http_response.json()


def test_files_roundtrip(client, openapi_validate):
    data = jsonl([request_line("a"), request_line("b")])
    raw = client.files.with_raw_response.create(file=("in.jsonl", data), purpose="batch")
    openapi_validate(raw_json(raw), "OpenAIFile")
    created = raw.parse()
    assert created.id.startswith("file-") and created.bytes == len(data)
    assert created.filename == "in.jsonl" and created.purpose == "batch"

    openapi_validate(raw_json(client.files.with_raw_response.retrieve(created.id)), "OpenAIFile")
    assert client.files.content(created.id).content == data
    with client.files.with_streaming_response.content(created.id) as response:
        assert b"".join(response.iter_bytes()) == data

    listing = client.files.with_raw_response.list(purpose="batch", limit=1, order="desc")
    openapi_validate(raw_json(listing), "ListFilesResponse")
    assert raw_json(listing)["data"][0]["id"] == created.id
    older = list(client.files.list(purpose="batch", order="asc"))
    assert [f.id for f in older][-1] == created.id
    assert all(f.purpose == "batch" for f in older)

    deleted = client.files.with_raw_response.delete(created.id)
    openapi_validate(raw_json(deleted), "DeleteFileResponse")
    assert deleted.parse().deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.BadRequestError):
        client.files.list(order="sideways")  # type: ignore[arg-type]


def test_batch_completes_with_webhook(client, webhook_receiver, openapi_validate):
    lines = [request_line(f"req-{i}", f"question number {i}") for i in range(30)]
    raw = client.batches.with_raw_response.create(
        input_file_id=client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"asset": "reviews", "partition": "2024-01-01"},
        extra_body={"webhook_url": webhook_receiver.url},
    )
    openapi_validate(raw_json(raw), "Batch")
    created = raw.parse()
    assert created.status == "validating" and created.id.startswith("batch_")
    assert created.metadata == {"asset": "reviews", "partition": "2024-01-01"}

    batch = wait_final(client, created.id)
    openapi_validate(raw_json(client.batches.with_raw_response.retrieve(batch.id)), "Batch")
    assert batch.status == "completed"
    assert batch.error_file_id is None and batch.errors is None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.expires_at == pytest.approx(batch.created_at + 24 * 3600, abs=1)
    assert (batch.request_counts.total, batch.request_counts.completed) == (30, 30)
    assert batch.request_counts.failed == 0
    assert batch.model == "test-model"
    assert batch.usage.input_tokens > 0 and batch.usage.output_tokens > 0
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens

    output = read_lines(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(30))
    assert [line["custom_id"] for line in output] != [f"req-{i}" for i in range(30)], "not shuffled"
    for line in output:
        openapi_validate(line, "BatchRequestOutput")
        openapi_validate(line["response"]["body"], "CreateChatCompletionResponse")
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output) == (
        batch.usage.input_tokens
    )

    (event,) = webhook_receiver.wait_for(1)
    openapi_validate(event, "WebhookBatchCompleted")
    assert event["type"] == "batch.completed"
    assert event["data"] == {"id": batch.id, "status": "completed"}


def test_completions_endpoint_and_max_tokens(client, openapi_validate):
    lines = [
        {
            "custom_id": "c1",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": "one two three four five six seven", "max_tokens": 3},
        },
        {
            "custom_id": "c2",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": "hi"},
        },
    ]
    batch = wait_final(client, submit(client, lines, endpoint="/v1/completions").id)
    assert batch.status == "completed"
    by_id = {
        line["custom_id"]: line["response"]["body"]
        for line in read_lines(client, batch.output_file_id)
    }
    for body in by_id.values():
        openapi_validate(body, "CreateCompletionResponse")
    assert by_id["c1"]["choices"][0]["finish_reason"] == "length"
    assert by_id["c1"]["usage"]["completion_tokens"] == 3
    assert by_id["c2"]["choices"][0]["finish_reason"] == "stop"
    assert "hi" in by_id["c2"]["choices"][0]["text"]


SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "flags": {
            "type": "object",
            "properties": {
                "spam": {"type": "boolean"},
                "lang": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["spam", "lang"],
            "additionalProperties": False,
        },
    },
    "required": ["sentiment", "score", "stars", "tags", "flags"],
    "additionalProperties": False,
}


def test_offline_answers_follow_the_request(client):
    structured = {
        "type": "json_schema",
        "json_schema": {"name": "review", "schema": SCHEMA, "strict": True},
    }
    lines = [
        request_line("schema-1", "great phone", response_format=structured),
        request_line("schema-2", "great phone", response_format=structured),
        request_line("schema-3", "awful phone", response_format=structured),
        request_line("object", "anything", response_format={"type": "json_object"}),
        request_line("short", "please tell me a very long story about dragons", max_tokens=4),
        request_line("echo", "the quick brown fox"),
    ]
    batch = wait_final(client, submit(client, lines).id)
    bodies = {
        line["custom_id"]: line["response"]["body"]
        for line in read_lines(client, batch.output_file_id)
    }
    content = {cid: body["choices"][0]["message"]["content"] for cid, body in bodies.items()}
    for cid in ("schema-1", "schema-2", "schema-3"):
        jsonschema.validate(orjson.loads(content[cid]), SCHEMA)
    assert content["schema-1"] == content["schema-2"], "same request, same answer"
    assert isinstance(orjson.loads(content["object"]), dict)
    assert bodies["short"]["choices"][0]["finish_reason"] == "length"
    assert bodies["short"]["usage"]["completion_tokens"] == 4
    assert "quick brown fox" in content["echo"]


def test_batches_list_paginates_newest_first(batch_server, openapi_validate):
    client = sdk_client(batch_server())
    file_id = client.files.create(file=("in.jsonl", jsonl([request_line("x")])), purpose="batch").id
    created = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(23)
    ]
    listed = [b.id for b in client.batches.list(limit=5)]
    assert listed == created[::-1]

    page = raw_json(client.batches.with_raw_response.list(limit=5))
    openapi_validate(page, "ListBatchesResponse")
    assert page["has_more"] is True and len(page["data"]) == 5
    assert (page["first_id"], page["last_id"]) == (created[-1], created[-5])
    last = raw_json(client.batches.with_raw_response.list(limit=100, after=created[2]))
    assert [b["id"] for b in last["data"]] == created[1::-1] and last["has_more"] is False
    assert len(client.batches.list().data) == 20
    for bad in (0, 101):
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=bad)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"completion_window": "48h"}, "completion_window"),
        ({"endpoint": "/v1/audio/transcriptions"}, "endpoint"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"extra_body": {"webhook_url": "ftp://example.com/hook"}}, "webhook_url"),
        ({"extra_body": {"webhook_url": "http://example.com/hook"}}, "webhook_url"),
    ],
)
def test_create_parameter_checks(client, change, param):
    file_id = client.files.create(file=("in.jsonl", jsonl([request_line("x")])), purpose="batch").id
    args = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(**{**args, **change})
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"


def test_metadata_limits_are_inclusive(client):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = submit(client, [request_line("x")], metadata=metadata)
    assert batch.metadata == metadata


def test_input_file_must_exist_and_be_for_batches(client):
    args = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-" + "0" * 24, **args)
    other = client.files.create(file=("x.jsonl", jsonl([request_line("x")])), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=other.id, **args)
    assert caught.value.body["param"] == "input_file_id"


def closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_plain_http_webhooks_need_the_flag(batch_server, webhook_receiver):
    strict = sdk_client(batch_server())
    with pytest.raises(openai.BadRequestError):
        submit(strict, [request_line("x")], extra_body={"webhook_url": webhook_receiver.url})
    # https is accepted without the flag; the delivery stays on loopback (a closed port)
    https_url = f"https://127.0.0.1:{closed_loopback_port()}/h"
    batch = submit(strict, [request_line("x")], extra_body={"webhook_url": https_url})
    assert wait_final(strict, batch.id).status == "completed"


def http(
    url: str, *, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_auth(shared_batch_server, batch_server):
    with pytest.raises(openai.AuthenticationError):
        sdk_client(shared_batch_server, api_key="wrong").files.list()
    status, body = http(shared_batch_server.base_url + "/files")
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
    bearer = {"Authorization": f"Bearer {SHARED_API_KEY}"}
    assert http(shared_batch_server.base_url + "/files", headers=bearer)[0] == 200

    open_server = batch_server()
    assert sdk_client(open_server, api_key="anything").files.list().data == []
    assert http(open_server.base_url + "/files", headers={"Authorization": "Bearer "})[0] == 401
    assert http(open_server.base_url + "/files", headers={"Authorization": "Basic abc"})[0] == 401


def test_bad_ids_are_not_found(client, shared_batch_server):
    for bad in ("file-nothex", "file-" + "0" * 24, "../state.sqlite3", "batch_" + "0" * 24):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(bad)
        with pytest.raises(openai.NotFoundError):
            client.files.content(bad)
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(bad)
        with pytest.raises(openai.NotFoundError):
            client.batches.cancel(bad)
    bearer = {"Authorization": f"Bearer {SHARED_API_KEY}"}
    base = shared_batch_server.base_url
    for path in ("/files/..%2Fstate.sqlite3/content", "/files/%2E%2E/content", "/nope"):
        status, body = http(base + path, headers=bearer)
        assert status == 404 and body["error"]["code"] == "not_found"
    status, body = http(base + "/batches?after=../x", headers=bearer)
    assert status == 400 and body["error"]["param"] == "after"


def _submit_and_wait(base_url: str, n: int) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=SHARED_API_KEY, max_retries=0)
    batch = submit(client, [request_line(f"{n}-{i}") for i in range(50)])
    return wait_final(client, batch.id).status


def test_concurrent_client_processes(shared_batch_server):
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    one = partial(_submit_and_wait, shared_batch_server.base_url)
    with ProcessPoolExecutor(4) as pool:  # separate processes, each its own connections
        assert list(pool.map(one, range(6))) == ["completed"] * 6
