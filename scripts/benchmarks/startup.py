"""Start-up: `imgsave --help` against a bare interpreter and a 500 ms budget."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from .common import IMGSAVE, Result

RUNS = 7
BUDGET_S = 0.5


def median_seconds(command: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run() -> list[Result]:
    imgsave = median_seconds([IMGSAVE, "--help"])
    bare = median_seconds([sys.executable, "-c", "pass"])
    return [
        Result(
            benchmark="start-up: `imgsave --help`",
            imgsave=f"{imgsave * 1000:.0f} ms (median of {RUNS})",
            baseline=f"bare `python -c pass`: {bare * 1000:.0f} ms",
            ratio=BUDGET_S / imgsave,
            goal=f"≥ 1 (≤ {BUDGET_S * 1000:.0f} ms)",
            measured={"seconds": imgsave, "bare_python_s": bare},
        )
    ]
