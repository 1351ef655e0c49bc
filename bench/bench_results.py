"""Benchmark: joining a 1,000,000-line batch output file to its inputs.

Ours (``collect_results``: orjson line parsing, classification, merge, join) against
``pd.read_json(lines=True)`` + ``pd.json_normalize`` + ``merge``, in the same process
on the same file (chat.completion bodies, shuffled order, 1% HTTP 500 lines). The two
results must agree on a sample.

    python bench/run.py --only bench_results
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from common import BenchRow

from dagster_inference_batch.results import ResultFile, collect_results

MODEL = "meta-llama/llama-3.1-8b-instruct/fp-8"
WORDS = "the a batch model answer quick brown fox jumps over lazy dog data asset".split()


def write_output_file(path: Path, ids: list[str], seed: int = 0) -> None:
    """A realistic output file: one chat.completion per id, shuffled, 1% HTTP 500."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    lengths = rng.integers(5, 80, len(ids))
    with open(path, "wb") as f:
        for n, k in enumerate(order):
            content = " ".join(WORDS[(k + j) % len(WORDS)] for j in range(lengths[k]))
            if k % 100 == 7:
                status, body = (
                    500,
                    {"error": {"message": "upstream failed", "type": "server_error"}},
                )
            else:
                status = 200
                body = {
                    "id": f"chatcmpl-{k:08x}",
                    "object": "chat.completion",
                    "created": 1_730_000_000 + n,
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 20 + int(k % 50),
                        "completion_tokens": int(lengths[k]),
                        "total_tokens": 20 + int(k % 50) + int(lengths[k]),
                    },
                    "system_fingerprint": None,
                }
            line = {
                "id": f"batch_req_{n:08x}",
                "custom_id": ids[k],
                "response": {"status_code": status, "request_id": f"req_{n:08x}", "body": body},
                "error": None,
            }
            f.write(orjson.dumps(line) + b"\n")


def baseline(path: Path, inputs: pd.DataFrame) -> pd.DataFrame:
    raw = pd.read_json(path, lines=True)
    flat = pd.json_normalize(raw.to_dict(orient="records"))
    choice = flat["response.body.choices"].str[0]
    flat["content"] = choice.str["message"].str["content"]
    flat["finish_reason"] = choice.str["finish_reason"]
    flat = flat.rename(
        columns={
            "response.body.usage.prompt_tokens": "prompt_tokens",
            "response.body.usage.completion_tokens": "completion_tokens",
            "response.status_code": "status_code",
        }
    )
    columns = ["custom_id", "content", "finish_reason", "prompt_tokens", "completion_tokens"]
    return inputs.merge(flat[[*columns, "status_code"]], on="custom_id", how="left")


def ours(path: Path, inputs: pd.DataFrame) -> pd.DataFrame:
    files = [ResultFile(path, "output", "batch_1", 1)]
    return collect_results(files, inputs["custom_id"].astype(str).tolist(), inputs)


def timed(fn, *args) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def run(quick: bool) -> list[BenchRow]:
    """Both sides on a 1,000,000-line file (quick: 50,000); ours must be >= 3x faster."""
    rows = 50_000 if quick else 1_000_000
    ids = [f"item-{i:07d}" for i in range(rows)]
    inputs = pd.DataFrame(
        {"custom_id": ids, "prompt": [f"question {i}" for i in range(rows)], "n": 1}
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "output.jsonl")
        write_output_file(path, ids)
        size = os.path.getsize(path)
        mine, result = timed(ours, path, inputs)
        base, expected = timed(baseline, path, inputs)
    assert len(result) == len(expected) == rows
    assert result["custom_id"].tolist() == expected["custom_id"].tolist()
    sample = np.random.default_rng(1).choice(rows, 2000, replace=False)
    ok = (expected["status_code"] < 400).to_numpy()
    assert (result["status"].to_numpy() == np.where(ok, "succeeded", "failed")).all()
    for column in ("content", "finish_reason", "prompt_tokens", "completion_tokens"):
        for i in sample[ok[sample]]:
            assert result[column].iloc[i] == expected[column].iloc[i], (column, i)
    ratio = base / mine
    return [
        BenchRow(
            benchmark=f"join: {rows:,}-line output file to its inputs",
            ours=f"{mine:.2f} s",
            baseline=f"{base:.2f} s",
            ratio=round(ratio, 2),
            bar="speed-up >= 3",
            passed=ratio >= 3,
            detail={"rows": rows, "file_mb": round(size / 1e6, 1)},
        )
    ]
