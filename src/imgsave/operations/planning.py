"""Read → plan → claim, written once for the synchronous and the batch paths.

A project's plan: read its document and plan (core/scene_plan.py); claim the planned scenes
(claims.py), so that no other run starts on them; read it again, now that they are held (another
host may have filled them meanwhile), and plan again, less what is already on its way to each
scene in the ledger (a job, a batch, a run that died with its answer unrecorded): a pending
purchase holds its scene's share against every other run, however long it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.core.documents import SceneRef, Shape, decode, scenes
from imgsave.core.ledger import on_their_way, scene_key, without_pending
from imgsave.core.scene_plan import Plan, SceneSelection, plan
from imgsave.operations.claims import Claims, Held


@dataclass(frozen=True)
class Ask:
    """What the run asks of every project."""

    images_per_scene: int
    selection: SceneSelection | None = None
    force: bool = False
    # (project, scene key) this run leaves alone: a purchase of theirs was found lost just now,
    # which the run reports rather than buying again in the same breath.
    held_back: frozenset[tuple[str, str]] = frozenset()


@dataclass
class Planned:
    """A project's plan for this run, and the scenes other runs hold (skipped)."""

    plan: Plan
    held: list[Held] = field(default_factory=list)


async def plan_project(
    db: Database,
    ledger: LedgerRows,
    claims: Claims | None,
    project: str,
    ask: Ask,
    *,
    shape: Shape,
    every_selected: bool = False,
) -> Planned:
    """The scenes of `project` this run may buy for, and how many images each: claimed (when
    `claims`), less what is on its way. `every_selected`: a selected scene the project lacks is
    an error (one project named)."""

    async def planned() -> Plan:
        document = decode(await db.read(project), project=project)
        return plan(
            scenes(document, shape, project=project),
            ask.images_per_scene,
            selection=ask.selection,
            force=ask.force,
            project=project,
            every_selected=every_selected,
        )

    first = await planned()
    if not first.jobs:
        return Planned(first)
    held: list[Held] = []
    mine: set[SceneRef] | None = None
    if claims is not None:
        claimed, held = await claims.claim(project, [job.scene.ref for job in first.jobs])
        if not claimed:
            return Planned(Plan((), first.skipped_scenes, first.unprompted_scenes), held)
        mine = set(claimed)
    # The ledger before the document: a purchase saved by another host meanwhile (a batch
    # collected, a job resumed) moves to `saved` in the transaction that writes it into the
    # document, so it is on its way in the first reading or in its scene in the second. Read
    # the other way round, one committed between the readings is in neither: bought again.
    pending = on_their_way(await ledger.unresolved([project]))
    second = await planned()
    if mine is not None:
        second = Plan(
            tuple(job for job in second.jobs if job.scene.ref in mine),
            second.skipped_scenes,
            second.unprompted_scenes,
        )
    if ask.held_back:
        second = Plan(
            tuple(j for j in second.jobs if (project, scene_key(j.scene.ref)) not in ask.held_back),
            second.skipped_scenes,
            second.unprompted_scenes,
        )
    return Planned(without_pending(second, pending, force=ask.force), held)
