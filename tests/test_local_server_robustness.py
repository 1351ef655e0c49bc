"""The local server under things going wrong: a responder or worker step that raises,
recursive schemas, a busy database, secrets kept out of argv, a missing spec file."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import threading
import time
from pathlib import Path

import jsonschema
import orjson
import pytest

from dagster_inference_batch.local_server import LocalBatchServer, ServerConfig
from dagster_inference_batch.local_server.config import API_KEY_ENV, UPSTREAM_API_KEY_ENV
from dagster_inference_batch.local_server.responders import OfflineResponder
from dagster_inference_batch.local_server.schema_instance import instance_for
from dagster_inference_batch.local_server.store import Store, new_id
from dagster_inference_batch.local_server.worker import Worker
from tests.server_fixtures import (
    SpecMissingWarning,
    jsonl,
    openapi_validator,
    read_lines,
    request_line,
    sdk_client,
    submit,
    wait_final,
)

# 1. exceptions while answering or stepping

BROKEN_FORMAT = {"type": "json_schema", "json_schema": "not an object"}


def test_a_request_the_responder_cannot_answer_is_a_line_error(shared_batch_server):
    client = sdk_client(shared_batch_server)
    lines = [request_line("good"), request_line("broken", response_format=BROKEN_FORMAT)]
    batch = wait_final(client, submit(client, lines).id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    (error,) = read_lines(client, batch.error_file_id)
    assert error["custom_id"] == "broken" and error["response"]["status_code"] == 500
    body = error["response"]["body"]["error"]
    assert body["code"] == "server_error" and "AttributeError" in body["message"]


def test_a_step_that_keeps_failing_fails_the_batch(tmp_path, monkeypatch, caplog):
    store = Store(tmp_path)
    file_id = new_id("file-")
    store.file_path(file_id).write_bytes(jsonl([request_line("a")]))
    with store.transaction() as db:
        store.add_file(db, file_id, 1, "in.jsonl", "batch")
    now = time.time()
    batch_id = new_id("batch_")
    store.add_batch(
        {
            "id": batch_id,
            "endpoint": "/v1/chat/completions",
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "created_ts": now,
            "phase_ts": now,
            "expires_ts": now + 3600,
        }
    )

    def broken(self, row, now):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Worker, "_process", broken)
    config = ServerConfig(data_dir=tmp_path, validating_seconds=0.0)
    worker = Worker(store, config, OfflineResponder())
    caplog.set_level(logging.WARNING, logger="dagster_inference_batch.local_server.worker")
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while store.get_batch(batch_id)["status"] != "failed":
            assert time.monotonic() < deadline, "the batch never ended"
            time.sleep(0.05)
        time.sleep(0.3)  # nothing more is logged once it has failed
    finally:
        worker.stop()
    (error,) = orjson.loads(store.get_batch(batch_id)["errors"])
    assert error["code"] == "server_error" and "RuntimeError" in error["message"]
    assert len(caplog.records) == 3  # two retries (with backoff) and the final error


# 2. recursive schemas

LINKED_LIST = {
    "type": "object",
    "properties": {
        "value": {"type": "string"},
        "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
    },
    "required": ["value", "next"],
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name", "children"],
        }
    },
    "type": "object",
    "properties": {"root": {"$ref": "#/$defs/node"}},
    "required": ["root"],
}
NULLABLE_TYPE = {
    "type": ["object", "null"],
    "properties": {"v": {"type": "integer"}, "next": {"$ref": "#"}},
    "required": ["v", "next"],
}
ONE_OF = {
    "type": "object",
    "properties": {"item": {"oneOf": [{"type": "string"}, {"$ref": "#"}]}},
    "required": ["item"],
}


@pytest.mark.parametrize("schema", [LINKED_LIST, TREE, NULLABLE_TYPE, ONE_OF])
def test_recursive_schemas_get_a_finite_valid_instance(schema):
    for seed in ("a", "b", "c"):
        jsonschema.validate(instance_for(schema, seed=seed), schema)


def test_recursive_response_format_over_http(shared_batch_server):
    client = sdk_client(shared_batch_server)
    structured = {
        "type": "json_schema",
        "json_schema": {"name": "list", "schema": LINKED_LIST, "strict": True},
    }
    batch = wait_final(client, submit(client, [request_line("l", response_format=structured)]).id)
    (line,) = read_lines(client, batch.output_file_id)
    content = line["response"]["body"]["choices"][0]["message"]["content"]
    jsonschema.validate(orjson.loads(content), LINKED_LIST)


# 4. secrets stay out of argv


def test_keys_go_through_the_environment_not_argv(batch_server, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "inherited-key")  # the parent's own must not leak in
    server = batch_server(
        api_key="secret-123",
        upstream_api_key="upstream-456",
        responder="upstream",
        upstream_url="http://127.0.0.1:9/v1",
    )
    argv = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert b"secret-123" not in argv and b"upstream-456" not in argv
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    assert f"{UPSTREAM_API_KEY_ENV}=upstream-456".encode() in environ
    assert sdk_client(server, api_key="secret-123").files.list().data == []
    open_server = batch_server()
    assert sdk_client(open_server, api_key="inherited-key").files.list().data == []
    assert sdk_client(open_server, api_key="anything").files.list().data == []


def test_key_flags_default_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    monkeypatch.setenv(UPSTREAM_API_KEY_ENV, "upstream-env")
    parser = argparse.ArgumentParser()
    ServerConfig.add_arguments(parser)
    config = ServerConfig.from_namespace(parser.parse_args(["--data-dir", str(tmp_path)]))
    assert (config.api_key, config.upstream_api_key) == ("from-env", "upstream-env")
    flagged = parser.parse_args(["--data-dir", str(tmp_path), "--api-key", "from-flag"])
    assert ServerConfig.from_namespace(flagged).api_key == "from-flag"
    monkeypatch.delenv(API_KEY_ENV)
    parser = argparse.ArgumentParser()
    ServerConfig.add_arguments(parser)
    assert parser.parse_args(["--data-dir", str(tmp_path)]).api_key is None


# 9. a busy database does not stall the API


def test_a_write_waiting_for_the_lock_does_not_block_other_calls(batch_server):
    server = batch_server()
    client = sdk_client(server)
    file_id = client.files.create(file=("in.jsonl", jsonl([request_line("a")])), purpose="batch").id
    db = sqlite3.connect(
        server.data_dir / "state.sqlite3", isolation_level=None, check_same_thread=False
    )
    db.execute("BEGIN IMMEDIATE")  # another writer holds the lock for 2 s
    release = threading.Timer(2.0, db.execute, ["COMMIT"])
    release.start()
    creating = threading.Thread(
        target=lambda: client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    )
    try:
        creating.start()
        time.sleep(0.3)  # the create is now waiting for the lock
        started = time.monotonic()
        assert client.files.retrieve(file_id).id == file_id
        elapsed = time.monotonic() - started
    finally:
        release.join()
        creating.join()
        db.close()
    assert elapsed < 1.0, f"a read waited {elapsed:.1f} s behind a blocked write"


# 7. no spec file: only that check is skipped


def test_a_missing_spec_skips_only_the_spec_check(tmp_path):
    missing = tmp_path / "missing-spec.json"
    with pytest.warns(SpecMissingWarning, match="missing-spec.json"):
        validate = openapi_validator(missing)
    assert validate({"anything": 1}, "Batch") is None


# 6. deterministic expiry


def test_expire_after_requests_is_a_flag(tmp_path):
    config = ServerConfig(data_dir=tmp_path, expire_after_requests=5)
    assert config.to_argv()[-2:] == ["--expire-after-requests", "5"]
    with pytest.raises(ValueError):
        ServerConfig(data_dir=tmp_path, expire_after_requests=-1)
    assert LocalBatchServer(tmp_path, expire_after_requests=0).config.expire_after_requests == 0
