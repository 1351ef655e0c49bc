"""Throughput of the local Batch API server: N chat requests from upload to downloaded output.

Run: `.venv/bin/python bench/bench_server_throughput.py [--requests 100000]`.
Starts the server with default flags (offline responder) via `LocalBatchServer`, uploads the
requests in shards of 50,000 (the default per-batch limit) with the openai SDK, creates one
batch per shard, polls until all are final, streams every output file down and counts lines.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import openai
import orjson
from machine import describe_machine

from dagster_inference_batch.local_server import LocalBatchServer

ENDPOINT = "/v1/chat/completions"


def build_shards(count: int, shard_size: int) -> list[bytes]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=50_000)
    args = parser.parse_args()

    timings: dict[str, float] = {}
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[name] = now - mark
        mark = now

    shards = build_shards(args.requests, args.shard_size)
    phase("build request lines (not counted)")
    with tempfile.TemporaryDirectory() as data_dir, LocalBatchServer(data_dir) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        phase("start server (not counted)")
        files = [
            client.files.create(file=(f"shard-{n}.jsonl", data), purpose="batch")
            for n, data in enumerate(shards)
        ]
        phase("upload")
        batches = [
            client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h")
            for f in files
        ]
        while any(b.status not in ("completed", "failed", "expired", "cancelled") for b in batches):
            time.sleep(0.2)
            batches = [client.batches.retrieve(b.id) for b in batches]
        phase("process (create -> all completed)")
        assert all(b.status == "completed" for b in batches), [b.status for b in batches]
        lines = 0
        for batch in batches:
            assert batch.output_file_id
            with client.files.with_streaming_response.content(batch.output_file_id) as response:
                for chunk in response.iter_bytes(1 << 20):
                    lines += chunk.count(b"\n")
        phase("download")
    assert lines == args.requests, lines

    counted = [v for k, v in timings.items() if "not counted" not in k]
    print(f"requests: {args.requests} in {len(shards)} batch(es)")
    for name, seconds in timings.items():
        print(f"  {name:<38} {seconds:7.2f} s")
    print(f"  {'total (upload -> downloaded output)':<38} {sum(counted):7.2f} s")
    print(describe_machine())


if __name__ == "__main__":
    main()
