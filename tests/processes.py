"""Run several test scripts as processes at once (racing submitters, paced uploaders).

Their output goes to files, not pipes: a pipe holds 64 KiB, and a process whose pipe
is full and not yet read blocks at its next log line, stalling every process that
waits for it at a barrier.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finished:
    """One process's exit code and what it wrote."""

    returncode: int
    stdout: str
    stderr: str

    def describe(self, name: str) -> str:
        return f"{name}: exit {self.returncode}\n{self.stdout}\n{self.stderr[-4000:]}"


def run_together(
    commands: dict[str, list[str]], env: dict[str, str], log_dir: Path, timeout: float
) -> dict[str, Finished]:
    """Start every command, wait for all (each within `timeout` s) and return by name."""
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: (log_dir / f"{name}.out", log_dir / f"{name}.err") for name in commands}
    processes = {}
    for name, command in commands.items():
        out, err = paths[name]
        with out.open("w") as stdout, err.open("w") as stderr:
            processes[name] = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
    try:
        codes = {name: process.wait(timeout) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    return {
        name: Finished(codes[name], out.read_text(), err.read_text())
        for name, (out, err) in paths.items()
    }
