"""Half price at volume: collecting one batch of 1,000 images of 512 KB (700 MB of JSONL) into
an S3 store, from OpenAI's Batch API and from the Gemini API's, each against the synchronous
store path measured in the same run (the same images, the same store, no provider latency);
and submitting 50,000 requests (plan, claim, JSONL, upload, create) in imgsave's own CPU time.

The Batch API is batch_server.py (OpenAI's or, with `gemini`, the Gemini API's) and the S3 API
is s3_sink.py, each in a process of its own; peak memory is the collecting imgsave process's
own (measure_rss.py). The machine is shared and noisy, so the three runs (the synchronous one
and the two collections) are repeated in ROUNDS rounds, each round in a new order; a ratio is
the median of the rounds' own ratios (each collection against its round's synchronous run),
and the peak is the highest seen. CPU seconds per image are reported beside them: they move
less than wall time when other work shares the cores.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from imgsave._demo.incident import incident_document

from .audit_scale import measured_run
from .common import IMGSAVE, URL, PipedServer, Result, check, put
from .e2e import ProviderProcess
from .store_e2e import SinkProcess

IMAGES, IMAGE_BYTES = 1_000, 512_000
SUBMITTED, PER_PROJECT = 50_000, 1_000
ROUNDS = int(os.environ.get("IMGSAVE_BENCH_ROUNDS", "3"))
# What each kind's batch run is given beside the shared environment.
KINDS: dict[str, dict[str, str]] = {
    "openai": {},
    "gemini": {
        "IMGSAVE_PROVIDER": "gemini",
        "IMGSAVE_API_KEY": "bench",
        "IMGSAVE_MODEL": "gemini-nano-banana-2.1",
    },
}
NAMES = {"openai": "OpenAI", "gemini": "Gemini"}
SYNC = "sync"


def _env(base_url: str, sink: SinkProcess, prefix: str, work: str) -> dict[str, str]:
    store = sink.store(prefix)
    return {
        **os.environ,
        "IMGSAVE_DATABASE_URL": URL,
        "IMGSAVE_LOG_DIR": work,
        "IMGSAVE_BASE_URL": base_url,
        "IMGSAVE_STORE": store.url or "",
        "IMGSAVE_PUBLIC_URL": store.public_url or "",
        "AWS_ENDPOINT_URL": store.endpoint or "",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
    }


@dataclass(frozen=True)
class Measured:
    """One imgsave process: wall seconds, CPU seconds (user + system), peak RSS in MB."""

    seconds: float
    cpu: float
    peak: float

    @property
    def rate(self) -> float:
        return IMAGES / self.seconds


def _timed(
    command: list[str], env: dict[str, str], out: Path
) -> tuple[Measured, dict[str, object]]:
    """One imgsave process measured, and its JSON."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    peak = measured_run(command, env, out)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(seconds, cpu, peak), json.loads(out.read_text())


def _cpu_seconds(command: list[str], env: dict[str, str]) -> tuple[float, dict[str, object]]:
    """(user + system CPU seconds, JSON) of one imgsave process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    check(done.returncode == 0, f"{command[1:3]} failed: {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, json.loads(done.stdout)


def _collected(kind: str, round_: int, sink: SinkProcess, work: str) -> Measured:
    """Collecting one finished batch of IMAGES from `kind`'s Batch API, submitted by a run
    before it (not measured)."""
    project = f"collected-{kind}-{round_}"
    put(project, incident_document(IMAGES))
    served = ["gemini"] if kind == "gemini" else []
    with PipedServer("batch_server.py", str(IMAGE_BYTES), *served) as api:
        env = {**_env(api.address, sink, f"batch-{kind}-{round_}", work), **KINDS[kind]}
        submit = [IMGSAVE, "generate", project, "--batch", "--batch-size", str(IMAGES),
                  "--json", "--allow-http"]  # fmt: skip
        subprocess.run(submit, env=env, capture_output=True, check=True)
        measured, out = _timed(
            [IMGSAVE, "generate", project, "--batch", "--json", "--allow-http"],
            env,
            Path(work) / f"collect-{kind}.json",
        )
    check(out["saved"] == IMAGES, f"the {kind} collection saved {out['saved']} of {IMAGES}")
    return measured


def _synchronous(round_: int, sink: SinkProcess, work: str) -> Measured:
    """The same images generated synchronously into the same store: the baseline."""
    project = f"synchronous-{round_}"
    put(project, incident_document(IMAGES))
    with ProviderProcess(0.0, "b64", IMAGE_BYTES) as provider:
        measured, out = _timed(
            [IMGSAVE, "generate", project, "-c", "64", "--json", "--allow-http"],
            _env(provider.base_url, sink, f"sync-{round_}", work),
            Path(work) / "sync.json",
        )
    check(out["saved"] == IMAGES, f"the synchronous run saved {out['saved']} of {IMAGES}")
    return measured


def _rounds(sink: SinkProcess, work: str) -> dict[str, list[Measured]]:
    """Every run, ROUNDS times, each round in a new order (so that no run is always first)."""
    order = [SYNC, *KINDS]
    runs: dict[str, list[Measured]] = {name: [] for name in order}
    for n in range(ROUNDS):
        print(f"  round {n + 1} of {ROUNDS}…", flush=True)
        for name in order[n % len(order) :] + order[: n % len(order)]:
            measured = (
                _synchronous(n, sink, work) if name == SYNC else _collected(name, n, sink, work)
            )
            runs[name].append(measured)
            print(f"    {name}: {measured.rate:.0f} images/s, {measured.cpu:.1f} s of CPU, "
                  f"peak {measured.peak:.0f} MB", flush=True)  # fmt: skip
    return runs


def _result(kind: str, runs: dict[str, list[Measured]]) -> Result:
    mine, sync = runs[kind], runs[SYNC]
    ratios = [m.rate / s.rate for m, s in zip(mine, sync, strict=True)]
    rate = statistics.median(m.rate for m in mine)
    sync_rate = statistics.median(s.rate for s in sync)
    peak, sync_peak = max(m.peak for m in mine), max(s.peak for s in sync)
    cpu = statistics.median(m.cpu for m in mine) / IMAGES * 1000
    sync_cpu = statistics.median(s.cpu for s in sync) / IMAGES * 1000
    return Result(
        f"batch collect ({NAMES[kind]}): 1,000 × 512 KB into S3",
        f"{rate:.0f} images/s, {cpu:.1f} ms CPU/image, peak {peak:.0f} MB",
        f"synchronous: {sync_rate:.0f} images/s, {sync_cpu:.1f} ms CPU/image, "
        f"peak {sync_peak:.0f} MB",
        statistics.median(ratios),
        "≥ 0.8, peak ≤ 300 MB",
        {
            "rounds": len(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "images_per_s": rate,
            "sync_images_per_s": sync_rate,
            "cpu_ms_per_image": cpu,
            "sync_cpu_ms_per_image": sync_cpu,
            "peak_mb": peak,
            "sync_peak_mb": sync_peak,
        },
    )


def run() -> list[Result]:
    with SinkProcess() as sink, tempfile.TemporaryDirectory() as work:
        runs = _rounds(sink, work)
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute("DELETE FROM projects")
        for n in range(SUBMITTED // PER_PROJECT):
            put(f"volume-{n:03d}", incident_document(PER_PROJECT))
        with PipedServer("batch_server.py", "1000", "pending") as api:
            cpu, submitted = _cpu_seconds(
                [IMGSAVE, "generate", "--all", "--batch", "--batch-size", "50000", "--json",
                 "--allow-http"],
                _env(api.address, sink, "volume", work),
            )  # fmt: skip
        check(submitted["in_batches"] == SUBMITTED, f"submitted {submitted['in_batches']}")

    return [
        *(_result(kind, runs) for kind in KINDS),
        Result(
            "batch submit: 50,000 requests",
            f"{cpu:.1f} s of CPU",
            "10 s",
            cpu / 10,
            "≤ 1.0",
            {"cpu_seconds": cpu},
        ),
    ]
