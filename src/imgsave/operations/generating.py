"""A generate run's work once the command has opened what it needs: settle what this database
paid for and did not save (settle.py), then plan and buy what is still missing — synchronously,
many projects under one bound (scheduler.py), or through the provider's Batch API
(batches.py). Both paths plan through planning.py and buy through purchases.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.postgres.database import Database
from imgsave.core.scene_plan import Plan
from imgsave.errors import ImgsaveError
from imgsave.operations.batches import Batches, Submitted
from imgsave.operations.claims import Claims, Held
from imgsave.operations.execution import Means, Reporter
from imgsave.operations.planning import Ask, plan_project
from imgsave.operations.scheduler import MIN_IN_FLIGHT, R, Scheduler
from imgsave.operations.session import Session
from imgsave.operations.settle import Settler
from imgsave.operations.settled import Settled
from imgsave.operations.slots import Slots
from imgsave.operations.stop import StopSignal

# How long a project's save may wait for its other answers when projects share the slots.
LINGER = 0.05


@dataclass(frozen=True)
class Targets:
    """Which projects a run is for: the named ones (their keys as the table spells them), or
    every project with a scene short of K."""

    names: tuple[str, ...]
    all_projects: bool

    @property
    def single(self) -> bool:
        return len(self.names) == 1 and not self.all_projects

    @property
    def settled(self) -> list[str] | None:
        """The projects whose purchases settling looks at (None: all of this database's)."""
        return None if self.all_projects else list(self.names)

    def sources(self, db: Database, ask: Ask) -> AsyncIterator[list[str]]:
        if not self.all_projects:
            return _listed(list(self.names))
        # --force asks K more of every scene: every project has work.
        return db.project_keys() if ask.force else db.projects_short_of(ask.images_per_scene)


async def resolve(db: Database, names: Sequence[str]) -> tuple[str, ...]:
    """Named projects, one spelling per row, as the table returns it (a uuid's case, an
    integer's zeros, a citext's case), before claims, ledger rows, object keys and output. A
    name that matches no row stays as given: the run says it was not found."""
    found = await db.resolve(names)
    return tuple(dict.fromkeys(found.get(name, name) for name in names))


async def settle(
    s: Session, targets: Targets, provider: Provider | None, batches: Batches | None
) -> Settled:
    return await Settler(
        db=s.db, purchases=s.purchases, shape=s.settings.shape, provider=provider, batches=batches
    ).settle(targets.settled)


async def buy_sync(
    s: Session,
    provider: Provider,
    targets: Targets,
    ask: Ask,
    *,
    concurrency: int,
    max_images: int | None,
    stop: StopSignal,
    claims: Claims | None,
    reporter: Callable[[str], Reporter | None],
    result: Callable[[str], R],
    landed: Callable[[R], None],
) -> tuple[int, str | None]:
    """Every target project planned and bought under one concurrency bound; each result
    handed to `landed`. Returns how many projects were never started (the run stopped, or
    --max-images ran out) and why the whole run stopped, if it did."""
    slots = Slots(
        concurrency,
        budget=max_images,
        quantum=1 if targets.single else max(1, concurrency // MIN_IN_FLIGHT),
    )
    means = Means(
        s.db, provider, s.purchases, s.settings.shape, slots, stop, claims,
        linger=0.0 if targets.single else LINGER,
    )  # fmt: skip
    scheduler: Scheduler[R] = Scheduler(means, ask, reporter=reporter, result=result)
    not_started = await scheduler.run(targets.sources(s.db, ask), landed, strict=targets.single)
    return not_started, scheduler.fatal


@dataclass
class BatchPlan:
    """What a batch run found to submit, project by project."""

    plans: list[tuple[str, Plan]]
    skipped_scenes: int = 0
    unprompted_scenes: int = 0
    held_scenes: int = 0
    pending_scenes: int = 0
    capped: int = 0


async def buy_batch(
    s: Session,
    batches: Batches,
    targets: Targets,
    ask: Ask,
    *,
    claims: Claims | None,
    batch_size: int,
    max_images: int | None,
    errors: list[str],
) -> tuple[Submitted, BatchPlan]:
    """Plan every target project (claimed while it is planned and ordered), then submit what
    is missing in batches of `batch_size`, at most `max_images` images in all. The claims go
    as soon as the rows are written: from then on the rows hold their scenes."""
    found = BatchPlan([])
    budget = max_images
    held: list[Held] = []
    claimed: list[str] = []
    async for names in targets.sources(s.db, ask):
        for project in names:
            claimed.append(project)
            try:
                planned = await plan_project(
                    s.db, s.ledger, claims, project, ask, s.settings.shape,
                    every_selected=targets.single,
                )  # fmt: skip
            except ImgsaveError as exc:
                if targets.single:
                    raise
                errors.append(str(exc))
                continue
            plan = planned.plan
            held += planned.held
            found.skipped_scenes += len(plan.skipped_scenes)
            found.unprompted_scenes += len(plan.unprompted_scenes)
            found.pending_scenes += len(plan.pending_scenes)
            if budget is not None:
                plan, cut = plan.capped(budget)
                found.capped += cut
                budget -= plan.requested
            if plan.jobs:
                found.plans.append((project, plan))
    found.held_scenes = len(held)
    try:
        submitted = await batches.submit(found.plans, batch_size=batch_size)
    finally:
        if claims is not None:
            for project in claimed:
                await claims.release(project)
    return submitted, found


async def _listed(names: list[str]) -> AsyncIterator[list[str]]:
    yield names
