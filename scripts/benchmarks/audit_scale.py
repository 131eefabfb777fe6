"""`imgsave audit` over a million log lines: time and peak memory against a fixed budget.

One line per scene on average: 2% of logged URLs lost; 1% of scenes regenerated (an older
run's URL is stale); 1% of scenes never logged.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from .common import HERE, IMGSAVE, URL, Result, check

PROJECTS, SCENES = 50_000, 20
BUDGET_S, BUDGET_MB = 20.0, 300.0


def write_fixture(log: Path) -> tuple[str, int, int, int]:
    """Write the log; return the projects as COPY text, and the lines, lost and stale counts."""
    buffer = io.StringIO()
    lines = lost = stale = 0
    with log.open("w") as out:
        for p in range(PROJECTS):
            project = f"proj-{p:06d}"
            doc_scenes = []
            for s in range(1, SCENES + 1):
                n = p * SCENES + s
                url = f"https://cdn.bench.test/{project}/{s}/a.png"
                held = [] if n % 50 == 0 else [url]
                base = {
                    "v": 1,
                    "event": "image.generated",
                    "project": project,
                    "scene": s,
                    "scene_id": f"scene-{s}",
                }
                now = {**base, "ts": "2026-11-20T10:00:00.000Z", "run": f"run-{p}", "url": url}
                records = [] if n % 100 == 2 else [now]
                if n % 100 == 1:
                    # A deliberate regeneration (repair --regenerate logs `replaces`): the older
                    # run's URL is stale, not lost. imgsave's own reruns only ever add.
                    old = url.replace("/a.png", "/old.png")
                    now["replaces"] = [old]
                    records.append(
                        {**base, "ts": "2026-11-19T10:00:00.000Z", "run": f"old-{p}", "url": old}
                    )
                    stale += 1
                lost += bool(records) and not held
                for record in records:
                    out.write(json.dumps(record) + "\n")
                lines += len(records)
                doc_scenes.append(
                    {
                        "id": f"scene-{s}",
                        "index": s,
                        "imagePrompt": f"prompt {s} of {project}",
                        "imageUrls": held,
                    }
                )
            buffer.write(f"{project}\t{json.dumps({'scenes': doc_scenes})}\n")
    return buffer.getvalue(), lines, lost, stale


def measured_run(command: list[str], env: dict[str, str], out_path: Path) -> float:
    """Run `command` with stdout to `out_path`; its peak RSS in MB."""
    done = subprocess.run(
        [sys.executable, str(HERE / "measure_rss.py"), str(out_path), *command],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):  # audit exits 1 when it finds lost images, as here
        raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr[-500:]}")
    return int(done.stdout) / 1024


def run() -> list[Result]:
    print(f"  building {PROJECTS:,} projects and their log…", flush=True)
    with tempfile.TemporaryDirectory() as work:
        log = Path(work) / "big.jsonl"
        rows, lines, lost, stale = write_fixture(log)
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute("TRUNCATE projects")
            with conn.cursor().copy("COPY projects (id, generated_output) FROM STDIN") as copy:
                copy.write(rows.replace("\\", "\\\\"))
            conn.execute("VACUUM ANALYZE projects")
        del rows
        env = {**os.environ, "IMGSAVE_DATABASE_URL": URL, "IMGSAVE_LOG_DIR": work}
        out_path = Path(work) / "audit.json"
        started = time.perf_counter()
        peak_mb = measured_run([IMGSAVE, "audit", "--log", str(log), "--json"], env, out_path)
        elapsed = time.perf_counter() - started
        summary = json.loads(out_path.read_text())["summary"]
        size_mb = log.stat().st_size / 1e6
    found = (summary["lost"], summary["stale"])
    check(found == (lost, stale), f"audit found {found}, the fixture holds {(lost, stale)}")
    return [
        Result(
            benchmark=f"`audit`, {PROJECTS:,} projects × {SCENES} scenes, {lines:,} log lines "
            f"({size_mb:.0f} MB)",
            imgsave=f"{elapsed:.1f} s, peak {peak_mb:.0f} MB RSS",
            baseline=f"budget {BUDGET_S:.0f} s / {BUDGET_MB:.0f} MB",
            ratio=BUDGET_S / elapsed,
            goal=f"≥ 1 (time); ≤ {BUDGET_MB:.0f} MB",
            measured={"seconds": elapsed, "peak_mb": peak_mb, "lines": lines},
        )
    ]
