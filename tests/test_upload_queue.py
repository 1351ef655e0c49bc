"""The upload queue in the event log (issue 10, item 2): uploads that wait for the
provider's upload limit take the slots in the order they joined, each logging its place,
instead of all aiming at the same slot and meeting the provider's 429s."""

from __future__ import annotations

import logging
import threading
import time

import dagster as dg
import openai
import pandas as pd
import pytest

from dagster_inference_batch import InferenceBatchClient
from dagster_inference_batch.request_lines import build_requests
from dagster_inference_batch.upload_queue import EventLogUploadQueue

API_KEY = "sk-queue-secret-key"
INTERVAL = 1.5
CREATED_AT_SLACK = 1.0  # `created_at` is whole seconds
QUEUE_KEY = dg.AssetKey("llm_input_file")


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def queue(instance, run_id: str = "", partition: str | None = None) -> EventLogUploadQueue:
    return EventLogUploadQueue(instance, QUEUE_KEY, partition, run_id, stale_after=60)


def lines(prefix: str):
    frame = pd.DataFrame(
        {
            "custom_id": [f"{prefix}-{i}" for i in range(2)],
            "prompt": [f"hi {prefix} {i}" for i in range(2)],
        }
    )
    return build_requests(frame, model="m", prompt_column="prompt")


def test_places_leave_when_left_when_their_run_ended_or_when_stale(instance):
    first, second = queue(instance).join(), queue(instance, partition="p1").join()
    assert [t for t, _ in queue(instance).waiting()] == [first, second]
    queue(instance).leave(first)
    assert [t for t, _ in queue(instance).waiting()] == [second]

    finished = dg.materialize([dg.asset(name="noop")(lambda: None)], instance=instance).run_id
    queue(instance, run_id=finished).join()  # its run is over: a step that died mid-wait
    queue(instance, run_id="no-such-run").join()
    assert [t for t, _ in queue(instance).waiting()] == [second]

    stale = EventLogUploadQueue(instance, QUEUE_KEY, None, "", stale_after=0.5)
    time.sleep(0.6)
    assert stale.waiting() == []


def test_simultaneous_uploads_take_turns_in_queue_order_without_429s(
    batch_server, instance, caplog
):
    server = batch_server(api_key=API_KEY, profile="inference.net", upload_interval=INTERVAL)
    uploaders = 4
    start = threading.Barrier(uploaders)
    errors: list[BaseException] = []

    def upload(index: int) -> None:  # one client each, as separate processes would have
        try:
            with InferenceBatchClient(
                api_key=API_KEY,
                base_url=server.base_url,
                provider="inference.net",
                upload_interval_seconds=INTERVAL,
                check_models=False,
                upload_queue=queue(instance, partition=f"p{index}"),
            ) as client:
                start.wait()
                client.upload(lines(f"p{index}"))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    with caplog.at_level(logging.INFO, logger="dagster_inference_batch"):
        threads = [threading.Thread(target=upload, args=(i,)) for i in range(uploaders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors

    sdk = openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
    uploads = sorted(f.created_at for f in sdk.files.list(purpose="batch"))
    assert len(uploads) == uploaders
    gaps = [later - earlier for earlier, later in zip(uploads[:-1], uploads[1:], strict=True)]
    assert all(gap >= INTERVAL - CREATED_AT_SLACK for gap in gaps), uploads
    assert "429, Retry-After" not in caplog.text  # the queue, not the provider, paced them
    places = {m for m in caplog.messages if "in the upload queue" in m}
    assert any(f"of {uploaders} in the upload queue" in m for m in places), places
    assert queue(instance).waiting() == []
    assert API_KEY not in caplog.text
