"""What a local Batch API server holds, counted through the openai SDK, and the checks the
flow tests share: one batch per shard at the provider, every input row answered once.

The SDK client retries (the server may be injecting faults); listings follow every page.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from dagster_inference_batch.local_server import LocalBatchServer
from tests.server_fixtures import sdk_client


def provider_batches(server: LocalBatchServer, api_key: str = "test-key") -> list[Any]:
    """Every batch the server holds (all pages of `GET /batches`)."""
    client = sdk_client(server, api_key, max_retries=15)
    batches, after = [], None
    while True:
        page = client.batches.list(limit=100, **({"after": after} if after else {}))
        batches += page.data
        if not page.data or not page.has_more:
            return batches
        after = page.data[-1].id


def provider_input_files(server: LocalBatchServer, api_key: str = "test-key") -> list[Any]:
    """Every file uploaded with purpose `batch` (the request lines, not results)."""
    client = sdk_client(server, api_key, max_retries=15)
    return list(client.files.list(purpose="batch"))


def assert_one_batch_per_shard(
    server: LocalBatchServer, shards: int, *, files: bool = True, api_key: str = "test-key"
) -> list[Any]:
    """Exactly `shards` batches, each idempotency key once, each on its own input file;
    with `files`, exactly `shards` input files too, each used by one batch."""
    batches = provider_batches(server, api_key)
    keys = Counter((b.metadata or {}).get("idempotency_key") for b in batches)
    assert len(batches) == shards, f"{len(batches)} batches for {shards} shards: {keys}"
    assert len(keys) == shards and None not in keys, keys
    inputs = Counter(b.input_file_id for b in batches)
    assert len(inputs) == shards, f"batches share input files: {inputs}"
    if files:
        uploaded = provider_input_files(server, api_key)
        assert len(uploaded) == shards, (
            f"{len(uploaded)} input files for {shards} shards: "
            f"{sorted((f.filename, f.id) for f in uploaded)}"
        )
        assert {f.id for f in uploaded} == set(inputs)
    return batches


def assert_every_row_once(frame: pd.DataFrame, expected_ids: list[str]) -> None:
    """Each expected custom_id exactly once, and every row succeeded."""
    counts = Counter(frame["custom_id"])
    assert sorted(counts) == sorted(expected_ids), set(counts) ^ set(expected_ids)
    assert set(counts.values()) == {1}, {k: n for k, n in counts.items() if n != 1}
    statuses = Counter(frame["status"])
    assert statuses == {"succeeded": len(expected_ids)}, statuses
