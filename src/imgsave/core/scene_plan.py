"""What `generate` plans for a project: which scenes need how many images. Pure: a rerun after
a crash plans only what is still missing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imgsave.core.documents import Scene
from imgsave.errors import UsageError


@dataclass(frozen=True)
class Job:
    scene: Scene
    count: int
    # URLs the new images stand in for, one per image (repair --regenerate of expired links):
    # the log says so, and audit then counts each superseded rather than lost.
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]
    skipped_scenes: tuple[int, ...] = ()
    unprompted_scenes: tuple[int, ...] = ()
    # Scenes short of K whose missing images are all on their way already (a job, a batch, a
    # run on another host: core/ledger.without_pending): nothing is bought for them now.
    pending_scenes: tuple[int, ...] = ()

    @property
    def requested(self) -> int:
        return sum(job.count for job in self.jobs)

    def capped(self, budget: int) -> tuple[Plan, int]:
        """At most `budget` images of this plan (scenes in order), and how many were cut."""
        jobs: list[Job] = []
        left = max(0, budget)
        for job in self.jobs:
            if left <= 0:
                break
            count = min(job.count, left)
            jobs.append(Job(job.scene, count, job.replaces[:count]))
            left -= count
        kept = Plan(tuple(jobs), self.skipped_scenes, self.unprompted_scenes, self.pending_scenes)
        return kept, self.requested - kept.requested

    def to_log(self) -> list[dict[str, Any]]:
        """What run.started records per scene: what it held at plan time and what is planned,
        so a reader can tell a top-up (adds to what is there) from a replacement."""
        return [
            {
                "scene": job.scene.ref.index,
                "scene_id": job.scene.ref.id,
                "held": len(job.scene.urls),
                "planned": job.count,
                **({"replaces": list(job.replaces)} if job.replaces else {}),
            }
            for job in self.jobs
        ]


@dataclass(frozen=True)
class SceneSelection:
    """`--scenes 1,3,5-8` as ranges: `1-20000000` costs two integers, not a set of millions."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and any(lo <= index <= hi for lo, hi in self.ranges)

    def first_missing(self, present: set[int]) -> int | None:
        """The lowest selected index not in `present`, in time bounded by len(present)."""
        missing = []
        for lo, hi in self.ranges:
            index = lo
            while index <= hi and index in present:
                index += 1
            if index <= hi:
                missing.append(index)
        return min(missing) if missing else None


def plan(
    all_scenes: Sequence[Scene],
    images_per_scene: int,
    *,
    selection: SceneSelection | None = None,
    force: bool = False,
    project: str = "?",
    every_selected: bool = True,
) -> Plan:
    """Which scenes need how many images. Pure: reruns after a crash only do what is missing.
    `every_selected`: a selected scene the project lacks is an error (one project named; over
    many, projects of different lengths are expected and each gets the scenes it has)."""
    if selection is not None and every_selected:
        missing = selection.first_missing({s.ref.index for s in all_scenes})
        if missing is not None:
            raise UsageError(f"project {project} has no scene {missing} (--scenes)")
    jobs, skipped, unprompted = [], [], []
    for scene in all_scenes:
        if selection is not None and scene.ref.index not in selection:
            continue
        need = images_per_scene if force else images_per_scene - len(scene.urls)
        if need <= 0:
            skipped.append(scene.ref.index)
        elif scene.prompt is None:
            unprompted.append(scene.ref.index)
        else:
            jobs.append(Job(scene, need))
    return Plan(tuple(jobs), tuple(skipped), tuple(unprompted))
