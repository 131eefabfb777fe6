"""The incident's race, caught by a harness that can fail, and imgsave surviving the same one."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import Counter
from dataclasses import replace

import pytest

from imgsave._demo.incident import naive_save
from imgsave._demo.loopback import LoopbackProvider
from imgsave._demo.writes import DemoDatabase
from imgsave.commands import generate as gen
from imgsave.commands.generate import Wanted
from imgsave.core.documents import SceneRef, Shape
from imgsave.core.settings import Settings
from imgsave.operations.group_commit import ProjectSaver, Saving
from imgsave.operations.planning import Ask

from .conftest import imgsave_waits_for_a_lock, wait_for

SHAPE = Shape()


async def hammer(save, count: int, concurrency: int) -> list[tuple[SceneRef, str]]:
    """`count` completions, `concurrency` at a time, each saving one URL the moment it lands."""
    semaphore = asyncio.Semaphore(concurrency)
    items = [
        (SceneRef(i % 20 + 1, f"scene-{i % 20 + 1}"), f"https://img.test/{i}") for i in range(count)
    ]

    async def one(ref: SceneRef, url: str) -> None:
        async with semaphore:
            # Deterministic jitter (hash() of a str is seeded differently in every process).
            await asyncio.sleep(0.001 * (zlib.crc32(url.encode()) % 5))
            await save(ref, url)

    await asyncio.gather(*(one(ref, url) for ref, url in items))
    return items


def stored(rows, project: str) -> Counter:
    return Counter(u for urls in rows.urls(project).values() for u in urls)


@pytest.mark.many_connections
async def test_the_naive_write_loses_images_under_the_same_harness(
    settings, rows, incident_project
):
    async with await DemoDatabase.from_settings(settings, max_size=8) as db:
        items = await hammer(
            lambda ref, url: naive_save(db, incident_project, SHAPE, ref, url), 500, 64
        )
    kept = stored(rows, incident_project)
    assert sum(kept.values()) < len(items), "the harness failed to reproduce the incident"


async def test_locked_group_commit_saves_every_image_exactly_once(settings, rows, incident_project):
    async with (
        await DemoDatabase.from_settings(settings, max_size=8) as db,
        ProjectSaver(db, incident_project, SHAPE) as saver,
    ):
        items = await hammer(lambda ref, url: saver.save(Saving(ref, url)), 500, 64)
    kept = stored(rows, incident_project)
    assert kept == Counter(url for _, url in items)
    for index, urls in rows.urls(incident_project).items():
        assert all(u.startswith("https://img.test/") for u in urls)
        assert len(urls) == 25, f"scene {index}"


@pytest.mark.many_connections
async def test_generate_500_images_at_concurrency_64_all_saved_once(
    settings: Settings, rows, incident_project, log_dir
):
    with LoopbackProvider(latency=0.01, jitter=0.02) as api:
        # A realistic deadline: the fixture's 2 s is for fault tests, and 64 requests at once on
        # a busy 2-core machine can take longer than that end to end (a retry would pay twice).
        provider = replace(settings.provider, timeout=30.0)
        settings = replace(settings, base_url=api.base_url, provider=provider)
        result = await gen.run(settings, Wanted(incident_project, Ask(25)), concurrency=64)
        served = list(api.served)
    assert (result.requested, result.saved, result.failed) == (500, 500, 0)
    assert result.exit_code == 0
    kept = stored(rows, incident_project)
    assert kept == Counter(served), "every URL the provider gave is stored exactly once"
    assert all(len(urls) == 25 for urls in rows.urls(incident_project).values())
    events = Counter(
        json.loads(line)["event"]
        for path in log_dir.glob("*.jsonl")
        for line in path.read_text().splitlines()
    )
    assert events["image.generated"] == events["image.saved"] == 500
    assert events["run.started"] == events["run.finished"] == 1


def test_generate_audit_and_repair_work_through_a_transaction_mode_pooler(
    cli, api, rows, incident_project, pooler_url, log_dir
):
    env = {"IMGSAVE_DATABASE_URL": pooler_url, "IMGSAVE_BASE_URL": api.base_url}
    ran = cli("generate", "p1", "-k", "10", "-c", "32", "--json", env=env)
    assert ran.code == 0, ran.stderr
    assert ran.json()["saved"] == 200
    assert sum(stored(rows, "p1").values()) == 200
    # Take some images away, as a clobbering writer would, and let repair put them back.
    doc = rows.doc("p1")
    for scene in doc["scenes"][:5]:
        scene["imageUrls"] = []
    rows.put("p1", doc)
    fixed = cli("repair", "--execute", "--json", env=env)
    assert fixed.code == 0, fixed.stderr
    assert fixed.json()["repaired"] == 50
    assert cli("audit", "--json", env=env).json()["summary"]["present"] == 200


async def test_urls_that_wait_for_a_locked_row_are_committed_together(
    settings, rows, incident_project, db_url
):
    """Deterministic: while an outside transaction holds the row, 64 saves queue up; once it
    lets go, they take at most two transactions (the one already waiting, and the rest)."""
    import psycopg

    items = [
        (SceneRef(i % 20 + 1, f"scene-{i % 20 + 1}"), f"https://img.test/{i}") for i in range(64)
    ]
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url, autocommit=True) as watch:
        holder.execute("SELECT 1 FROM projects WHERE id = %s FOR UPDATE", (incident_project,))
        conf = replace(settings, database=replace(settings.database, lock_timeout=30.0))
        async with (
            await DemoDatabase.from_settings(conf, max_size=8) as db,
            ProjectSaver(db, incident_project, SHAPE) as saver,
        ):
            saves = asyncio.gather(*(saver.save(Saving(ref, url)) for ref, url in items))

            await asyncio.to_thread(wait_for, lambda: imgsave_waits_for_a_lock(watch))
            holder.rollback()
            await saves
    assert saver.transactions <= 2, saver.transactions
    assert stored(rows, incident_project) == Counter(url for _, url in items)
