"""Jobs an earlier run paid for and never saw end (Replicate, fal, BFL): polled again, never
submitted again. Their images go through the same intake and locked save as any answer; a job
whose result the provider no longer holds is said as paid for and lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from imgsave.adapters.imageapi.client import ImageFailed, Provider
from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog
from imgsave.core.documents import Outcome, SceneRef, Shape
from imgsave.errors import ProviderStopped
from imgsave.operations.execution import job_fields, record_generated
from imgsave.operations.group_commit import ProjectSaver
from imgsave.operations.intake import Intake, NotKept
from imgsave.operations.recovery import job_ledger


@dataclass
class Resumed:
    jobs: int = 0
    saved: int = 0
    lost: int = 0
    # Scenes not to be planned by this run: their job is still running (or could not be
    # polled now), or was just found lost, which this run reports rather than buying again
    # in the same breath (the next run plans the scene as any other).
    waiting: set[SceneRef] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


async def resume_jobs(
    *,
    db: Database,
    shape: Shape,
    provider: Provider,
    intake: Intake,
    log: RunLog,
    project: str,
    pending: list[tuple[SceneRef, RemoteJob]],
) -> Resumed:
    resumed = Resumed(jobs=len(pending))
    if not pending:
        return resumed

    async def one(ref: SceneRef, job: RemoteJob) -> list[tuple[SceneRef, str, str]]:
        try:
            answer = await provider.resume(job)
        except ImageFailed as exc:
            resumed.errors.append(f"project {project}: {ref}: {exc}")
            resumed.waiting.add(ref)
            if exc.job is not None:
                resumed.lost += exc.lost
                log.write(
                    "image.failed", project=project, scene=ref.index, scene_id=ref.id,
                    error=str(exc), **job_fields(exc),
                )  # fmt: skip
            return []
        except ProviderStopped as exc:
            resumed.errors.append(f"project {project}: {ref}: job {job.id} not polled: {exc}")
            resumed.waiting.add(ref)
            return []
        kept_urls = []
        for received in answer.images:
            try:
                kept = await intake.keep(project, ref, received)
            except NotKept as exc:
                # Paid, and not to be had: a link that died with the job's files, say.
                resumed.errors.append(f"project {project}: {ref}: job {job.id}: {exc}")
                resumed.lost += exc.spooled is None
                resumed.waiting.add(ref)
                log.write(
                    "image.failed", project=project, scene=ref.index, scene_id=ref.id,
                    error=str(exc), job=job.id, **({"lost": True} if exc.spooled is None else {}),
                )  # fmt: skip
                continue
            await record_generated(log, project, ref, kept.url, {**kept.fields, "job": job.id})
            kept_urls.append((ref, kept.url, job.id))
        return kept_urls

    found = await asyncio.gather(*(one(ref, job) for ref, job in pending))
    wanted = [item for items in found for item in items]
    if wanted:
        async with ProjectSaver(db, project, shape) as saver:
            outcomes = await saver.save_many([(ref, url) for ref, url, _ in wanted])
        for (ref, url, job_id), outcome in zip(wanted, outcomes, strict=True):
            if outcome is Outcome.ADDED:
                resumed.saved += 1
                log.write(
                    "image.saved", project=project, scene=ref.index, scene_id=ref.id, url=url,
                    job=job_id,
                )  # fmt: skip
    return resumed


async def jobs_not_in_scenes(
    log_dir: Path, normalise: Callable[[str], str | None], only: Collection[str] = ()
) -> list[dict[str, object]]:
    """The jobs this host's log says were paid for and are not in their scene (of the `only`
    projects, if named), as audit names them."""
    ledger = await asyncio.to_thread(job_ledger, log_dir, normalise=normalise)
    named = {normalise(p) or p for p in only}
    found: list[dict[str, object]] = [
        {"project": project, "scene": scene, "scene_id": scene_id, "job": job.id,
         "kind": job.kind, "state": "pending"}
        for project, jobs in ledger.pending.items()
        for (scene, scene_id), job in jobs
    ]  # fmt: skip
    found += [
        {"project": project, "scene": scene, "scene_id": scene_id, "job": job, "state": "lost"}
        for project, (scene, scene_id), job in ledger.lost
    ]
    return [j for j in found if not named or j["project"] in named]
