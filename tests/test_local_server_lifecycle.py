"""Batch lifecycle on the local server: validation failures, failed requests, expiry,
cancellation, restart after SIGKILL, injected faults."""

from __future__ import annotations

import time
from collections import Counter

import openai
import pytest

from tests.server_fixtures import (
    read_lines,
    request_line,
    sdk_client,
    submit,
    wait_final,
)


def wait_progress(client: openai.OpenAI, batch_id: str, done: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        if batch.status == "in_progress" and counts and counts.completed + counts.failed >= done:
            return batch
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} did not reach {done} requests")


def all_results(client: openai.OpenAI, batch) -> tuple[list[dict], list[dict]]:
    return read_lines(client, batch.output_file_id), read_lines(client, batch.error_file_id)


GOOD = request_line("ok")
VALIDATION_CASES = {
    "invalid_json": (["{not json", GOOD], 1),
    "missing_required_parameter": ([{k: v for k, v in GOOD.items() if k != "body"}], 1),
    "duplicate_custom_id": ([GOOD, {**GOOD, "body": {"model": "m"}}], 2),
    "invalid_method": ([{**GOOD, "method": "GET"}], 1),
    "mismatched_endpoint": ([{**GOOD, "url": "/v1/completions"}], 1),
}


@pytest.mark.parametrize("code", list(VALIDATION_CASES))
def test_validation_errors_fail_the_batch(client, openapi_validate, code):
    lines, line_number = VALIDATION_CASES[code]
    batch = wait_final(client, submit(client, lines).id)
    openapi_validate(
        client.batches.with_raw_response.retrieve(batch.id).http_response.json(), "Batch"
    )
    assert batch.status == "failed" and batch.failed_at
    assert batch.output_file_id is None and batch.in_progress_at is None
    assert batch.errors.object == "list"
    (error,) = batch.errors.data
    assert (error.code, error.line) == (code, line_number)
    assert error.message


@pytest.mark.parametrize("field", ["custom_id", "method", "url", "body"])
def test_each_missing_field_is_named(client, field):
    line = {k: v for k, v in request_line("x").items() if k != field}
    batch = wait_final(client, submit(client, [line]).id)
    (error,) = batch.errors.data
    assert (error.code, error.param, error.line) == ("missing_required_parameter", field, 1)


def test_many_errors_are_reported_with_line_numbers(client):
    lines = [
        request_line("a"),
        "[1, 2",
        "",
        {**request_line("b"), "method": "PUT"},
        request_line("a"),
    ]
    batch = wait_final(client, submit(client, lines).id)
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("invalid_json", 2),
        ("invalid_method", 4),
        ("duplicate_custom_id", 5),
    ]


def test_empty_file_fails(client):
    upload = client.files.create(file=("empty.jsonl", b"\n \n"), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_final(client, batch.id)
    assert batch.status == "failed" and batch.errors.data[0].code == "empty_file"


def test_too_many_requests_fail(batch_server, webhook_receiver):
    client = sdk_client(batch_server(max_requests_per_batch=3, allow_insecure_webhooks=True))
    lines = [request_line(f"r{i}") for i in range(4)]
    batch = wait_final(
        client, submit(client, lines, extra_body={"webhook_url": webhook_receiver.url}).id
    )
    assert batch.status == "failed" and batch.errors.data[0].code == "too_many_requests"
    assert webhook_receiver.wait_for(1)[0]["type"] == "batch.failed"
    ok = wait_final(client, submit(client, lines[:3]).id)
    assert ok.status == "completed"


def test_failed_requests_go_to_the_error_file(batch_server):
    client = sdk_client(batch_server(failure_rate=0.3, seed=5))
    ids = [f"r{i}" for i in range(200)]
    batch = wait_final(client, submit(client, [request_line(i) for i in ids]).id)
    output, errors = all_results(client, batch)
    assert batch.status == "completed"
    assert 20 < len(errors) < 100
    assert (batch.request_counts.completed, batch.request_counts.failed) == (
        len(output),
        len(errors),
    )
    assert sorted(line["custom_id"] for line in output + errors) == sorted(ids)
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] >= 400
        assert set(line["response"]["body"]["error"]) >= {"message", "type", "code"}
    assert {line["response"]["status_code"] for line in errors} == {400, 429, 500}


def test_nothing_succeeded_means_no_output_file(batch_server):
    client = sdk_client(batch_server(failure_rate=1.0))
    batch = wait_final(client, submit(client, [request_line("a"), request_line("b")]).id)
    assert batch.status == "completed"
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert batch.request_counts.failed == 2


def test_expiry_keeps_finished_results(batch_server, webhook_receiver):
    server = batch_server(expire_after_requests=40, allow_insecure_webhooks=True)
    client = sdk_client(server)
    ids = [f"r{i}" for i in range(100)]
    created = submit(
        client, [request_line(i) for i in ids], extra_body={"webhook_url": webhook_receiver.url}
    )
    batch = wait_final(client, created.id)
    output, errors = all_results(client, batch)
    assert batch.status == "expired" and batch.expired_at and batch.completed_at is None
    assert (len(output), len(errors)) == (40, 60)
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (100, 40, 60)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert all(line["response"] is None for line in errors)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(ids)
    assert webhook_receiver.wait_for(1)[0]["data"] == {"id": batch.id, "status": "expired"}
    # each batch counts its own requests; one with fewer completes
    assert wait_final(client, submit(client, [request_line("x")]).id).status == "completed"


def test_the_window_ends_by_the_clock(batch_server):
    client = sdk_client(batch_server(requests_per_second=30, expire_after=1.0))
    ids = [f"r{i}" for i in range(100)]
    created = submit(client, [request_line(i) for i in ids])
    assert created.expires_at - created.created_at <= 1
    batch = wait_final(client, created.id)
    output, errors = all_results(client, batch)
    # 100 requests at 30/s cannot finish within 1 s, however slow or fast the machine
    assert batch.status == "expired" and len(output) < 100
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(ids)


def test_cancel_keeps_finished_results(batch_server, webhook_receiver):
    server = batch_server(requests_per_second=40, allow_insecure_webhooks=True)
    client = sdk_client(server)
    ids = [f"r{i}" for i in range(200)]
    created = submit(
        client, [request_line(i) for i in ids], extra_body={"webhook_url": webhook_receiver.url}
    )
    progressing = wait_progress(client, created.id, 5)
    assert progressing.request_counts.total == 200
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = wait_final(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    output, errors = all_results(client, batch)
    assert 5 <= len(output) < 200
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(ids)
    assert webhook_receiver.wait_for(1)[0]["type"] == "batch.cancelled"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)


@pytest.mark.parametrize("ending", ["cancelled", "expired"])
def test_ending_while_validating_puts_every_request_in_the_error_file(batch_server, ending):
    options = {"expire_after": 0.3} if ending == "expired" else {}
    client = sdk_client(batch_server(validating_seconds=5, **options))
    ids = ["a", "b", "c"]
    created = submit(client, [request_line(i) for i in ids])
    if ending == "cancelled":
        client.batches.cancel(created.id)
    batch = wait_final(client, created.id)
    assert batch.status == ending and batch.in_progress_at is None
    assert batch.output_file_id is None
    code = "batch_cancelled" if ending == "cancelled" else "batch_expired"
    errors = read_lines(client, batch.error_file_id)
    assert sorted(line["custom_id"] for line in errors) == ids
    assert {line["error"]["code"] for line in errors} == {code}
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 0, 3)


def test_cancel_while_validating_an_invalid_file_fails_validation(batch_server):
    client = sdk_client(batch_server(validating_seconds=5))
    created = submit(client, [request_line("a"), "{oops"])
    client.batches.cancel(created.id)
    batch = wait_final(client, created.id)
    assert batch.status == "failed" and batch.errors.data[0].code == "invalid_json"


def test_cancel_of_a_finished_batch_is_refused(client):
    batch = wait_final(client, submit(client, [request_line("a")]).id)
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.cancel(batch.id)
    assert caught.value.body["type"] == "invalid_request_error"


def test_sigkill_mid_batch_loses_nothing(batch_server):
    server = batch_server(requests_per_second=60)
    client = sdk_client(server)
    ids = [f"r{i}" for i in range(150)]
    created = submit(client, [request_line(i) for i in ids])
    wait_progress(client, created.id, 30)
    server.kill()
    server.restart()
    assert client.batches.retrieve(created.id).request_counts.completed >= 30
    batch = wait_final(client, created.id)
    output, errors = all_results(client, batch)
    assert batch.status == "completed" and errors == []
    assert Counter(line["custom_id"] for line in output) == Counter(ids)
    assert batch.request_counts.completed == 150


def test_injected_faults(batch_server):
    server = batch_server(fault_rate=1.0, seed=1)
    client = sdk_client(server)
    seen: Counter[str] = Counter()
    for _ in range(40):
        try:
            client.files.list()
        except openai.RateLimitError as exc:
            assert exc.response.headers["retry-after"]
            seen["429"] += 1
        except openai.InternalServerError:
            seen["500"] += 1
        except openai.APIConnectionError:
            seen["dropped"] += 1
    assert set(seen) == {"429", "500", "dropped"} and sum(seen.values()) == 40


def test_some_faults_strike_after_the_change(batch_server):
    clean = batch_server()
    upload = sdk_client(clean).files.create(file=("in.jsonl", b'{"x": 1}\n'), purpose="batch")
    clean.stop()
    faulty = batch_server(data_dir=clean.data_dir, fault_rate=1.0, seed=2)
    attempts = 30
    for _ in range(attempts):
        with pytest.raises(openai.APIError):
            sdk_client(faulty).batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
    faulty.stop()
    created = list(sdk_client(batch_server(data_dir=clean.data_dir)).batches.list(limit=100))
    assert 0 < len(created) < attempts


def test_deleted_input_file_fails_the_batch(batch_server):
    client = sdk_client(batch_server(validating_seconds=0.5))
    created = submit(client, [request_line("a")])
    client.files.delete(created.input_file_id)
    batch = wait_final(client, created.id)
    assert batch.status == "failed" and batch.errors.data[0].code == "file_not_found"
