"""Run every benchmark, print one table and write ``bench/results.json``.

    python bench/run.py                  # the full run: writes bench/results.json
    python bench/run.py --quick          # every size shrunk (under 2 minutes); writes to a temp dir
    python bench/run.py --only bench_e2e # one module (repeat --only for more)
    python bench/run.py --markdown       # print bench/results.json as a Markdown table
    python bench/run.py --write-readmes  # put that table into bench/README.md and README.md

Each module in ``MODULES`` exposes ``run(quick: bool) -> list[BenchRow]``. A bar that is
not met is reported (``pass: false``), not an error: the exit status is 0 unless a
benchmark crashed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import BENCH_DIR
from machine import describe_machine

MODULES = [
    "bench_requests",
    "bench_results",
    "bench_stream",
    "bench_e2e",
    "bench_server_throughput",
    "bench_sensor",
    "bench_sensor_postgres",
]
RESULTS = BENCH_DIR / "results.json"
READMES = [BENCH_DIR / "README.md", BENCH_DIR.parent / "README.md"]
BEGIN, END = "<!-- bench-table: begin -->", "<!-- bench-table: end -->"
COLUMNS = ("benchmark", "ours", "baseline", "ratio", "bar", "pass")


def run_modules(names: list[str], quick: bool, report: dict[str, Any], output: Path) -> None:
    """Run each module into ``report`` (its ``rows`` and ``crashed``), written after each."""
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module_rows = importlib.import_module(name).run(quick)
        except Exception:
            traceback.print_exc()
            report["crashed"].append(name)
        else:
            seconds = time.perf_counter() - start
            print(f"  {name} done in {seconds:.0f} s", file=sys.stderr, flush=True)
            report["rows"].extend({"module": name, **row.to_json()} for row in module_rows)
        output.write_text(json.dumps(report, indent=2) + "\n")


def cells(row: dict[str, Any]) -> list[str]:
    """A row's printed cells, in ``COLUMNS`` order."""
    ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
    verdict = "pass" if row["pass"] else "FAIL"
    return [row["benchmark"], row["ours"], row["baseline"], ratio, row["bar"], verdict]


def text_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned plain text, for the terminal."""
    table = [list(COLUMNS), *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table
    )


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with its date, machine and command.

    Example:
        >>> row = {"benchmark": "b", "ours": "1 s", "baseline": "3 s", "ratio": 3.0,
        ...        "bar": "speed-up >= 3", "pass": True}
        >>> print(markdown({"date": "2026-11-28 05:00 UTC", "machine": "m",
        ...                 "command": "python bench/run.py", "quick": False, "rows": [row]}))
        Full run, 2026-11-28 05:00 UTC, `python bench/run.py`, on m:
        <BLANKLINE>
        | benchmark | ours | baseline | ratio | bar | pass |
        | --- | ---: | ---: | ---: | --- | --- |
        | b | 1 s | 3 s | 3.00 | speed-up >= 3 | pass |
    """
    kind = "Quick run" if report["quick"] else "Full run"
    lines = [
        f"{kind}, {report['date']}, `{report['command']}`, on {report['machine']}:",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in report["rows"]]
    if report.get("crashed"):
        lines += ["", f"Crashed (no rows): {', '.join(report['crashed'])}."]
    return "\n".join(lines)


def with_table(text: str, table: str, path: Path) -> str:
    """``text`` with the part between the bench-table markers replaced by ``table``."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), flags=re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to put the table between")
    return pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text, count=1)


def main(argv: list[str]) -> int:
    """Parse ``argv``, run or render, and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shrink every size")
    parser.add_argument("--only", action="append", choices=MODULES, help="run only this module")
    parser.add_argument(
        "--output", type=Path, help="results.json to write (to read, with --markdown)"
    )
    parser.add_argument("--markdown", action="store_true", help="print results.json as Markdown")
    parser.add_argument("--write-readmes", action="store_true", help="put that table in READMEs")
    args = parser.parse_args(argv)

    if args.markdown or args.write_readmes:
        table = markdown(json.loads((args.output or RESULTS).read_text()))
        if args.markdown:
            print(table)
        for path in READMES if args.write_readmes else []:
            path.write_text(with_table(path.read_text(), table, path))
        return 0

    output = args.output or (
        Path(tempfile.gettempdir(), "bench-quick-results.json") if args.quick else RESULTS
    )
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{describe_machine()}, load average {os.getloadavg()[0]:.1f} at the start",
        "command": " ".join(["python bench/run.py", *argv]),
        "quick": args.quick,
        "rows": [],
        "crashed": [],
    }
    run_modules(args.only or MODULES, args.quick, report, output)
    rows, crashed = report["rows"], report["crashed"]
    print(f"{report['date']}  {report['machine']}")
    print(text_table(rows))
    print(f"results: {output}")
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
