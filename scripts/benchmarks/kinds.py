"""Every image API adapter against its own emulation at the same latency: generate's rate
through each, against the OpenAI adapter's in the same run; and what polling a job costs."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from imgsave._demo.incident import incident_document
from imgsave.adapters.imageapi.kinds import KINDS as REGISTRY

from .common import IMGSAVE, URL, PipedServer, Result, check, put

LATENCY, IMAGES, CONCURRENCY, POLL = 0.25, 320, 32, 0.1
# Every kind in the registry, the OpenAI adapter (the baseline) first.
KINDS = ("openai", *sorted(set(REGISTRY) - {"openai"}))
MODEL = {name: kind.example_model for name, kind in REGISTRY.items()}


def _run(kind: str, work: Path, *, job_seconds: float = 0.0) -> float:
    """Seconds `imgsave generate` takes for IMAGES images through `kind`'s adapter: the
    request answered after LATENCY, or (`job_seconds`) answered at once with a job done
    that long after it was submitted."""
    project = f"kind-{kind}-{job_seconds}"
    latency = 0.0 if job_seconds else LATENCY
    put(project, incident_document(IMAGES))
    (work / "imgsave.toml").write_text(f"[provider]\npoll_interval = {POLL}\n")
    with PipedServer("kind_server.py", kind, str(latency), "0", str(job_seconds)) as api:
        env = {
            **os.environ,
            "IMGSAVE_DATABASE_URL": URL,
            "IMGSAVE_PROVIDER": kind,
            "IMGSAVE_BASE_URL": api.address,
            "IMGSAVE_API_KEY": "bench",
            "IMGSAVE_MODEL": MODEL[kind],
            "IMGSAVE_LOG_DIR": str(work / "logs"),
            "IMGSAVE_STORE": f"file://{work / 'store'}",
            "IMGSAVE_PUBLIC_URL": "https://images.example.com",
            "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1",
        }
        started = time.perf_counter()
        done = subprocess.run(
            [IMGSAVE, "generate", project, "-c", str(CONCURRENCY), "--json", "--allow-http"],
            env=env, cwd=work, capture_output=True, text=True, check=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
    check(done.returncode == 0, f"{kind}: {done.stderr[-300:]}")
    saved = json.loads(done.stdout)["saved"]
    check(saved == IMAGES, f"{kind}: saved {saved} of {IMAGES}")
    return elapsed


def run() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seconds = {kind: _run(kind, work) for kind in KINDS}
        # A job that takes LATENCY to be done, found by polling: at most one poll interval
        # later than an answer that took LATENCY.
        polled = _run("bfl", work, job_seconds=LATENCY)
    base = IMAGES / seconds["openai"]
    for kind in KINDS[1:]:
        rate = IMAGES / seconds[kind]
        results.append(
            Result(
                f"generate through the {kind} adapter, {IMAGES} images, concurrency "
                f"{CONCURRENCY}, latency {LATENCY * 1000:.0f} ms",
                f"{rate:.0f} images/s",
                f"the openai adapter, same run: {base:.0f} images/s",
                rate / base,
                "≥ 0.9",
                {"seconds": seconds[kind], "openai_seconds": seconds["openai"]},
            )
        )
    waves = IMAGES / CONCURRENCY
    added = (polled - seconds["openai"]) / waves
    results.append(
        Result(
            f"a job done {LATENCY * 1000:.0f} ms after it was submitted, found by polling (bfl)",
            f"{added * 1000:.0f} ms per job later than an answer after {LATENCY * 1000:.0f} ms",
            f"poll_interval {POLL * 1000:.0f} ms",
            added / POLL,
            "≤ 1.0 (≤ one poll interval)",
            {"seconds": polled, "openai_seconds": seconds["openai"]},
        )
    )
    return results
