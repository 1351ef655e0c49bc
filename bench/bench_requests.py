"""Benchmark: building + validating + writing request lines vs an itertuples/json.dumps loop.

Both run in the same process on the same DataFrame (prompt column, chat endpoint,
model + max_tokens) and their files must hold the same requests.

    PYTHONPATH=. .venv/bin/python bench/bench_requests.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from machine import describe_machine

from dagster_inference_batch.request_lines import build_requests, shard_requests, write_jsonl

MODEL = "meta-llama/llama-3.1-8b-instruct/fp-8"
MAX_TOKENS = 256
WORDS = "the a batch model prompt answer quick brown fox jumps over lazy dog data asset".split()


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Ids like ``item-0000042`` and prompts of 10-60 words (some non-ASCII)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, 60, rows)
    words = rng.choice(WORDS, lengths.sum())
    cuts = np.cumsum(lengths)[:-1]
    prompts = [f"Résumé {i}: " + " ".join(w) for i, w in enumerate(np.split(words, cuts))]
    return pd.DataFrame({"custom_id": [f"item-{i:07d}" for i in range(rows)], "prompt": prompts})


def baseline(df: pd.DataFrame, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in df.itertuples():
            line = {
                "custom_id": row.custom_id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": row.prompt}],
                    "max_tokens": MAX_TOKENS,
                },
            }
            f.write(json.dumps(line) + "\n")


def ours(df: pd.DataFrame, path: Path) -> None:
    encoded = build_requests(
        df, model=MODEL, prompt_column="prompt", body_params={"max_tokens": MAX_TOKENS}
    )
    write_jsonl(encoded, path)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    df = make_frame(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        base_path, our_path = Path(tmp, "baseline.jsonl"), Path(tmp, "ours.jsonl")
        base = min(timed(baseline, df, base_path) for _ in range(args.repeat))
        mine = min(timed(ours, df, our_path) for _ in range(args.repeat))
        with open(base_path, "rb") as a, open(our_path, "rb") as b:
            for n, (x, y) in enumerate(zip(a, b, strict=True)):
                if n % 997 == 0:
                    assert orjson.loads(x) == orjson.loads(y), n
        encoded = build_requests(
            df, model=MODEL, prompt_column="prompt", body_params={"max_tokens": MAX_TOKENS}
        )
        start = time.perf_counter()
        shards = shard_requests(encoded)
        shard_time = time.perf_counter() - start
        size = os.path.getsize(our_path)
    print(describe_machine())
    print(f"rows: {args.rows:,}  file: {size / 1e6:.1f} MB  (best of {args.repeat})")
    print(f"baseline itertuples + json.dumps + write: {base:.2f} s")
    print(f"build_requests + write_jsonl:             {mine:.2f} s")
    print(f"speed-up: {base / mine:.1f}x")
    print(f"shard_requests (defaults, with sha256): {shard_time:.2f} s -> {len(shards)} shards")


if __name__ == "__main__":
    main()
