"""Rescuing documents whose URLs are a provider's expiring links (`imgsave rehost`).

Every URL not under the store's public URL is downloaded while it still resolves and taken
through the one paid-image sequence (purchases.py) as a copy that takes its link's place: kept
in the store, recorded (`image.rehosted`, `replaces: [link]`, and a ledger row of mode copy),
then put where the link is, in one locked write per project, only where the link is still
there. Links that no longer resolve are expired; with --regenerate, each gets a new image bought
in its place (execution.py, with the same in-place edit). A second run finds nothing to do.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.imageapi.wires import Received
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.storage.object_store import Store
from imgsave.core.documents import Outcome, SceneRef, Shape, decode, find, scenes
from imgsave.core.ledger import Edit, Mode, NewPurchase, Purchase, State
from imgsave.core.result_json import NOT_IN_JSON
from imgsave.core.scene_plan import Job, Plan
from imgsave.core.url_rule import url_problem
from imgsave.errors import ImgsaveError, ProjectNotFound
from imgsave.operations.claims import Claims, claimed
from imgsave.operations.execution import Execution, Means, Reporter, Tally
from imgsave.operations.group_commit import ProjectSaver
from imgsave.operations.session import Session
from imgsave.operations.slots import Slots
from imgsave.operations.stop import StopSignal

# Projects read at once while looking for links.
BATCH = 200


@dataclass(frozen=True)
class Link:
    project: str
    scene: int
    scene_id: str | None
    url: str
    prompt: str | None = field(default=None, metadata=NOT_IN_JSON)

    @property
    def ref(self) -> SceneRef:
        return SceneRef(self.scene, self.scene_id)


@dataclass
class Found:
    links: list[Link] = field(default_factory=list)
    projects: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Copied:
    rehosted: int = 0
    expired: list[Link] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def foreign_links(
    project: str, raw: str | None, shape: Shape, store: Store, *, allow_http: bool
) -> list[Link]:
    """The URLs of a document that are not the store's (and that the URL rule accepts)."""
    found = []
    for scene in scenes(decode(raw, project=project), shape, project=project):
        # A link held twice is one image: one copy takes its first place (document.replace_urls).
        for url in dict.fromkeys(scene.urls):
            if not store.owns(url) and url_problem(url, allow_http=allow_http) is None:
                found.append(Link(project, scene.ref.index, scene.ref.id, url, scene.prompt))
    return found


async def find_links(
    db: Database,
    names: Sequence[str],
    *,
    all_projects: bool,
    shape: Shape,
    store: Store,
    allow_http: bool,
) -> Found:
    """Every provider link in these projects (or all), a batch of documents at a time."""
    found = Found()
    async for batch in _batches(db, names, all_projects):
        documents, failures = await db.read_many(batch)
        found.errors += failures.values()
        for name in batch:
            if name not in documents and name not in failures and not all_projects:
                raise ProjectNotFound(f"project {name} not found")
        for name, raw in documents.items():
            found.projects += 1
            try:
                found.links += foreign_links(name, raw, shape, store, allow_http=allow_http)
            except ImgsaveError as exc:
                found.errors.append(str(exc))
    return found


async def copy_links(
    s: Session,
    links: Sequence[Link],
    *,
    concurrency: int,
    stop: StopSignal,
    reporter: Reporter | None,
) -> Copied:
    """Each link downloaded, kept, and put in its own place (one locked write per project)."""
    done = Copied()
    gate = asyncio.Semaphore(concurrency)
    by_project: dict[str, list[Link]] = defaultdict(list)
    for link in links:
        by_project[link.project].append(link)
    if reporter:
        reporter.start(len(links), f"rehosting {len(links)} links")
    try:
        for project, items in by_project.items():
            ordered = await s.purchases.order(
                [NewPurchase(project, link.ref, n, Mode.COPY, replaces=(link.url,),
                             edit=Edit.REPLACE) for n, link in enumerate(items)]
            )  # fmt: skip
            async with ProjectSaver(s.db, project, s.settings.shape, ledger=s.ledger) as saver:
                await asyncio.gather(
                    *(_copy(s, link, p, saver=saver, gate=gate, stop=stop, done=done,
                            reporter=reporter)
                      for link, p in zip(items, ordered, strict=True))
                )  # fmt: skip
    finally:
        if reporter:
            reporter.finish()
    return done


async def _copy(
    s: Session,
    link: Link,
    p: Purchase,
    *,
    saver: ProjectSaver,
    gate: asyncio.Semaphore,
    stop: StopSignal,
    done: Copied,
    reporter: Reporter | None,
) -> None:
    async with gate:
        if stop.requested:
            await s.purchases.end(p, State.FAILED, "not copied: the run stopped first")
            return
        taken = await s.purchases.take(saver, p, Received(url=link.url))
    ok = taken.outcome is Outcome.ADDED
    if taken.not_kept is not None:
        if taken.not_kept.expired:
            done.expired.append(link)
        else:
            done.errors.append(f"project {link.project}: {link.ref}: {taken.not_kept}")
    elif taken.save_error is not None:
        done.errors.append(f"project {link.project}: {link.ref}: {taken.save_error}")
    elif taken.outcome in (Outcome.ABSENT, Outcome.NO_SCENE):
        done.errors.append(
            f"project {link.project}: {link.ref}: {link.url} changed meanwhile; left as it is"
        )
    done.rehosted += ok
    if reporter:
        reporter.advance(ok=ok)


async def regenerate_links(
    s: Session,
    provider: Provider,
    expired: Sequence[Link],
    *,
    concurrency: int,
    max_images: int | None,
    stop: StopSignal,
    reporter: Reporter | None,
) -> tuple[Tally, int]:
    """A new image bought for each expired link, put in its place; returns the tally and how
    many took a link's place (an answer's further images are appended beside). Only in scenes
    this run can claim, and only for links still dead once they are claimed."""
    total = Tally()
    placed = 0
    budget = max_images
    by_project: dict[str, list[Link]] = defaultdict(list)
    for link in expired:
        by_project[link.project].append(link)
    async with claimed(s.db.connector, s.run, s.settings.claims) as claims:
        means = Means(
            s.db, provider, s.purchases, s.settings.shape, Slots(concurrency), stop, claims
        )
        for project, items in by_project.items():
            if stop.requested or (budget is not None and budget <= 0):
                total.not_requested += len(items)
                continue
            plan = Plan(await links_to_replace(s, project, items, claims, total.errors))
            if budget is not None:
                plan, cut = plan.capped(budget)
                total.not_requested += cut
                budget -= plan.requested
            execution = Execution(means, project, reporter=reporter, edit=Edit.REPLACE)
            tally = await execution.run(plan)
            if claims is not None:
                await claims.release(project)
            placed += tally.saved - tally.extras
            total.merge(tally)
            if tally.fatal:
                break
    return total, placed


async def links_to_replace(
    s: Session, project: str, links: Sequence[Link], claims: Claims | None, errors: list[str]
) -> tuple[Job, ...]:
    """The links of `project` to buy a new image for, decided once their scenes are claimed
    (another run may have replaced them since they were found dead): those still in their
    scene, whose scene has a prompt, that no purchase replaces or is on its way to replace."""
    if claims is not None:
        mine, held = await claims.claim(project, list(dict.fromkeys(link.ref for link in links)))
        if held:
            errors.append(
                f"project {project}: {len(held)} scenes not regenerated: held by another run"
            )
        links = [link for link in links if link.ref in set(mine)]
    # The ledger before the document, as planning.plan_project reads them (it says why).
    replaced = await s.ledger.replaced(project, [link.url for link in links])
    all_scenes = scenes(decode(await s.db.read(project), project=project), s.settings.shape)
    return tuple(
        Job(scene, 1, (link.url,))
        for link in links
        if (scene := find(all_scenes, link.ref)) is not None
        and scene.prompt
        and link.url in scene.urls
        and link.url not in replaced
    )


async def _batches(
    db: Database, names: Sequence[str], all_projects: bool
) -> AsyncIterator[list[str]]:
    if all_projects:
        async for keys in db.project_keys(batch=BATCH):
            yield keys
        return
    named = list(names)
    for start in range(0, len(named), BATCH):
        yield named[start : start + BATCH]
