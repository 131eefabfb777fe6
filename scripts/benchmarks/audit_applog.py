"""`imgsave audit --log --pattern` over an app's own console logs: a month of them, rotated.

50,000 projects, 10 scenes each, 2 images each: 1,000,000 "Saved image to database" lines, the
incident's kind of evidence, in 8 rotated files (app.log, app.log.1 … app.log.7; the four
oldest gzipped, as logrotate leaves them), over 30 days. 1% of the URLs, chosen at random, are
removed from the documents: audit must name exactly those (named = removed) and nothing else.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imgsave._demo.incident import APP_LOG_PATTERN

from .audit_scale import measured_tree_run
from .common import IMGSAVE, URL, Result, check, load_app_documents

PROJECTS, SCENES, IMAGES = 50_000, 10, 2
FILES, GZIPPED = 8, 4
REMOVED = 0.01
BUDGET_S, BUDGET_MB = 5.0, 150.0
START = datetime(2026, 10, 27, tzinfo=UTC)
SPAN = timedelta(days=30)
# Projects the app works on at once: their lines interleave, as a busy app's do.
IN_FLIGHT = 4


@dataclass
class Fixture:
    files: list[Path]
    rows: str  # the documents as COPY text
    lines: int
    removed: set[str]


def project_id(p: int) -> str:
    return f"{p:08x}-2b3a-4c5d-8e9f-{p * 7919 % 16**12:012x}"


def write_fixture(folder: Path, projects: int = PROJECTS) -> Fixture:
    """The rotated logs under `folder`, and the documents with 1% of their URLs removed."""
    rng = random.Random(29)
    rows = io.StringIO()
    removed: set[str] = set()
    total = projects * SCENES * IMAGES
    step = SPAN / total
    lines: list[str] = []
    for first in range(0, projects, IN_FLIGHT):
        group = range(first, min(first + IN_FLIGHT, projects))
        streams = []
        for p in group:
            project = project_id(p)
            doc_scenes, stream = [], []
            for s in range(1, SCENES + 1):
                urls = [
                    f"https://cdn.app.test/{project}/scene-{s}/{n}-{rng.getrandbits(32):08x}.png"
                    for n in range(IMAGES)
                ]
                held = []
                for url in urls:
                    if rng.random() < REMOVED:
                        removed.add(url)
                    else:
                        held.append(url)
                    stream.append((project, s, url))
                doc_scenes.append(
                    {
                        "id": f"scene-{s}",
                        "index": s,
                        "imagePrompt": f"prompt {s}",
                        "imageUrls": held,
                    }
                )
            rows.write(f"{project}\t{json.dumps({'scenes': doc_scenes})}\n")
            streams.append(stream)
        for entries in zip(*streams, strict=True):
            for project, s, url in entries:
                when = START + step * len(lines)
                stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                lines.append(f"{stamp} [{project}] [Scene {s}] Saved image to database: {url}\n")
    per_file = -(-len(lines) // FILES)
    files = []
    for n in range(FILES):
        # app.log is the newest; app.log.N is N rotations old.
        chunk = lines[len(lines) - (n + 1) * per_file : len(lines) - n * per_file]
        name = "app.log" if n == 0 else f"app.log.{n}"
        if n >= FILES - GZIPPED:
            path = folder / f"{name}.gz"
            with gzip.open(path, "wt", compresslevel=6) as out:
                out.writelines(chunk)
        else:
            path = folder / name
            with path.open("w") as out:
                out.writelines(chunk)
        files.append(path)
    return Fixture(files, rows.getvalue(), len(lines), removed)


def read_floor(files: list[Path]) -> float:
    """Seconds to read (and decompress) the same files with nothing else done."""
    started = time.perf_counter()
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            while handle.read(1 << 20):
                pass
    return time.perf_counter() - started


def run() -> list[Result]:
    print(f"  building {PROJECTS:,} projects and a month of their app's logs…", flush=True)
    with tempfile.TemporaryDirectory() as work:
        logs = Path(work) / "app"
        logs.mkdir()
        fixture = write_fixture(logs)
        load_app_documents(fixture.rows)
        fixture.rows = ""
        floor = min(read_floor(fixture.files) for _ in range(3))
        env = {
            **os.environ,
            "IMGSAVE_DATABASE_URL": URL,
            "IMGSAVE_LOG_DIR": str(Path(work) / "own"),
        }
        out_path = Path(work) / "audit.json"
        command = [IMGSAVE, "audit", "--log", str(logs), "--pattern", APP_LOG_PATTERN, "--json"]
        started = time.perf_counter()
        peak_mb, tree_mb = measured_tree_run(command, env, out_path)
        elapsed = time.perf_counter() - started
        report = json.loads(out_path.read_text())
        size_mb = sum(p.stat().st_size for p in fixture.files) / 1e6
    named = {finding["url"] for finding in report["lost"]}
    check(
        named == fixture.removed,
        f"audit named {len(named)} URLs, {len(named & fixture.removed)} of them among the "
        f"{len(fixture.removed)} removed",
    )
    summary = report["summary"]
    check(
        (summary["stale"], summary["orphaned"], summary["lines_skipped"]) == (0, 0, 0),
        f"audit found more than the removed URLs: {summary}",
    )
    return [
        Result(
            benchmark=f"`audit --log --pattern`, an app's logs: {fixture.lines:,} lines in "
            f"{FILES} rotated files, {GZIPPED} gzipped ({size_mb:.0f} MB on disk), "
            f"{PROJECTS:,} projects × {SCENES} scenes × {IMAGES} images, 1% removed",
            imgsave=f"{elapsed:.1f} s, peak {peak_mb:.0f} MB RSS ({tree_mb:.0f} MB with its "
            f"workers, PSS); named {len(named):,} = removed {len(fixture.removed):,}",
            baseline=f"budget {BUDGET_S:.0f} s / {BUDGET_MB:.0f} MB; reading and "
            f"decompressing the files alone: {floor:.2f} s",
            ratio=BUDGET_S / elapsed,
            goal=f"≥ 1 (time); ≤ {BUDGET_MB:.0f} MB",
            measured={
                "seconds": elapsed,
                "peak_mb": peak_mb,
                "tree_peak_mb": tree_mb,
                "lines": fixture.lines,
                "floor_seconds": floor,
                "named": len(named),
                "removed": len(fixture.removed),
            },
        )
    ]
