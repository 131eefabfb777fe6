"""Half price at volume: collecting one batch of 1,000 images of 512 KB (700 MB of JSONL) into
an S3 store, against the synchronous store path measured in the same run (the same images,
the same store, no provider latency); and submitting 50,000 requests (plan, claim, JSONL,
upload, create) in imgsave's own CPU time.

The Batch API is batch_server.py and the S3 API is s3_sink.py, each in a process of its own;
peak memory is the collecting imgsave process's own (measure_rss.py).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from imgsave._demo.incident import incident_document

from .audit_scale import measured_run
from .common import IMGSAVE, URL, PipedServer, Result, check, put
from .e2e import ProviderProcess
from .store_e2e import SinkProcess

IMAGES, IMAGE_BYTES = 1_000, 512_000
SUBMITTED, PER_PROJECT = 50_000, 1_000


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


def _timed(
    command: list[str], env: dict[str, str], out: Path
) -> tuple[float, float, dict[str, object]]:
    """(seconds, peak MB, JSON) of one imgsave process."""
    started = time.perf_counter()
    peak = measured_run(command, env, out)
    return time.perf_counter() - started, peak, json.loads(out.read_text())


def _cpu_seconds(command: list[str], env: dict[str, str]) -> tuple[float, dict[str, object]]:
    """(user + system CPU seconds, JSON) of one imgsave process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    check(done.returncode == 0, f"{command[1:3]} failed: {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, json.loads(done.stdout)


def run() -> list[Result]:
    put("collected", incident_document(IMAGES))
    put("synchronous", incident_document(IMAGES))
    with SinkProcess() as sink, tempfile.TemporaryDirectory() as work:
        with PipedServer("batch_server.py", str(IMAGE_BYTES)) as api:
            env = _env(api.address, sink, "batch", work)
            submit = [IMGSAVE, "generate", "collected", "--batch", "--batch-size", "1000",
                      "--json", "--allow-http"]  # fmt: skip
            subprocess.run(submit, env=env, capture_output=True, check=True)
            seconds, peak, out = _timed(
                [IMGSAVE, "generate", "collected", "--batch", "--json", "--allow-http"],
                env,
                Path(work) / "collect.json",
            )
        check(out["saved"] == IMAGES, f"the batch collection saved {out['saved']} of {IMAGES}")
        with ProviderProcess(0.0, "b64", IMAGE_BYTES) as provider:
            sync_seconds, sync_peak, sync = _timed(
                [IMGSAVE, "generate", "synchronous", "-c", "64", "--json", "--allow-http"],
                _env(provider.base_url, sink, "sync", work),
                Path(work) / "sync.json",
            )
        check(sync["saved"] == IMAGES, f"the synchronous run saved {sync['saved']} of {IMAGES}")

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

    rate, sync_rate = IMAGES / seconds, IMAGES / sync_seconds
    return [
        Result(
            "batch collect: 1,000 × 512 KB into S3",
            f"{rate:.0f} images/s, peak {peak:.0f} MB",
            f"synchronous: {sync_rate:.0f} images/s, peak {sync_peak:.0f} MB",
            rate / sync_rate,
            "≥ 0.8, peak ≤ 300 MB",
            {"seconds": seconds, "peak_mb": peak, "sync_seconds": sync_seconds},
        ),
        Result(
            "batch submit: 50,000 requests",
            f"{cpu:.1f} s of CPU",
            "10 s",
            cpu / 10,
            "≤ 1.0",
            {"cpu_seconds": cpu},
        ),
    ]
