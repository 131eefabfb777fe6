"""Thirty days of cron history: a `generate` that plans one image, with and without it, and
`audit` of it (issue 25).

The history is what a host running imgsave every 15 minutes for 30 days leaves: 2,880 run logs,
a million lines, and the ledger rows of the 500,000 images they bought (saved, as those runs
left them). 1% of the saved URLs are gone from their scenes since (the app's own naive write),
so audit has something to find. One database holds the history; another, alike but with no
history at all, is the baseline, and the two are run in alternation (the machine is shared).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from imgsave._demo.incident import incident_document

from .common import BENCH_DB, HERE, IMGSAVE, SERVER, URL, Result, check, load_app_documents
from .e2e import ProviderProcess

FILES, PROJECTS, SCENES = 2_880, 25_000, 20
REMOVED_EVERY = 100  # one saved URL in a hundred is gone from its scene
TARGET = "hist-target"  # the project whose one short scene each `generate` plans
ROUNDS = 3
RATIO_GOAL, AUDIT_S, AUDIT_MB = 1.5, 5.0, 150.0
QUIET_DB = f"{BENCH_DB}_quiet"
QUIET_URL = make_conninfo(SERVER, dbname=QUIET_DB)
START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Fixture:
    lines: int
    images: int
    lost: int
    megabytes: float


@contextmanager
def quiet_database() -> Iterator[None]:
    """The baseline's database: the same app table, no history."""
    name = sql.Identifier(QUIET_DB)
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        with psycopg.connect(QUIET_URL, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE projects (id text PRIMARY KEY, generated_output jsonb, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            )
        yield
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def install(url: str) -> str:
    """imgsave's tables in `url`'s database, as any first run makes them; its identity."""
    env = {**os.environ, "IMGSAVE_DATABASE_URL": url}
    subprocess.run([IMGSAVE, "sql", "--apply"], env=env, check=True, capture_output=True)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT value FROM imgsave_meta WHERE key = 'database_id'").fetchone()
    if row is None:
        raise RuntimeError("sql --apply made no identity")
    return str(row[0])


def project_name(p: int) -> str:
    return f"hist-{p:06d}"


def image_url(p: int, scene: int) -> str:
    return f"https://images.bench.test/{project_name(p)}/{scene}.png"


def write_history(log_dir: Path, db_id: str) -> tuple[str, str, Fixture]:
    """The log files; the projects and the ledger rows as COPY text; what was written."""
    projects, ledger = io.StringIO(), io.StringIO()
    lines = lost = 0
    per_file = -(-PROJECTS // FILES)
    for f in range(FILES):
        started = START + timedelta(minutes=15 * f)
        run = f"{started:%Y%m%dT%H%M%SZ}-{f:06x}"
        ts = started.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        stamp = started.isoformat()
        head = {"v": 1, "ts": ts, "run": run}
        records: list[dict[str, object]] = []
        for p in range(f * per_file, min(PROJECTS, (f + 1) * per_file)):
            project = project_name(p)
            at = {**head, "db": db_id, "project": project}
            plan = [
                {"scene": s, "scene_id": f"scene-{s}", "held": 0, "planned": 1}
                for s in range(1, SCENES + 1)
            ]
            records.append(
                {
                    **head,
                    "event": "run.started",
                    "db": db_id,
                    "command": "generate",
                    "mode": "append",
                    "project": project,
                    "requested": SCENES,
                    "skipped_scenes": [],
                    "plan": plan,
                }
            )
            document = incident_document(SCENES)
            for s, scene in enumerate(document["scenes"], start=1):
                n = p * SCENES + s
                url = image_url(p, s)
                image = {**at, "scene": s, "scene_id": f"scene-{s}", "ledger": n, "url": url}
                records.append({**image, "event": "image.generated"})
                records.append({**image, "event": "image.saved"})
                removed = n % REMOVED_EVERY == 0
                lost += removed
                scene["imageUrls"] = [] if removed else [url]
                ledger.write(
                    f"{db_id}\t{project}\tid:scene-{s}\t{s}\tscene-{s}\t{run}\tcron-1\topenai"
                    f"\tsync\tsaved\t{url}\t{stamp}\t{stamp}\n"
                )
            projects.write(f"{project}\t{json.dumps(document)}\n")
        records.append({**head, "event": "run.finished", "db": db_id})
        with (log_dir / f"{run}.jsonl").open("w") as out:
            out.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        lines += len(records)
    size = sum(p.stat().st_size for p in log_dir.iterdir() if p.is_file()) / 1e6
    return projects.getvalue(), ledger.getvalue(), Fixture(lines, PROJECTS * SCENES, lost, size)


def load(url: str, projects: str, ledger: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy("COPY projects (id, generated_output) FROM STDIN") as copy:
            copy.write(projects.replace("\\", "\\\\"))
        columns = (
            "db_id, project, scene, scene_index, scene_id, run, host, kind, mode, state, url, "
            "requested_at, updated_at"
        )
        with conn.cursor().copy(f"COPY imgsave_ledger ({columns}) FROM STDIN") as copy:
            copy.write(ledger)
        conn.execute("VACUUM ANALYZE projects")
        conn.execute("VACUUM ANALYZE imgsave_ledger")


def short_target(url: str) -> None:
    """TARGET with every scene filled but one, as before each measured run."""
    document = incident_document(SCENES)
    for scene in document["scenes"][1:]:
        scene["imageUrls"] = [f"https://images.bench.test/{TARGET}/{scene['index']}.png"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projects (id, generated_output) VALUES (%s, %s) ON CONFLICT (id) "
            "DO UPDATE SET generated_output = excluded.generated_output",
            (TARGET, json.dumps(document)),
        )


def measured(
    command: list[str], env: dict[str, str], out: Path, ok: tuple[int, ...]
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `command`, its stdout in `out`."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(HERE / "measure_rss.py"), str(out), *command],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode not in ok:
        raise RuntimeError(f"{command[1]} exited {done.returncode}: {done.stderr[-500:]}")
    return elapsed, int(done.stdout.split()[0]) / 1024


def generate_one(url: str, log_dir: Path, base_url: str) -> tuple[float, float]:
    short_target(url)
    env = {
        **os.environ,
        "IMGSAVE_DATABASE_URL": url,
        "IMGSAVE_BASE_URL": base_url,
        "IMGSAVE_LOG_DIR": str(log_dir),
    }
    out = log_dir.parent / f"{log_dir.name}.generate.json"
    elapsed, peak = measured([IMGSAVE, "generate", TARGET, "--json"], env, out, (0,))
    saved = json.loads(out.read_text())["saved"]
    check(saved == 1, f"generate saved {saved} images, planned one")
    return elapsed, peak


def run() -> list[Result]:
    print(f"  writing {FILES:,} run logs and {PROJECTS * SCENES:,} ledger rows…", flush=True)
    with quiet_database(), tempfile.TemporaryDirectory() as work:
        busy_logs, quiet_logs = Path(work) / "busy", Path(work) / "quiet"
        busy_logs.mkdir()
        quiet_logs.mkdir()
        install(QUIET_URL)
        # The history alone: what earlier benchmarks left in their database (a batch of 50,000
        # lines still running, other apps' documents) is not what this measures.
        load_app_documents("")
        projects, ledger, fixture = write_history(busy_logs, install(URL))
        load(URL, projects, ledger)
        del projects, ledger
        with ProviderProcess(0.0) as api:
            quiet, busy = [], []
            for _ in range(ROUNDS):
                quiet.append(generate_one(QUIET_URL, quiet_logs, api.base_url))
                busy.append(generate_one(URL, busy_logs, api.base_url))
        env = {**os.environ, "IMGSAVE_DATABASE_URL": URL, "IMGSAVE_LOG_DIR": str(busy_logs)}
        audit_s, audit_mb = measured(
            [IMGSAVE, "audit", "--json"], env, Path(work) / "audit.json", (0, 1)
        )
        summary = json.loads((Path(work) / "audit.json").read_text())["summary"]
    # Each round put TARGET back one scene short, so every round's image but the last is lost.
    lost = fixture.lost + ROUNDS - 1
    check(summary["lost"] == lost, f"audit found {summary['lost']} lost of {lost}")
    quiet_s = statistics.median(s for s, _ in quiet)
    busy_s = statistics.median(s for s, _ in busy)
    quiet_mb = statistics.median(mb for _, mb in quiet)
    busy_mb = statistics.median(mb for _, mb in busy)
    ratio = max(busy_s / quiet_s, busy_mb / quiet_mb)
    history = (
        f"{fixture.lines:,} lines in {FILES:,} logs ({fixture.megabytes:.0f} MB), "
        f"{fixture.images:,} ledger rows"
    )
    return [
        Result(
            benchmark=f"`generate` planning one image, with 30 days of history: {history}",
            imgsave=f"{busy_s:.2f} s, peak {busy_mb:.0f} MB RSS",
            baseline=f"no history: {quiet_s:.2f} s, peak {quiet_mb:.0f} MB RSS",
            ratio=RATIO_GOAL / ratio,
            goal=f"≥ 1 (at most {RATIO_GOAL}× the time and the memory)",
            measured={
                "seconds": busy_s,
                "peak_mb": busy_mb,
                "quiet_seconds": quiet_s,
                "quiet_peak_mb": quiet_mb,
            },
        ),
        Result(
            benchmark=f"`audit` of that history ({lost:,} images lost)",
            imgsave=f"{audit_s:.1f} s, peak {audit_mb:.0f} MB RSS",
            baseline=f"budget {AUDIT_S:.0f} s / {AUDIT_MB:.0f} MB",
            ratio=AUDIT_S / audit_s,
            goal=f"≥ 1 (time); ≤ {AUDIT_MB:.0f} MB",
            measured={"seconds": audit_s, "peak_mb": audit_mb, "lines": fixture.lines},
        ),
    ]
