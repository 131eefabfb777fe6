"""Paid images a rerun takes before it pays again: what an earlier run received and never saved.

Two places remember them. imgsave's own log on this host: an `image.generated` whose URL no
`image.saved`, `image.repaired` or later `replaces` ever followed (the run died, or its save
failed, after the paid image was logged). And, on any host, the store: the objects under a
scene's folder that were put after the claim of a run that died holding that scene (the claims
table says when that claim began, so an older object, which the app may have removed on purpose,
is never taken). Both are appended under the row lock before the plan is made again, so no scene
is paid for again, or filled past what was asked, because an image was received and not saved.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog
from imgsave.adapters.storage.object_store import Store
from imgsave.core.documents import Outcome, SceneRef, Shape
from imgsave.core.image_bytes import scene_segment
from imgsave.core.scene_plan import Job
from imgsave.core.url_rule import url_problem
from imgsave.operations.group_commit import ProjectSaver

# The events that say a logged URL reached its scene (or was deliberately superseded).
_DONE = frozenset({"image.saved", "image.repaired", "image.rehosted"})
# Only lines naming one of these are parsed at all: a month of logs is read on every run.
_NEEDLES = (
    b'"image.generated"',
    b'"image.saved"',
    b'"image.repaired"',
    b'"image.rehosted"',
    b'"in_scene"',
)

SceneKey = tuple[int, str | None]


@dataclass
class Unsaved:
    """project -> scene (index, id) -> paid URLs never saved, in the order they were logged."""

    by_project: dict[str, dict[SceneKey, list[str]]] = field(default_factory=dict)

    def for_project(self, project: str) -> dict[SceneKey, list[str]]:
        return self.by_project.get(project, {})


def _records(log_dir: Path, needles: tuple[bytes, ...]) -> Iterator[dict[str, Any]]:
    """Every record of this host's log whose line holds one of `needles` (only those are
    parsed: a month of logs is read on every run); a line cut short by a crash is skipped
    (audit counts it)."""
    for path in sorted(log_dir.glob("*.jsonl")) if log_dir.is_dir() else []:
        try:
            handle = path.open("rb")
        except OSError:
            continue
        with handle:
            for line in handle:
                if not any(needle in line for needle in needles):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def unsaved_in_log(
    log_dir: Path, *, allow_http: bool, normalise: Callable[[str], str | None]
) -> Unsaved:
    """Every paid image imgsave's own log on this host holds and never saw saved."""
    generated: dict[str, tuple[str, SceneKey]] = {}
    done: set[str] = set()
    for record in _records(log_dir, _NEEDLES):
        url, event = record.get("url"), record.get("event")
        replaces = record.get("replaces")
        if isinstance(replaces, list):
            done.update(u for u in replaces if isinstance(u, str))
        if not isinstance(url, str):
            continue
        if event in _DONE or record.get("in_scene") is True:
            done.add(url)
            continue
        if event != "image.generated":
            continue
        project, scene = record.get("project"), record.get("scene")
        scene_id = record.get("scene_id")
        if (
            isinstance(project, str)
            and isinstance(scene, int)
            and not isinstance(scene, bool)
            and scene >= 1
            and isinstance(scene_id, str | None)
            and url_problem(url, allow_http=allow_http) is None
        ):
            generated.setdefault(url, (normalise(project) or project, (scene, scene_id)))
    found = Unsaved()
    for url, (project, scene) in generated.items():
        if url not in done:
            found.by_project.setdefault(project, defaultdict(list))[scene].append(url)
    return found


@dataclass
class JobLedger:
    """What this host's log says of the jobs it paid for (Replicate, fal, BFL)."""

    # project -> (scene, job) for each job requested and never ended.
    pending: dict[str, list[tuple[SceneKey, RemoteJob]]] = field(default_factory=dict)
    # (project, scene, job id) for each job that ended paid for and lost.
    lost: list[tuple[str, SceneKey, str]] = field(default_factory=list)

    def of_kind(self, kind: str) -> dict[str, list[tuple[SceneKey, RemoteJob]]]:
        return {
            project: kept
            for project, jobs in self.pending.items()
            if (kept := [(scene, job) for scene, job in jobs if job.kind == kind])
        }


def job_ledger(log_dir: Path, *, normalise: Callable[[str], str | None]) -> JobLedger:
    """Every job this host's log names: pending (image.requested, and no image.generated or
    image.failed naming it since) or lost (an image.failed saying so)."""
    requested: dict[str, tuple[str, SceneKey, RemoteJob]] = {}
    ended: set[str] = set()
    ledger = JobLedger()
    for record in _records(log_dir, (b'"job"',)):
        if not isinstance(record.get("job"), str):
            continue
        project, scene = record.get("project"), record.get("scene")
        scene_id = record.get("scene_id")
        if not (
            isinstance(project, str)
            and isinstance(scene, int)
            and not isinstance(scene, bool)
            and isinstance(scene_id, str | None)
        ):
            continue
        key = normalise(project) or project
        event = record.get("event")
        if event in ("image.generated", "image.failed", "image.rehosted"):
            ended.add(record["job"])
            if event == "image.failed" and record.get("lost") is True:
                ledger.lost.append((key, (scene, scene_id), record["job"]))
        elif event == "image.requested" and (job := RemoteJob.from_log(record)):
            requested.setdefault(job.id, (key, (scene, scene_id), job))
    for ident, (project, scene, job) in requested.items():
        if ident not in ended:
            ledger.pending.setdefault(project, []).append((scene, job))
    return ledger


def saved_lines(log_dir: Path, batch_id: str) -> Counter[str]:
    """custom_id -> how many of its images this host's log says reached their scene, for one
    batch: the lines a collection cut short already did, which its resumption skips."""
    done: Counter[str] = Counter()
    for record in _records(log_dir, (json.dumps(batch_id).encode(),)):
        if (
            record.get("event") == "image.saved"
            and record.get("batch") == batch_id
            and isinstance(record.get("custom_id"), str)
        ):
            done[record["custom_id"]] += 1
    return done


async def inherited_objects(
    store: Store, project: str, inherited: dict[SceneRef, float]
) -> list[tuple[SceneRef, str]]:
    """The images a run that died holding these scenes put in the store after its claim began
    (epoch seconds, by `inherited`): each provably an image imgsave stored (Store.holds_image)."""
    found: list[tuple[SceneRef, str]] = []
    for ref, since in inherited.items():
        folder = store.scene_folder(project, scene_segment(ref))
        async for key, modified, size in store.objects(folder + "/"):
            if modified.timestamp() >= since and await store.holds_image(key, size):
                found.append((ref, store.public_url(key)))
    return found


async def save_recovered(
    db: Database,
    shape: Shape,
    log: RunLog,
    project: str,
    jobs: Sequence[Job],
    *,
    logged: dict[SceneKey, list[str]],
    store: Store | None,
    inherited: dict[SceneRef, float],
) -> int:
    """Save, into the scenes of `jobs` (held by the caller's claims), what earlier runs received
    for them and never saved: `logged` by this host's log, and the objects a dead run put in
    the store (`inherited`). Returns how many images that added, each logged image.repaired."""
    stored = await inherited_objects(store, project, inherited) if store and inherited else []
    wanted: list[tuple[SceneRef, str]] = []
    for job in jobs:
        ref = job.scene.ref
        urls = logged.get((ref.index, ref.id), []) + [u for r, u in stored if r == ref]
        wanted += [(ref, url) for url in dict.fromkeys(urls) if url not in job.scene.urls]
    if not wanted:
        return 0
    async with ProjectSaver(db, project, shape) as saver:
        outcomes = await saver.save_many(wanted)
    added = 0
    for (ref, url), outcome in zip(wanted, outcomes, strict=True):
        if outcome is Outcome.ADDED:
            added += 1
            await log.record(
                "image.repaired", project=project, scene=ref.index, scene_id=ref.id, url=url,
                recovered=True,
            )  # fmt: skip
    return added
