"""Benchmark: results beyond memory, 5,000,000 output lines streamed into Parquet.

``write_results_dataset`` joins the files of ``result_files.py`` (a 5,000,000-line output
file, about 3.3 GB, and a 50,000-line error file of an earlier attempt) to the
5,000,000 requested ids, with an input column, into a Parquet dataset in a temporary
folder, in its own process (``common.measure_in_subprocess``). The dataset is then
checked: one row per id, the status counts of the summary. Bar (issue 13): peak RSS
under 1 GB.

    python bench/run.py --only bench_stream [--quick]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

import pandas as pd
import pyarrow.dataset as ds
from common import BenchRow, measure_in_subprocess
from result_files import custom_id_array, result_files

from dagster_inference_batch.results import ResultFile
from dagster_inference_batch.results_stream import write_results_dataset

FULL_ROWS, QUICK_ROWS = 5_000_000, 100_000
LIMIT_MB = 1024


def stream(rows: int, folder: str) -> dict[str, Any]:
    """Stream the join into ``folder``; returns the join's own seconds and summary."""
    output, errors = result_files(rows)
    ids = custom_id_array(rows)  # an Arrow array, as the results step holds them
    inputs = pd.DataFrame({"custom_id": pd.array(ids, dtype=pd.ArrowDtype(ids.type)), "n": 1})
    start = time.perf_counter()
    files = [ResultFile(errors, "error", "batch_1", 1), ResultFile(output, "output", "batch_2", 2)]
    handle = write_results_dataset(files, ids, folder, inputs)
    return {
        "seconds": time.perf_counter() - start,
        "rows": handle.summary.rows,
        "statuses": handle.summary.statuses,
    }


def run(quick: bool) -> list[BenchRow]:
    """The streaming bar, on 5,000,000 lines (``quick``: 100,000)."""
    rows = QUICK_ROWS if quick else FULL_ROWS
    output, errors = result_files(rows)
    megabytes = (output.stat().st_size + errors.stat().st_size) / 1e6
    folder = tempfile.mkdtemp(prefix="dib-bench-stream-")
    try:
        measured = measure_in_subprocess("bench_stream:stream", rows, folder)
        written = ds.dataset(folder, format="parquet")
        if written.count_rows() != rows or measured.value["rows"] != rows:
            raise AssertionError(f"the dataset holds {written.count_rows()} rows, not {rows}")
        failed = written.count_rows(filter=ds.field("status") == "failed")
        if failed != measured.value["statuses"]["failed"] or failed != rows // 100:
            raise AssertionError(f"{failed} failed rows in the dataset")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = measured.value["seconds"]
    return [
        BenchRow(
            f"stream results to Parquet: peak RSS ({rows:,} + {rows // 100:,} lines, "
            f"{megabytes:.0f} MB)",
            f"{measured.peak_rss_mb:.0f} MB ({seconds:.1f} s, {megabytes / seconds:.0f} MB/s)",
            f"limit {LIMIT_MB} MB",
            None,
            f"peak RSS < {LIMIT_MB} MB",
            measured.peak_rss_mb < LIMIT_MB,
            {
                "rows": rows,
                "megabytes": round(megabytes, 1),
                "peak_rss_mb": measured.peak_rss_mb,
                "seconds": seconds,
            },
        )
    ]
