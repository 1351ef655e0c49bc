"""Throughput of the local Batch API server: N chat requests from upload to downloaded output.

Run: ``python bench/run.py --only bench_server_throughput``. Each size starts a server with
default flags (offline responder) via `LocalBatchServer`, uploads the requests in shards of
50,000 (the default per-batch limit) with the openai SDK, creates one batch per shard, polls
every 0.2 s until all are final, streams every output file down and counts the lines.
"""

from __future__ import annotations

import tempfile
import time

import openai
import orjson
from common import BenchRow

from dagster_inference_batch.local_server import LocalBatchServer

ENDPOINT = "/v1/chat/completions"
SHARD_SIZE = 50_000  # the server's default per-batch limit
SECONDS_PER_REQUEST = 30 / 100_000  # the bar: 100,000 in 30 s, 1,000,000 in 300 s
FINAL = ("completed", "failed", "expired", "cancelled")


def build_shards(count: int, shard_size: int) -> list[bytes]:
    """``count`` chat request lines as JSONL files of ``shard_size`` lines each."""
    lines = [
        orjson.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": ENDPOINT,
                "body": {
                    "model": "local-model",
                    "max_tokens": 64,
                    "messages": [
                        {"role": "system", "content": "You summarise product reviews."},
                        {
                            "role": "user",
                            "content": f"Review {i}: solid build, fair price, "
                            "battery lasts two days, the screen is a little dim outdoors.",
                        },
                    ],
                },
            }
        )
        for i in range(count)
    ]
    return [b"\n".join(lines[i : i + shard_size]) + b"\n" for i in range(0, count, shard_size)]


def through_server(count: int, shard_size: int = SHARD_SIZE) -> dict[str, float]:
    """Seconds per phase for ``count`` requests on a fresh server; asserts every answer came."""
    timings: dict[str, float] = {}
    mark = 0.0

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[name] = now - mark
        mark = now

    shards = build_shards(count, shard_size)
    with tempfile.TemporaryDirectory() as data_dir, LocalBatchServer(data_dir) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        mark = time.perf_counter()
        files = [
            client.files.create(file=(f"shard-{n}.jsonl", data), purpose="batch")
            for n, data in enumerate(shards)
        ]
        phase("upload")
        batches = [
            client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h")
            for f in files
        ]
        while any(b.status not in FINAL for b in batches):
            time.sleep(0.2)
            batches = [client.batches.retrieve(b.id) for b in batches]
        phase("process")
        assert all(b.status == "completed" for b in batches), [b.status for b in batches]
        lines = 0
        for batch in batches:
            assert batch.output_file_id
            with client.files.with_streaming_response.content(batch.output_file_id) as response:
                for chunk in response.iter_bytes(1 << 20):
                    lines += chunk.count(b"\n")
        phase("download")
    assert lines == count, (lines, count)
    timings["total"] = sum(timings.values())
    return timings


def run(quick: bool) -> list[BenchRow]:
    """100,000 requests in < 30 s and 1,000,000 in < 300 s (quick: 10,000 in < 3 s)."""
    rows = []
    for count in (10_000,) if quick else (100_000, 1_000_000):
        limit = count * SECONDS_PER_REQUEST
        timings = through_server(count)
        rows.append(
            BenchRow(
                benchmark=f"local server: {count:,} requests, upload to downloaded output",
                ours=f"{timings['total']:.1f} s",
                baseline="none",
                ratio=None,
                bar=f"< {limit:g} s",
                passed=timings["total"] < limit,
                detail={"requests": count, **{k: round(v, 3) for k, v in timings.items()}},
            )
        )
    return rows
