"""Benchmark: building + validating + writing request lines vs an itertuples/json.dumps loop.

Both run in the same process on the same DataFrame (prompt column, chat endpoint,
model + max_tokens) and their files must hold the same requests. Run it with
``python bench/run.py --only bench_requests``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from common import BenchRow

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


def request_line(row: Any) -> str:
    """One request line from an ``itertuples`` row with ``json.dumps``: the baseline's way."""
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
    return json.dumps(line) + "\n"


def baseline(df: pd.DataFrame, path: Path) -> None:
    """Write the frame's requests a line at a time, the way a hand-written script does."""
    with open(path, "w", encoding="utf-8") as f:
        for row in df.itertuples():
            f.write(request_line(row))


def ours(df: pd.DataFrame, path: Path) -> None:
    """Build, validate and write the same requests with the package's fast builder."""
    encoded = build_requests(
        df, model=MODEL, prompt_column="prompt", body_params={"max_tokens": MAX_TOKENS}
    )
    write_jsonl(encoded, path)


def timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(quick: bool) -> list[BenchRow]:
    """Best of 3 of each side on 1,000,000 rows (quick: 50,000); ours must be >= 3x faster."""
    rows, repeat = (50_000 if quick else 1_000_000), 3
    df = make_frame(rows)
    with tempfile.TemporaryDirectory() as tmp:
        base_path, our_path = Path(tmp, "baseline.jsonl"), Path(tmp, "ours.jsonl")
        base = min(timed(baseline, df, base_path) for _ in range(repeat))
        mine = min(timed(ours, df, our_path) for _ in range(repeat))
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
    ratio = base / mine
    return [
        BenchRow(
            benchmark=f"build: {rows:,} chat requests to validated JSONL (best of {repeat})",
            ours=f"{mine:.2f} s",
            baseline=f"{base:.2f} s",
            ratio=round(ratio, 2),
            bar="speed-up >= 3",
            passed=ratio >= 3,
            detail={
                "rows": rows,
                "file_mb": round(size / 1e6, 1),
                "ours_seconds": round(mine, 3),
                "baseline_seconds": round(base, 3),
                "shard_requests_seconds": round(shard_time, 3),
                "shards": len(shards),
            },
        )
    ]
