"""End to end: `generate` against a provider with a fixed latency, against the ideal
(ceil(images / concurrency) x latency) and a bare httpx loop making the same requests."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

from imgsave._demo.incident import incident_document
from imgsave.commands import generate as gen
from imgsave.commands.generate import Wanted
from imgsave.operations.planning import Ask

from .common import IMGSAVE, URL, PipedServer, Result, check, put, settings

LATENCY, IMAGES, CONCURRENCY = 0.25, 320, 32
# A project whose one scene has no prompt: a run for it buys nothing.
WARM_UP = "e2e-warm-up"


class ProviderProcess(PipedServer):
    """provider_server.py in a process of its own, like a real provider."""

    def __init__(self, latency: float, mode: str = "url", image_bytes: int = 1_500_000):
        super().__init__("provider_server.py", str(latency), mode, str(image_bytes))
        self.base_url = self.address


async def library_run() -> float:
    """imgsave's own run in-process: no interpreter start-up in the time. The modules a run
    imports on its first call are start-up too (the CLI's wall time below counts them), so a
    run with nothing to buy goes first; the run timed still connects, settles and plans."""
    with ProviderProcess(LATENCY) as api, tempfile.TemporaryDirectory() as logs:
        conf = replace(settings(base_url=api.base_url), log_dir=Path(logs), allow_http=True)
        await gen.run(conf, Wanted(WARM_UP, Ask(1)), concurrency=CONCURRENCY)
        started = time.perf_counter()
        result = await gen.run(conf, Wanted("e2e", Ask(IMAGES // 20)), concurrency=CONCURRENCY)
        elapsed = time.perf_counter() - started
    check(result.saved == IMAGES, f"saved {result.saved} of {IMAGES}")
    return elapsed


async def bare_client() -> float:
    """The floor set by the HTTP client: the same requests, same concurrency, nothing else."""
    with ProviderProcess(LATENCY) as api:
        async with httpx.AsyncClient() as client:
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def one() -> None:
                async with semaphore:
                    answer = await client.post(
                        f"{api.base_url}/images/generations", json={"prompt": "p", "n": 1}
                    )
                    answer.json()

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(IMAGES)))
            return time.perf_counter() - started


def cli_wall() -> float:
    with ProviderProcess(LATENCY) as api, tempfile.TemporaryDirectory() as logs:
        env = {
            **os.environ,
            "IMGSAVE_DATABASE_URL": URL,
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_LOG_DIR": logs,
        }
        started = time.perf_counter()
        subprocess.run(
            [
                IMGSAVE,
                "generate",
                "e2e-cli",
                "-k",
                str(IMAGES // 20),
                "-c",
                str(CONCURRENCY),
                "--json",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def run() -> list[Result]:
    put("e2e", incident_document(20))
    put("e2e-cli", incident_document(20))
    put(WARM_UP, {"scenes": [{"id": "s1", "index": 1, "imageUrls": []}]})
    elapsed = asyncio.run(library_run())
    floor = asyncio.run(bare_client())
    wall = cli_wall()
    ideal = math.ceil(IMAGES / CONCURRENCY) * LATENCY
    return [
        Result(
            benchmark=f"end-to-end `generate`, {IMAGES} images, concurrency {CONCURRENCY}, "
            f"provider latency {LATENCY * 1000:.0f} ms",
            imgsave=f"{elapsed:.2f} s (CLI wall {wall:.2f} s: start-up + connect "
            f"{max(0.0, wall - elapsed):.2f} s)",
            baseline=f"ideal ceil({IMAGES}/{CONCURRENCY}) × {LATENCY * 1000:.0f} ms = "
            f"{ideal:.2f} s; a bare httpx loop making the same requests: {floor:.2f} s",
            ratio=ideal / elapsed,
            goal="≥ 0.9",
            measured={"seconds": elapsed, "cli_wall_s": wall, "ideal_s": ideal, "httpx_s": floor},
        )
    ]
