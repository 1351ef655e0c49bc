"""What every benchmark module returns to ``bench/run.py``, and how it measures a side.

Each ``bench/bench_<name>.py`` exposes ``run(quick: bool) -> list[BenchRow]``: one row per
bar it checks. ``run.py`` prints them as one table and writes ``bench/results.json``.

Memory comparisons run each side in its own process, so one side's allocations cannot
inflate the other's peak: ``measure_in_subprocess`` runs ``module:function(*args)`` in a
fresh interpreter and reports its wall time and peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BenchRow:
    """One bar of one benchmark, as printed and written to ``results.json``.

    ``ours`` and ``baseline`` are display strings ("3.1 s", "412 MB"); ``ratio`` is the
    number the bar is checked against (None when there is no baseline), ``bar`` says the
    rule in words ("ratio >= 3"), and ``passed`` is whether this run met it. ``detail``
    holds raw figures (seconds, MB, MB/s, sizes) for the record.
    """

    benchmark: str
    ours: str
    baseline: str
    ratio: float | None
    bar: str
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON-ready dict, with the pass flag under ``pass``."""
        data = asdict(self)
        data["pass"] = data.pop("passed")
        return data


@dataclass(frozen=True)
class Measured:
    """Wall time and peak RSS of one side run in its own process, and what it returned."""

    seconds: float
    peak_rss_mb: float
    value: Any


_CHILD = textwrap.dedent(
    """
    import importlib, json, resource, sys, time
    sys.path.insert(0, {bench_dir!r})
    module_name, function_name = {target!r}.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    args = json.loads({args!r})
    start = time.perf_counter()
    value = function(*args)
    seconds = time.perf_counter() - start
    try:  # this process's own high-water mark (ru_maxrss inherits the parent's at exec)
        with open("/proc/self/status") as status:
            peak_kb = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
    except OSError:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "value": value}}))
    """
)


def measure_in_subprocess(target: str, *args: Any) -> Measured:
    """Run ``"module:function"`` from ``bench/`` with JSON-able ``args`` in a new process.

    The function's return value must be JSON-able; it comes back as ``Measured.value``.
    Peak RSS is the child's own high-water mark (``VmHWM`` in ``/proc/self/status``;
    ``ru_maxrss`` elsewhere), imports included, so both sides of a comparison pay the same
    interpreter and library baseline. Not ``ru_maxrss`` on Linux: a child started by
    ``subprocess`` carries the parent's resident size at ``exec`` into it, so after an
    in-process benchmark every child would report at least the parent's size.
    """
    code = _CHILD.format(bench_dir=str(BENCH_DIR), target=target, args=json.dumps(args))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{target} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Measured(result["seconds"], result["peak_rss_mb"], result["value"])
