"""The machine a benchmark ran on, printed with its figures."""

from __future__ import annotations

import os
import platform


def describe_machine() -> str:
    """Python version, CPU count and CPU model, e.g. 'python 3.11.7, 2 cpus, AMD EPYC'."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    model = names[0] if names else platform.processor() or "unknown cpu"
    return f"python {platform.python_version()}, {os.cpu_count()} cpus, {model}"
