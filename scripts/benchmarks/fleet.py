"""`generate --all` over a whole app: 1,000 projects x 20 scenes at provider latency 200 ms and
concurrency 64, against the ideal (images x latency / concurrency); and peak RSS with 1,000 and
with 10,000 projects, which must stay flat (only the projects in flight are in memory).

The CLI runs as it would from cron, in a process of its own, against the provider in another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from imgsave._demo.incident import incident_document

from .common import HERE, IMGSAVE, URL, Result, check
from .e2e import ProviderProcess

PROJECTS, SCENES, LATENCY, CONCURRENCY = 1000, 20, 0.2, 64
# Memory: many projects, little work each, so that the run is about the number of projects.
SMALL, LARGE, MEMORY_LATENCY = 1000, 10_000, 0.01


def fill(projects: int, scenes: int) -> None:
    """`projects` projects of `scenes` empty scenes, replacing whatever was there."""
    document = json.dumps(incident_document(scenes))
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute("TRUNCATE projects")
        conn.execute("DROP TABLE IF EXISTS imgsave_claims")
        conn.execute(
            "INSERT INTO projects (id, generated_output) "
            "SELECT 'fleet-' || lpad(n::text, 6, '0'), %s::jsonb FROM generate_series(1, %s) n",
            (document, projects),
        )


def generate_all(latency: float) -> tuple[float, int, dict[str, object]]:
    """Wall seconds, peak RSS (KiB) and the JSON of one `generate --all` run."""
    with ProviderProcess(latency) as api, tempfile.TemporaryDirectory() as logs:
        env = {"IMGSAVE_DATABASE_URL": URL, "IMGSAVE_BASE_URL": api.base_url}
        env["IMGSAVE_LOG_DIR"] = logs
        out = Path(logs) / "out.json"
        started = time.perf_counter()
        measured = subprocess.run(
            [
                sys.executable,
                str(HERE / "measure_rss.py"),
                str(out),
                IMGSAVE,
                "generate",
                "--all",
                "-c",
                str(CONCURRENCY),
                "--json",
            ],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("IMGSAVE_")}, **env},
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        return wall, int(measured.stdout.strip()), json.loads(out.read_text())


def run() -> list[Result]:
    fill(PROJECTS, SCENES)
    images = PROJECTS * SCENES
    wall, rss, out = generate_all(LATENCY)
    check(out["saved"] == images, f"saved {out['saved']} of {images}")
    check(len(out["projects"]) == PROJECTS, "every project reported")  # type: ignore[arg-type]
    ideal = images * LATENCY / CONCURRENCY
    transactions = int(out["transactions"])  # type: ignore[call-overload]

    sizes: dict[int, int] = {}
    for projects in (SMALL, LARGE):
        fill(projects, 1)
        _, sizes[projects], small = generate_all(MEMORY_LATENCY)
        check(small["saved"] == projects, f"saved {small['saved']} of {projects}")
    return [
        Result(
            benchmark=f"`generate --all`: {PROJECTS:,} projects × {SCENES} scenes, "
            f"concurrency {CONCURRENCY}, provider latency {LATENCY * 1000:.0f} ms",
            imgsave=f"{wall:.1f} s wall (CLI), {images / wall:.0f} images/s, "
            f"{transactions:,} transactions, peak {rss // 1024} MB RSS",
            baseline=f"ideal {images:,} × {LATENCY * 1000:.0f} ms ÷ {CONCURRENCY} = {ideal:.1f} s",
            ratio=ideal / wall,
            goal="≥ 0.85",
            measured={"wall_s": wall, "ideal_s": ideal, "transactions": transactions},
        ),
        Result(
            benchmark=f"`generate --all` memory: {LARGE:,} projects against {SMALL:,} "
            "(one scene each)",
            imgsave=f"peak {sizes[LARGE] // 1024} MB RSS at {LARGE:,} projects",
            baseline=f"peak {sizes[SMALL] // 1024} MB RSS at {SMALL:,} projects",
            ratio=sizes[LARGE] / sizes[SMALL],
            goal="≤ 1.5",
            measured={"rss_small_kib": sizes[SMALL], "rss_large_kib": sizes[LARGE]},
        ),
    ]
