"""Benchmark: a DataFrame of prompts to a DataFrame of answers, through the local server.

Ours: ``build_requests`` then ``InferenceBatchClient.submit`` -> ``wait`` -> ``results``
with the client's defaults (incremental, so every request is looked up in the answer
store before upload and its answer stored after; the store starts empty each run, so
nothing is skipped). The baseline is the plain openai SDK script a user would write:
``json.dumps`` per row into files of at most 50,000 lines (the server's per-batch
limit), upload, create, poll, ``files.content``, ``pd.read_json(lines=True)`` and a merge
to the inputs. Both poll every ``POLL_SECONDS``, run in their own process (wall time and
peak RSS) against the same server (default offline responder, short validating and
finalizing), on the same rows (read from a Parquet file, made outside the timings), and
must agree (row count, first and last answer).
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import openai
import pandas as pd
from bench_requests import MAX_TOKENS, MODEL, make_frame, request_line
from common import BenchRow, measure_in_subprocess

from dagster_inference_batch import InferenceBatchClient
from dagster_inference_batch.local_server import LocalBatchServer
from dagster_inference_batch.request_lines import build_requests

ENDPOINT = "/v1/chat/completions"
POLL_SECONDS = 0.5
SHARD_LINES = 50_000  # the local server's default per-batch limit, for both sides
FINAL = ("completed", "failed", "expired", "cancelled")


def ours(base_url: str, inputs_path: str, store_dir: str) -> list[str]:
    """Submit, wait and collect with the package's client; the first and last answers."""
    inputs = pd.read_parquet(inputs_path)
    encoded = build_requests(
        inputs, model=MODEL, prompt_column="prompt", body_params={"max_tokens": MAX_TOKENS}
    )
    with InferenceBatchClient(
        base_url=base_url, answer_store=store_dir, max_requests_per_batch=SHARD_LINES
    ) as client:
        job = client.wait(client.submit(encoded), poll_interval=POLL_SECONDS)
        answers = client.results(job, inputs)
    assert (answers["status"] == "succeeded").all(), answers["status"].value_counts()
    return [str(answers["content"].iloc[0]), str(answers["content"].iloc[-1]), str(len(answers))]


def baseline(base_url: str, inputs_path: str) -> list[str]:
    """The same with the openai SDK, ``json.dumps`` and pandas, as a user would write it."""
    inputs = pd.read_parquet(inputs_path)
    rows = len(inputs)
    sdk = openai.OpenAI(base_url=base_url, api_key="bench")
    batches = []
    for start in range(0, rows, SHARD_LINES):
        chunk = inputs.iloc[start : start + SHARD_LINES]
        data = "".join(request_line(row) for row in chunk.itertuples()).encode()
        upload = sdk.files.create(file=(f"part-{start}.jsonl", data), purpose="batch")
        batches.append(
            sdk.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h")
        )
    while any(b.status not in FINAL for b in batches):
        time.sleep(POLL_SECONDS)
        batches = [sdk.batches.retrieve(b.id) for b in batches]
    frames = []
    for batch in batches:
        assert batch.status == "completed" and batch.output_file_id, batch
        text = sdk.files.content(batch.output_file_id).text
        frames.append(pd.read_json(io.StringIO(text), lines=True))
    output = pd.concat(frames, ignore_index=True)
    output["content"] = output["response"].map(
        lambda r: r["body"]["choices"][0]["message"]["content"]
    )
    answers = inputs.merge(output[["custom_id", "content"]], on="custom_id", how="left")
    return [str(answers["content"].iloc[0]), str(answers["content"].iloc[-1]), str(len(answers))]


def run(quick: bool) -> list[BenchRow]:
    """Time both sides on 100,000 rows (quick: 5,000); ours must take at most the baseline's."""
    rows = 5_000 if quick else 100_000
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalBatchServer(
            Path(tmp, "server"), validating_seconds=0.05, finalizing_seconds=0.05
        ) as server,
    ):
        inputs = str(Path(tmp, "inputs.parquet"))
        make_frame(rows).to_parquet(inputs)
        base = measure_in_subprocess("bench_e2e:baseline", server.base_url, inputs)
        mine = measure_in_subprocess("bench_e2e:ours", server.base_url, inputs, str(Path(tmp, "a")))
    assert mine.value == base.value, (mine.value, base.value)
    ratio = mine.seconds / base.seconds
    return [
        BenchRow(
            benchmark=f"end to end: {rows:,} requests, submit/wait/results vs openai SDK script",
            ours=f"{mine.seconds:.1f} s, {mine.peak_rss_mb:.0f} MB",
            baseline=f"{base.seconds:.1f} s, {base.peak_rss_mb:.0f} MB",
            ratio=round(ratio, 2),
            bar="ratio <= 1.0 (time)",
            passed=ratio <= 1.0,
            detail={
                "rows": rows,
                "poll_seconds": POLL_SECONDS,
                "ours_seconds": round(mine.seconds, 3),
                "baseline_seconds": round(base.seconds, 3),
                "ours_peak_rss_mb": round(mine.peak_rss_mb, 1),
                "baseline_peak_rss_mb": round(base.peak_rss_mb, 1),
            },
        )
    ]
