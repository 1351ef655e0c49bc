"""The sensor's tick as in-flight partitions grow: bounded reads, every batch seen.

Batches are created on the local server over HTTP and stay ``validating`` (or
``cancelling``) until the test moves them; each partition's ``<name>_batch``
materialization records its job, as the batch step writes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import openai
import orjson
import pytest

from dagster_inference_batch import (
    BatchJob,
    BatchShard,
    InferenceBatchResource,
    build_inference_batch_assets,
)
from dagster_inference_batch import provider_calls as provider_calls_module
from dagster_inference_batch.local_server import LocalBatchServer
from dagster_inference_batch.metadata import batch_metadata
from dagster_inference_batch.metadata_set import InferenceBatchMetadataSet
from dagster_inference_batch.progress import LISTING_MIN_BATCHES
from dagster_inference_batch.provider_calls import ProviderCalls

from .server_fixtures import batch_server  # noqa: F401 - pytest fixture

ENDPOINT = "/v1/chat/completions"
STILL = 1e6  # seconds a batch stays validating / cancelling
EVENT_LOG_READS = (
    "fetch_materializations",
    "fetch_observations",
    "get_run_records",
    "get_runs",
    "get_latest_storage_id_by_partition",
    "get_dynamic_partitions",
    "has_dynamic_partition",
    "get_latest_materialization_event",
)


class Pipeline:
    """``llm`` over dynamic partitions, its instance and its sensor's cursor."""

    def __init__(self, server: LocalBatchServer) -> None:
        self.items = dg.DynamicPartitionsDefinition(name="items")

        @dg.asset(name="prompts", partitions_def=self.items)
        def prompts() -> None:
            return None

        self.defs = build_inference_batch_assets(
            "llm", upstream=prompts, partitions_def=self.items, prompt_column="prompt", model="m"
        )
        self.instance = dg.DagsterInstance.ephemeral()
        self.sdk = openai.OpenAI(base_url=server.base_url, api_key="test-key")
        self.resources = {
            "inference_batch": InferenceBatchResource(base_url=server.base_url, api_key="test-key")
        }
        self.cursor: str | None = None
        line = {"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": {"model": "m"}}
        upload = self.sdk.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
        self.file_id = upload.id

    def in_flight(self, partitions: list[str]) -> dict[str, str]:
        """A batch in flight per partition, recorded as the batch step records it."""
        self.instance.add_dynamic_partitions("items", partitions)
        with ThreadPoolExecutor(8) as pool:
            batches = list(pool.map(lambda _: self.create(), partitions))
        batch_ids = {}
        for partition, batch in zip(partitions, batches, strict=True):
            shard = BatchShard(
                index=0,
                attempt=1,
                idempotency_key=f"k-{partition}-0",
                file_id=self.file_id,
                request_count=1,
                bytes=10,
                sha256="",
                batch_id=batch.id,
                status=batch.status,
                created_at=batch.created_at,
            )
            job = BatchJob(endpoint=ENDPOINT, idempotency_key=f"k-{partition}", shards=[shard])
            self.instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    self.defs.batch_key, partition=partition, metadata=batch_metadata(job)
                )
            )
            batch_ids[partition] = batch.id
        return batch_ids

    def create(self) -> Any:
        """A batch over the pipeline's one input file."""
        return self.sdk.batches.create(
            input_file_id=self.file_id, endpoint=ENDPOINT, completion_window="24h"
        )

    def tick(self) -> dict[str, str]:
        """One tick; the status each partition's progress observation reports."""
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        )
        with dg.partition_loading_context(dynamic_partitions_store=self.instance):
            result = self.defs.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        status = InferenceBatchMetadataSet.key("status")
        return {
            event.partition: event.metadata[status].value
            for event in result.asset_events
            if isinstance(event, dg.AssetObservation) and status in event.metadata
        }


@pytest.fixture
def server(batch_server: Any) -> LocalBatchServer:  # noqa: F811 - the fixture above
    return batch_server(validating_seconds=STILL, finalizing_seconds=STILL)


@pytest.fixture
def provider_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the provider calls the client makes: retrieves and listing pages."""
    calls: Counter[str] = Counter()
    retrieve, listing = ProviderCalls.retrieve_batch, ProviderCalls.listing

    def counted_retrieve(self: ProviderCalls, batch_id: str) -> Any:
        calls["retrieve"] += 1
        calls[batch_id] += 1
        return retrieve(self, batch_id)

    def counted_listing(self: ProviderCalls, endpoint: str, fetch: Any) -> Any:
        calls[endpoint] += 1
        return listing(self, endpoint, fetch)

    monkeypatch.setattr(ProviderCalls, "retrieve_batch", counted_retrieve)
    monkeypatch.setattr(ProviderCalls, "listing", counted_listing)
    return calls


def count_event_log_reads(
    monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance
) -> Counter[str]:
    """Counts the instance's event-log, runs and partition queries."""
    reads: Counter[str] = Counter()
    for name in EVENT_LOG_READS:
        original = getattr(instance, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any):
            reads[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(instance, name, counted)
    return reads


def test_a_tick_reads_a_bounded_number_of_times_as_partitions_grow(
    server: LocalBatchServer, provider_calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[int, tuple[int, int, Counter[str]]] = {}
    for n in (10, 100):
        pipeline = Pipeline(server)
        pipeline.in_flight([f"p{n}-{i}" for i in range(n)])
        reads = count_event_log_reads(monkeypatch, pipeline.instance)
        provider_calls.clear()
        statuses = pipeline.tick()
        assert statuses == {f"p{n}-{i}": "validating" for i in range(n)}
        first_reads = sum(reads.values())
        reads.clear()
        assert pipeline.tick() == {}  # nothing changed: nothing recorded
        seen[n] = (first_reads, sum(reads.values()), Counter(provider_calls))

    # the event log is read as often for 100 partitions as for 10, and less once the
    # records were parsed (a materialization never changes)
    assert seen[100][0] == seen[10][0]
    assert seen[100][1] == seen[10][1] < seen[10][0]
    # 10 batches: one retrieve each, as always; 100: a page of the listing, no retrieve
    assert seen[10][2]["retrieve"] == 2 * 10 and seen[10][2]["GET /batches"] == 0
    assert seen[100][2]["retrieve"] == 0
    assert seen[100][2]["GET /batches"] <= 2 * 2


def test_a_listing_refresh_sees_every_batch_and_retrieves_the_ones_not_listed(
    server: LocalBatchServer, provider_calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    n = LISTING_MIN_BATCHES + 5
    pipeline = Pipeline(server)
    batch_ids = pipeline.in_flight([f"p{i}" for i in range(n)])
    unknown = pipeline.create()  # the newest: listed first, and no partition's
    unlisted = batch_ids["p3"]  # a listing that lags: the client must retrieve it
    list_batches = ProviderCalls.list_batches

    def lagging(self: ProviderCalls, **kwargs: Any) -> Iterator[Any]:
        return (b for b in list_batches(self, **kwargs) if b["id"] != unlisted)  # as_dicts

    monkeypatch.setattr(ProviderCalls, "list_batches", lagging)
    for batch_id in [*batch_ids.values(), unknown.id]:
        pipeline.sdk.batches.cancel(batch_id)  # the provider moves them on

    assert pipeline.tick() == {f"p{i}": "cancelling" for i in range(n)}
    assert provider_calls["retrieve"] == 1 and provider_calls[unlisted] == 1
    assert provider_calls[unknown.id] == 0
    assert 1 <= provider_calls["GET /batches"] <= 2


def test_a_listing_read_in_slices_at_once_sees_every_batch(
    server: LocalBatchServer, provider_calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_calls_module, "LISTING_PAGE", 5)  # 40 batches: 8 pages
    n = 40
    pipeline = Pipeline(server)
    batch_ids = pipeline.in_flight([f"p{i}" for i in range(n)])
    unknown = pipeline.create()  # the newest: listed first, and no partition's
    starts: list[str | None] = []
    list_batches = ProviderCalls.list_batches

    def recorded(self: ProviderCalls, **kwargs: Any) -> Iterator[Any]:
        starts.append(kwargs.get("after"))
        return list_batches(self, **kwargs)

    monkeypatch.setattr(ProviderCalls, "list_batches", recorded)
    for batch_id in [*batch_ids.values(), unknown.id]:
        pipeline.sdk.batches.cancel(batch_id)

    assert pipeline.tick() == {f"p{i}": "cancelling" for i in range(n)}
    assert provider_calls["retrieve"] == 0
    assert len(starts) == 8 and len(set(starts)) == 8 and None in starts
    assert set(starts) - {None} <= set(batch_ids.values())
