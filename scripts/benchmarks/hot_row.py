"""Saves on one hot row: imgsave's group commit against one pgbench transaction per image."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time

from psycopg.conninfo import conninfo_to_dict

from imgsave._demo.incident import incident_document
from imgsave._demo.writes import DemoDatabase
from imgsave.core.documents import SceneRef
from imgsave.operations.group_commit import ProjectSaver, Saving

from .common import BENCH_DB, HERE, URL, Result, check, put, settings, stored_count

IMAGES = 6400


def pgbench_rate(clients: int, images: int, script: str = "hot_row.sql") -> float:
    """Images per second of `script` (one image per transaction) on the hot row."""
    put("hot", incident_document(20))
    params = conninfo_to_dict(URL)
    env = {
        **os.environ,
        "PGHOST": str(params.get("host", "127.0.0.1")),
        "PGPORT": str(params.get("port", 5432)),
        "PGUSER": str(params.get("user", "postgres")),
        "PGDATABASE": BENCH_DB,
    }
    per_client = images // clients
    done = subprocess.run(
        [
            "pgbench",
            "-n",
            "-c",
            str(clients),
            "-j",
            "2",
            "-t",
            str(per_client),
            "-f",
            str(HERE / script),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    check(stored_count("hot") == per_client * clients, "pgbench did not store every image")
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    if not match:
        raise RuntimeError(f"cannot read pgbench output:\n{done.stdout}")
    return float(match[1])


async def imgsave_rate(clients: int, images: int) -> tuple[float, int]:
    put("hot", incident_document(20))
    conf = settings()
    per_client = images // clients
    async with (
        await DemoDatabase.from_settings(conf) as db,
        ProjectSaver(db, "hot", conf.shape) as saver,
    ):

        async def completion_stream(client: int) -> None:
            for n in range(per_client):
                ref = SceneRef((client * per_client + n) % 20 + 1)
                await saver.save(Saving(ref, f"https://img.bench/imgsave/{client}-{n}"))

        started = time.perf_counter()
        await asyncio.gather(*(completion_stream(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    check(stored_count("hot") == per_client * clients, "imgsave did not store every image")
    return per_client * clients / elapsed, saver.transactions


def run() -> list[Result]:
    results = []
    for clients in (32, 64):
        baseline = pgbench_rate(clients, IMAGES)
        rate, transactions = asyncio.run(imgsave_rate(clients, IMAGES))
        results.append(
            Result(
                benchmark=f"hot-row saves, {clients} completions at once",
                imgsave=f"{rate:,.0f} images/s ({IMAGES / transactions:.1f} per transaction)",
                baseline="pgbench, 1 image per `SELECT … FOR UPDATE` + `UPDATE` transaction: "
                f"{baseline:,.0f} images/s",
                ratio=rate / baseline,
                goal="≥ 3",
                measured={"images_per_s": rate, "baseline_per_s": baseline},
            )
        )
    return results
