"""`imgsave audit` over a million lines of imgsave's own log: time and peak memory against a
fixed budget, and exactness (the URLs named lost are the ones removed, the stale ones the
ones regenerated).

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

from .common import HERE, IMGSAVE, URL, Result, check, load_app_documents

PROJECTS, SCENES = 50_000, 20
BUDGET_S, BUDGET_MB = 20.0, 300.0


def write_fixture(log: Path) -> tuple[str, int, set[str], set[str]]:
    """Write the log; return the projects as COPY text, the lines, and the URLs lost (logged,
    removed from their scene) and stale (regenerated since)."""
    buffer = io.StringIO()
    lines = 0
    lost: set[str] = set()
    stale: set[str] = set()
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
                    stale.add(old)
                if records and not held:
                    lost.add(url)
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
    return measured_tree_run(command, env, out_path, tree=False)[0]


def measured_tree_run(
    command: list[str], env: dict[str, str], out_path: Path, *, tree: bool = True
) -> tuple[float, float]:
    """Run `command` with stdout to `out_path`; the peak RSS in MB of its largest process,
    and of it and its worker processes added up (0 when not `tree`)."""
    tree_flag = ["--tree"] if tree else []
    done = subprocess.run(
        [sys.executable, str(HERE / "measure_rss.py"), *tree_flag, str(out_path), *command],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):  # audit exits 1 when it finds lost images, as here
        raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr[-500:]}")
    numbers = [int(n) / 1024 for n in done.stdout.split()]
    return numbers[0], numbers[1] if tree else 0.0


def run() -> list[Result]:
    print(f"  building {PROJECTS:,} projects and their log…", flush=True)
    with tempfile.TemporaryDirectory() as work:
        log = Path(work) / "big.jsonl"
        rows, lines, lost, stale = write_fixture(log)
        load_app_documents(rows)
        del rows
        env = {**os.environ, "IMGSAVE_DATABASE_URL": URL, "IMGSAVE_LOG_DIR": work}
        out_path = Path(work) / "audit.json"
        started = time.perf_counter()
        command = [IMGSAVE, "audit", "--log", str(log), "--json"]
        peak_mb, tree_mb = measured_tree_run(command, env, out_path)
        elapsed = time.perf_counter() - started
        report = json.loads(out_path.read_text())
        size_mb = log.stat().st_size / 1e6
    named = {f["url"] for f in report["lost"]}, {f["url"] for f in report["stale"]}
    check(
        named == (lost, stale),
        f"audit named {len(named[0])} lost and {len(named[1])} stale URLs; the fixture "
        f"removed {len(lost)} and regenerated {len(stale)}",
    )
    return [
        Result(
            benchmark=f"`audit` of imgsave's own log, {PROJECTS:,} projects × {SCENES} scenes, "
            f"{lines:,} lines ({size_mb:.0f} MB)",
            imgsave=f"{elapsed:.1f} s, peak {peak_mb:.0f} MB RSS ({tree_mb:.0f} MB with its "
            f"workers, PSS); named {len(lost):,} lost = removed, "
            f"{len(stale):,} stale = regenerated",
            baseline=f"budget {BUDGET_S:.0f} s / {BUDGET_MB:.0f} MB",
            ratio=BUDGET_S / elapsed,
            goal=f"≥ 1 (time); ≤ {BUDGET_MB:.0f} MB",
            measured={
                "seconds": elapsed,
                "peak_mb": peak_mb,
                "tree_peak_mb": tree_mb,
                "lines": lines,
                "lost": len(lost),
                "stale": len(stale),
            },
        )
    ]
