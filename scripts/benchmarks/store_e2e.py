"""Durable images at speed: `generate` with base64 answers of 1.5 MB put in an S3 store, against
the same run with URL answers and no store, at the same provider latency and concurrency.

The S3 API is s3_sink.py, in a process of its own: it takes each put whole and forgets it, as
a remote store costs this machine nothing (tests/test_store.py proves the bytes against moto).
The provider's images are encoded before it starts, for the same reason. Peak memory is the
imgsave process's own (measure_rss.py). Event-loop stalls are measured in-process: a task that
asks to wake every 10 ms records how late it wakes; base64 decoding, JSON parsing and hashing
of large answers run in worker threads so that it stays small.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from imgsave._demo.incident import incident_document
from imgsave.commands import generate as gen
from imgsave.commands.generate import Wanted
from imgsave.core.settings import StoreSettings
from imgsave.operations.planning import Ask

from .audit_scale import measured_run
from .common import IMGSAVE, URL, PipedServer, Result, check, put, settings, stored_count
from .e2e import ProviderProcess

IMAGES, CONCURRENCY, LATENCY, IMAGE_BYTES = 500, 64, 1.0, 1_500_000
BUCKET = "bench-images"


class SinkProcess(PipedServer):
    """s3_sink.py in a process of its own: an S3 API that costs next to nothing."""

    def __init__(self) -> None:
        super().__init__("s3_sink.py")
        self.endpoint = self.address

    def store(self, prefix: str) -> StoreSettings:
        return StoreSettings(
            url=f"s3://{BUCKET}/{prefix}",
            public_url=f"https://cdn.bench.test/{BUCKET}",
            endpoint=self.endpoint,
            region="us-east-1",
            path_style=True,
            access_key_id="bench",
            secret_access_key="bench-secret",
            allow_http=True,
        )


def cli_run(project: str, env: dict[str, str]) -> tuple[float, float, dict[str, object]]:
    """(seconds, peak MB, JSON) of one `imgsave generate` process."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "out.json"
        started = time.perf_counter()
        peak = measured_run(
            [
                IMGSAVE,
                "generate",
                project,
                "-k",
                str(IMAGES // 20),
                "-c",
                str(CONCURRENCY),
                "--json",
                "--allow-http",
            ],
            {**os.environ, "IMGSAVE_DATABASE_URL": URL, "IMGSAVE_LOG_DIR": work, **env},
            out,
        )
        elapsed = time.perf_counter() - started
        return elapsed, peak, json.loads(out.read_text())


async def loop_lag_during_store_run(sink: SinkProcess) -> tuple[float, float]:
    """(max, p99) milliseconds the event loop woke late during an in-process store run."""
    put("lag", incident_document(20))
    lags: list[float] = []

    async def watch() -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.perf_counter() - asked - 0.01) * 1000)

    with (
        ProviderProcess(LATENCY, "b64", IMAGE_BYTES) as api,
        tempfile.TemporaryDirectory() as logs,
    ):
        conf = replace(
            settings(base_url=api.base_url),
            store=sink.store("lag"),
            allow_http=True,
            log_dir=Path(logs),
        )
        watcher = asyncio.create_task(watch())
        result = await gen.run(conf, Wanted("lag", Ask(IMAGES // 20)), concurrency=CONCURRENCY)
        watcher.cancel()
    check(result.saved == IMAGES, f"in-process store run saved {result.saved} of {IMAGES}")
    return max(lags), statistics.quantiles(lags, n=100)[98]


def run() -> list[Result]:
    put("urls", incident_document(20))
    put("stored", incident_document(20))
    with SinkProcess() as sink:
        with ProviderProcess(LATENCY, "url") as api:
            url_s, url_mb, url_out = cli_run("urls", {"IMGSAVE_BASE_URL": api.base_url})
        with ProviderProcess(LATENCY, "b64", IMAGE_BYTES) as api:
            conf = sink.store("stored")
            env = {
                "IMGSAVE_BASE_URL": api.base_url,
                "IMGSAVE_STORE": conf.url or "",
                "IMGSAVE_PUBLIC_URL": conf.public_url or "",
                "AWS_ENDPOINT_URL": sink.endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench-secret",
                "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true",
                "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
            }
            store_s, store_mb, store_out = cli_run("stored", env)
        lag_max, lag_p99 = asyncio.run(loop_lag_during_store_run(sink))
    for name, out in (("URL", url_out), ("store", store_out)):
        check(out.get("saved") == IMAGES, f"{name} run saved {out.get('saved')} of {IMAGES}")
    check(stored_count("stored") == IMAGES, "the store run's document holds every image")
    ratio = (IMAGES / store_s) / (IMAGES / url_s)
    return [
        Result(
            benchmark=f"`generate` into an S3 store: {IMAGES} base64 images of "
            f"{IMAGE_BYTES / 1e6:.1f} MB, concurrency {CONCURRENCY}, provider latency "
            f"{LATENCY * 1000:.0f} ms",
            imgsave=f"{IMAGES / store_s:.1f} images/s, peak {store_mb:.0f} MB RSS; event loop "
            f"late by at most {lag_max:.0f} ms (p99 {lag_p99:.1f} ms)",
            baseline=f"URL answers, no store, same run: {IMAGES / url_s:.1f} images/s, "
            f"peak {url_mb:.0f} MB",
            ratio=ratio,
            goal="≥ 0.8; ≤ 500 MB",
            measured={
                "store_s": store_s,
                "url_s": url_s,
                "store_peak_mb": store_mb,
                "url_peak_mb": url_mb,
                "loop_lag_max_ms": lag_max,
                "loop_lag_p99_ms": lag_p99,
            },
        )
    ]
