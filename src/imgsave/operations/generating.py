"""A generate run's work once the command has opened what it needs: settle what this database
paid for and did not save (settle.py), then plan and buy what is still missing — synchronously,
many projects under one bound (scheduler.py), or through the provider's Batch API
(batches.py). Both paths plan through planning.py and buy through purchases.py.

A dry run (`generate --dry-run`) plans with the same arithmetic and buys, claims and writes
nothing (`dry_plans`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Generic

from imgsave.adapters.imageapi.batches import BATCH_KINDS, no_batch_api
from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.identity import read_identity
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.core.cost import Cap
from imgsave.core.documents import Shape, decode, scenes
from imgsave.core.ledger import Purchase, on_their_way, without_pending
from imgsave.core.scene_plan import Plan, plan
from imgsave.errors import CannotWork, ImgsaveError, ProjectNotFound, UsageError
from imgsave.operations.batches import Batches, Submitted
from imgsave.operations.claims import Held, claimed
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


@dataclass(frozen=True)
class ProjectHooks(Generic[R]):
    """How the caller follows a synchronous run project by project: `result(project)` makes
    the object its outcome is put in, `reporter(project)` shows its progress (None: nowhere),
    and `landed(result)` takes each finished one."""

    result: Callable[[str], R]
    reporter: Callable[[str], Reporter | None]
    landed: Callable[[R], None]


async def buy_sync(
    s: Session,
    provider: Provider,
    targets: Targets,
    ask: Ask,
    *,
    concurrency: int,
    cap: Cap,
    stop: StopSignal,
    hooks: ProjectHooks[R],
) -> tuple[int, str | None]:
    """Every target project planned (claimed as it is) and bought under one concurrency
    bound; each result handed to `hooks.landed`. Returns how many projects were never started
    (the run stopped, or the cap, --max-images or --max-cost, ran out) and why the whole run
    stopped, if it did."""
    slots = Slots(
        concurrency,
        budget=cap.images,
        cap=cap.label,
        quantum=1 if targets.single else max(1, concurrency // MIN_IN_FLIGHT),
    )
    async with claimed(s.db.connector, s.run, s.settings.claims) as claims:
        means = Means(
            s.db, provider, s.purchases, s.settings.shape, slots, stop, claims,
            linger=0.0 if targets.single else LINGER,
        )  # fmt: skip
        scheduler: Scheduler[R] = Scheduler(
            means, ask, reporter=hooks.reporter, result=hooks.result
        )
        sources = targets.sources(s.db, ask)
        not_started = await scheduler.run(sources, hooks.landed, strict=targets.single)
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
    batch_size: int,
    max_images: int | None,
    errors: list[str],
) -> tuple[Submitted, BatchPlan]:
    """Plan every target project (claimed while it is planned and ordered), then submit what
    is missing in batches of `batch_size`, at most `max_images` images in all. The claims go
    as soon as the rows are written: from then on the rows hold their scenes."""
    async with claimed(s.db.connector, s.run, s.settings.claims) as claims:
        found = BatchPlan([])
        budget = max_images
        held: list[Held] = []
        planned_for: list[str] = []
        async for names in targets.sources(s.db, ask):
            for project in names:
                planned_for.append(project)
                try:
                    planned = await plan_project(
                        s.db, s.ledger, claims, project, ask, shape=s.settings.shape,
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
                for project in planned_for:
                    await claims.release(project)
        return submitted, found


async def _listed(names: list[str]) -> AsyncIterator[list[str]]:
    yield names


# Projects planned together by a dry run: one read of their documents, one of their ledger rows.
DRY_BATCH = 500


@dataclass(frozen=True)
class ProjectPlan:
    """What a run would buy for one project, as a dry run shows it."""

    project: str
    # The scenes short of K it would buy for, and how many images in all.
    scenes_short: tuple[int, ...] = ()
    images: int = 0
    # Images the plan wanted beyond the run's cap (--max-images, --max-cost).
    capped: int = 0
    skipped_scenes: tuple[int, ...] = ()
    unprompted_scenes: tuple[int, ...] = ()
    pending_scenes: tuple[int, ...] = ()
    # Why the project could not be planned (not found, malformed); a real run would fail it.
    error: str | None = None


def refuse_without_batch_api(kind: str) -> None:
    """A plan in batch mode for a kind that has no Batch API is refused as the run would be
    (exit 2), without opening anything."""
    if kind not in BATCH_KINDS:
        raise UsageError(no_batch_api(kind))


async def ledger_if_any(db: Database) -> LedgerRows | None:
    """This database's ledger, read where it exists and never made: a database no buying run
    has used yet has nothing on its way."""
    db_id = await read_identity(db.connector)
    if db_id is None:
        return None
    ledger = LedgerRows(db.connector, db_id)
    return ledger if await ledger.exists() else None


async def dry_plans(
    db: Database,
    ledger: LedgerRows | None,
    targets: Targets,
    ask: Ask,
    shape: Shape,
    *,
    budget: int | None,
) -> AsyncIterator[ProjectPlan]:
    """Each target project's plan, as a real run would make it before buying (planning.py's
    arithmetic: the scenes short of K, less what the ledger says is on its way, within the
    run's budget), with no claim, no ledger row and nothing written. Streamed: a batch of
    projects at a time, whatever `--all` finds."""
    left = budget
    async for names in targets.sources(db, ask):
        for start in range(0, len(names), DRY_BATCH):
            chunk = names[start : start + DRY_BATCH]
            # The ledger before the documents, as planning.plan_project reads them.
            rows: dict[str, list[Purchase]] = defaultdict(list)
            for row in await ledger.unresolved(chunk) if ledger is not None else ():
                rows[row.project].append(row)
            documents: dict[str, str | None]
            failures: dict[str, str] = {}
            if targets.single:
                documents = {chunk[0]: await db.read(chunk[0])}
            else:
                documents, failures = await db.read_many(chunk)
            for project in chunk:
                try:
                    if project in failures:
                        raise CannotWork(failures[project])
                    if project not in documents:
                        raise ProjectNotFound(f"project {project} not found")
                    wanted = without_pending(
                        plan(
                            scenes(decode(documents[project], project=project), shape,
                                   project=project),
                            ask.images_per_scene, selection=ask.selection, force=ask.force,
                            project=project, every_selected=targets.single,
                        ),
                        on_their_way(rows.get(project, ())),
                        force=ask.force,
                    )  # fmt: skip
                except ImgsaveError as exc:
                    if targets.single:
                        raise
                    yield ProjectPlan(project, error=str(exc))
                    continue
                capped = 0
                if left is not None:
                    wanted, capped = wanted.capped(left)
                    left -= wanted.requested
                yield ProjectPlan(
                    project,
                    scenes_short=tuple(job.scene.ref.index for job in wanted.jobs),
                    images=wanted.requested,
                    capped=capped,
                    skipped_scenes=wanted.skipped_scenes,
                    unprompted_scenes=wanted.unprompted_scenes,
                    pending_scenes=wanted.pending_scenes,
                )
