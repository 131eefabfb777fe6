"""The incident, reproduced on purpose: the web route's fetch-modify-write save.

Used by `imgsave demo`, the tests and the benchmarks to show the loss happening with the same
database, provider and harness in which imgsave loses nothing. Never use it to save images.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from imgsave._demo.writes import DemoDatabase
from imgsave.adapters.imageapi.client import ImageFailed, Provider
from imgsave.core.documents import SceneRef, Shape, append_urls, decode, encode, scenes

# The app's console line, as an on-call engineer would export it; `audit --pattern` reads it.
APP_LOG_PATTERN = (
    r"^(?P<ts>\S+) \[(?P<project>[^\]]+)\] \[Scene (?P<scene>\d+)\] "
    r"Saved image to database: (?P<url>\S+)"
)


def app_log_line(project: str, scene: int, url: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now.isoformat()} [{project}] [Scene {scene}] Saved image to database: {url}"


def incident_document(scene_count: int = 20) -> dict[str, Any]:
    """A document shaped like the incident's: ids, indexes, prompts and app-owned keys."""
    return {
        "title": "The Lighthouse Intake",
        "style": {"palette": "teal and amber", "aspect": "16:9"},
        "scenes": [
            {
                "id": f"scene-{n}",
                "index": n,
                "title": f"Scene {n}",
                "narration": f"Narration for scene {n}.",
                "imagePrompt": f"A lighthouse on a cliff at dusk, moment {n} of the story",
                "durationSeconds": 6.5,
            }
            for n in range(1, scene_count + 1)
        ],
    }


async def naive_save(
    db: DemoDatabase, project: str, shape: Shape, ref: SceneRef, url: str, *, think: float = 0.0
) -> None:
    """saveImageToDatabase as it was: fetch, modify in memory, write the whole document back."""
    document = decode(await db.read(project), project=project)
    if think:
        await asyncio.sleep(think)
    edit = append_urls(document, shape, [(ref, url)], project=project)
    await db.overwrite_unlocked(project, encode(edit.document))


async def naive_generate(
    db: DemoDatabase,
    provider: Provider,
    project: str,
    shape: Shape,
    images_per_scene: int,
    *,
    app_log: TextIO | None = None,
    think: float = 0.0,
    on_saved: Callable[[], None] | None = None,
) -> list[tuple[SceneRef, str]]:
    """The route: every image of every scene at once, each saved on completion. Returns what
    the route would have logged as "Saved"."""
    document = decode(await db.read(project), project=project)
    saved: list[tuple[SceneRef, str]] = []

    async def one(ref: SceneRef, prompt: str) -> None:
        try:
            answer = await provider.generate(prompt)
        except ImageFailed:
            return
        url = answer.images[0].url
        if url is None:  # the route as written only knew URL answers
            return
        await naive_save(db, project, shape, ref, url, think=think)
        saved.append((ref, url))
        if app_log is not None:
            app_log.write(app_log_line(project, ref.index, url) + "\n")
            app_log.flush()
        if on_saved:
            on_saved()

    await asyncio.gather(
        *(
            one(scene.ref, scene.prompt)
            for scene in scenes(document, shape, project=project)
            if scene.prompt
            for _ in range(images_per_scene)
        )
    )
    return saved
