"""imgsave benchmarks, each against a baseline measured in the same run on the same machine.

    python scripts/bench.py [hot-row] [e2e] [audit] [startup]     # default: all four

Needs a PostgreSQL server and pgbench: IMGSAVE_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres). Creates and drops a database `imgsave_bench`.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from imgsave._demo.incident import incident_document
from imgsave._demo.writes import DemoDatabase
from imgsave.config import DatabaseSettings, ProviderSettings, Settings
from imgsave.document import SceneRef
from imgsave.generate import generate
from imgsave.provider import Provider
from imgsave.saver import ProjectSaver

SERVER = os.environ.get(
    "IMGSAVE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BENCH_DB = "imgsave_bench"
URL = make_conninfo(SERVER, dbname=BENCH_DB)
IMGSAVE = str(Path(sys.executable).with_name("imgsave"))


def fresh_database() -> None:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE projects (id text PRIMARY KEY, generated_output jsonb, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )


def put(project: str, document: object) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projects (id, generated_output) VALUES (%s, %s) ON CONFLICT (id) "
            "DO UPDATE SET generated_output = excluded.generated_output",
            (project, json.dumps(document)),
        )


def stored_count(project: str) -> int:
    with psycopg.connect(URL) as conn:
        return (
            conn.execute(
                "SELECT sum(jsonb_array_length(COALESCE(s->'imageUrls', '[]'))) FROM projects, "
                "jsonb_array_elements(generated_output->'scenes') s WHERE id = %s",
                (project,),
            ).fetchone()[0]
            or 0
        )


def settings(**extra: object) -> Settings:
    return Settings(
        database_url=URL,
        provider=ProviderSettings(timeout=10, backoff_initial=0.05, backoff_max=0.5),
        database=DatabaseSettings(lock_timeout=5, statement_timeout=30),
        **extra,
    )


# 1. Hot-row saves -----------------------------------------------------------------------------

PGBENCH_SCRIPT = """\
\\set scene random(0, 19)
BEGIN;
SELECT set_config('lock_timeout', '5000ms', true), set_config('statement_timeout', '30000ms', true);
SELECT generated_output FROM projects WHERE id = 'hot' FOR UPDATE;
UPDATE projects SET generated_output = jsonb_set(generated_output,
  ARRAY['scenes', :scene::text, 'imageUrls'],
  COALESCE(generated_output #> ARRAY['scenes', :scene::text, 'imageUrls'], '[]'::jsonb)
    || to_jsonb('https://img.bench/pgbench/' || :client_id || '-' || random()::text), true),
  updated_at = now() WHERE id = 'hot';
COMMIT;
"""


def pgbench_rate(clients: int, images: int) -> float:
    put("hot", incident_document(20))
    params = conninfo_to_dict(URL)
    env = {
        **os.environ,
        "PGHOST": str(params.get("host", "127.0.0.1")),
        "PGPORT": str(params.get("port", 5432)),
        "PGUSER": str(params.get("user", "postgres")),
        "PGDATABASE": BENCH_DB,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT)
    try:
        done = subprocess.run(
            [
                "pgbench",
                "-n",
                "-c",
                str(clients),
                "-j",
                "2",
                "-t",
                str(images // clients),
                "-f",
                script.name,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(script.name)
    assert stored_count("hot") == images // clients * clients
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    if not match:
        raise RuntimeError(f"cannot read pgbench output:\n{done.stdout}")
    return float(match[1])


async def imgsave_rate(clients: int, images: int) -> tuple[float, int]:
    put("hot", incident_document(20))
    async with (
        await DemoDatabase.from_settings(settings()) as db,
        ProjectSaver(db, "hot", settings().shape) as saver,
    ):
        per_client = images // clients

        async def completion_stream(client: int) -> None:
            for n in range(per_client):
                ref = SceneRef((client * per_client + n) % 20 + 1)
                await saver.save(ref, f"https://img.bench/imgsave/{client}-{n}")

        started = time.perf_counter()
        await asyncio.gather(*(completion_stream(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    assert stored_count("hot") == per_client * clients, "every image must be stored"
    return per_client * clients / elapsed, saver.transactions


def bench_hot_row() -> list[dict]:
    results = []
    for clients in (32, 64):
        images = 6400
        baseline = pgbench_rate(clients, images)
        rate, transactions = asyncio.run(imgsave_rate(clients, images))
        results.append(
            {
                "benchmark": f"hot-row saves, {clients} completions at once",
                "imgsave": f"{rate:,.0f} images/s ({images / transactions:.1f} per transaction)",
                "baseline": f"pgbench 1 image/txn: {baseline:,.0f} images/s",
                "ratio": rate / baseline,
                "goal": ">= 3.0",
            }
        )
    return results


# 2. End-to-end efficiency ---------------------------------------------------------------------

PROVIDER_PROCESS = r"""
# A minimal OpenAI-compatible endpoint on asyncio: a fixed latency and nearly no jitter of its
# own, so the measurement is of imgsave, not of a thread-per-request test server.
import asyncio, itertools, json, sys

LATENCY = float(sys.argv[1])
counter = itertools.count(1)


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(LATENCY)
            url = f"https://images.bench.test/img/{next(counter):06d}.png"
            body = json.dumps({"created": 0, "data": [{"url": url}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


class ProviderProcess:
    """A loopback provider in a process of its own, like a real provider: its HTTP handling
    does not compete with imgsave for this process's interpreter lock."""

    def __init__(self, latency: float):
        self._proc = subprocess.Popen(
            [sys.executable, "-c", PROVIDER_PROCESS, str(latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.base_url = self._proc.stdout.readline().strip()

    def __enter__(self) -> ProviderProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=10)


def bench_e2e() -> list[dict]:
    latency, images, concurrency = 0.25, 320, 32
    put("e2e", incident_document(20))
    put("e2e-cli", incident_document(20))

    async def run() -> float:
        with ProviderProcess(latency) as api:
            conf = settings(base_url=api.base_url)
            provider = Provider(api.base_url, None, None, conf.provider)
            async with await DemoDatabase.from_settings(conf) as db:
                started = time.perf_counter()
                result = await generate(
                    db=db,
                    provider=provider,
                    log_dir=Path(tempfile.mkdtemp()),
                    project="e2e",
                    shape=conf.shape,
                    images_per_scene=images // 20,
                    concurrency=concurrency,
                )
                elapsed = time.perf_counter() - started
            await provider.aclose()
        assert result.saved == images
        return elapsed

    async def bare_client() -> float:
        """The floor set by the HTTP client: the same requests, same concurrency, no imgsave."""
        async with httpx.AsyncClient() as client:
            with ProviderProcess(latency) as api:
                semaphore = asyncio.Semaphore(concurrency)

                async def one() -> None:
                    async with semaphore:
                        answer = await client.post(
                            f"{api.base_url}/images/generations", json={"prompt": "p", "n": 1}
                        )
                        answer.json()

                started = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(images)))
                return time.perf_counter() - started

    elapsed = asyncio.run(run())
    floor = asyncio.run(bare_client())
    ideal = math.ceil(images / concurrency) * latency
    with ProviderProcess(latency) as api:
        env = {
            **os.environ,
            "IMGSAVE_DATABASE_URL": URL,
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_LOG_DIR": tempfile.mkdtemp(),
        }
        started = time.perf_counter()
        subprocess.run(
            [
                IMGSAVE,
                "generate",
                "e2e-cli",
                "-k",
                str(images // 20),
                "-c",
                str(concurrency),
                "--json",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - started
    return [
        {
            "benchmark": f"end-to-end generate, {images} images, concurrency {concurrency}, "
            f"{latency * 1000:.0f} ms provider",
            "imgsave": f"{elapsed:.2f} s (CLI wall {wall:.2f} s: start-up + connect "
            f"{max(0.0, wall - elapsed):.2f} s)",
            "baseline": f"ideal ceil(images/concurrency) x latency = {ideal:.2f} s; "
            f"bare httpx loop, same requests: {floor:.2f} s ({ideal / floor:.2f} of ideal)",
            "ratio": ideal / elapsed,
            "goal": ">= 0.9",
        }
    ]


# 3. Audit at scale ----------------------------------------------------------------------------


def bench_audit(projects: int = 50_000, scenes: int = 20) -> list[dict]:
    """One line per scene on average: 2% of logged URLs lost; 1% of scenes regenerated (an
    older run's URL is stale); 1% of scenes never logged."""
    print(f"  building {projects:,} projects and {projects * scenes:,} log lines…", flush=True)
    log = Path(tempfile.mkdtemp()) / "big.jsonl"
    buffer = io.StringIO()
    lines = lost = stale = 0
    with log.open("w") as out:
        for p in range(projects):
            project = f"proj-{p:06d}"
            doc_scenes = []
            for s in range(1, scenes + 1):
                n = p * scenes + s
                url = f"https://cdn.bench.test/{project}/{s}/a.png"
                held = [] if n % 50 == 0 else [url]
                base = {
                    "v": 1,
                    "event": "image.generated",
                    "project": project,
                    "scene": s,
                    "scene_id": f"scene-{s}",
                }
                records = (
                    []
                    if n % 100 == 2
                    else [{**base, "ts": "2026-11-20T10:00:00.000Z", "run": f"run-{p}", "url": url}]
                )
                if n % 100 == 1:
                    records.append(
                        {
                            **base,
                            "ts": "2026-11-19T10:00:00.000Z",
                            "run": f"old-{p}",
                            "url": url.replace("/a.png", "/old.png"),
                        }
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
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute("TRUNCATE projects")
        with conn.cursor().copy("COPY projects (id, generated_output) FROM STDIN") as copy:
            copy.write(buffer.getvalue().replace("\\", "\\\\"))
        conn.execute("VACUUM ANALYZE projects")
    env = {**os.environ, "IMGSAVE_DATABASE_URL": URL, "IMGSAVE_LOG_DIR": tempfile.mkdtemp()}
    del buffer
    out_path = log.with_suffix(".out")
    started = time.perf_counter()
    peak_mb = measured_run([IMGSAVE, "audit", "--log", str(log), "--json"], env, out_path)
    elapsed = time.perf_counter() - started
    summary = json.loads(out_path.read_text())["summary"]
    expected = (lost, stale)
    assert (summary["lost"], summary["stale"]) == expected, (summary, expected)
    size_mb = log.stat().st_size / 1e6
    shutil.rmtree(log.parent)
    return [
        {
            "benchmark": f"audit {projects:,} projects x {scenes} scenes, {lines:,} log lines "
            f"({size_mb:.0f} MB)",
            "imgsave": f"{elapsed:.1f} s, peak {peak_mb:.0f} MB RSS; "
            f"found {summary['lost']:,} lost, "
            f"{summary['stale']:,} stale",
            "baseline": "goal 20 s / 300 MB",
            "ratio": 20 / elapsed,
            "goal": ">= 1.0 (time); memory <= 300 MB",
            "peak_mb": peak_mb,
        }
    ]


MEASURE = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as out:
    proc = subprocess.Popen(sys.argv[2:], stdout=out)
    _, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured_run(command: list[str], env: dict[str, str], out_path: Path) -> float:
    """Run `command`, stdout to `out_path`; return its peak RSS in MB. A small parent process
    runs it, since a child's high-water mark starts from whatever its parent had mapped."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(out_path), *command],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):  # audit exits 1 when it finds lost images, as here
        raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr[-500:]}")
    return int(done.stdout) / 1024


# 4. Start-up ----------------------------------------------------------------------------------


def bench_startup() -> list[dict]:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run([IMGSAVE, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    baseline = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - started)
    median = statistics.median(times)
    return [
        {
            "benchmark": "start-up: imgsave --help",
            "imgsave": f"{median * 1000:.0f} ms (median of 7)",
            "baseline": f"bare python -c pass: {statistics.median(baseline) * 1000:.0f} ms",
            "ratio": 0.5 / median,
            "goal": ">= 1.0 (<= 500 ms)",
        }
    ]


BENCHES = {
    "hot-row": bench_hot_row,
    "e2e": bench_e2e,
    "audit": bench_audit,
    "startup": bench_startup,
}


def main() -> int:
    chosen = sys.argv[1:] or list(BENCHES)
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        print(f"unknown benchmark {unknown[0]}; choose from {', '.join(BENCHES)}")
        return 2
    fresh_database()
    results = []
    try:
        for name in chosen:
            print(f"running {name}…", flush=True)
            results.extend(BENCHES[name]())
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB))
            )
    print(
        f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{psycopg.connect(SERVER).info.parameter_status('server_version')}"
    )
    print("| benchmark | imgsave | baseline (same run) | ratio | goal |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['benchmark']} | {r['imgsave']} | {r['baseline']} | {r['ratio']:.2f} | "
            f"{r['goal']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
