"""`imgsave generate`: fill projects' scenes with images, with none lost and none paid twice.

One project, several, or `--all` (every project with a scene short of K): the plan is pure
(genplan.py), the engine carries it out, and fleet.py runs the projects side by side under one
concurrency bound, one pace and, across hosts, claims in the database.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .claims import Claims
from .config import Settings, StoreSettings
from .db import Database
from .document import Shape
from .engine import Reporter
from .errors import UsageError
from .fleet import LINGER, MIN_IN_FLIGHT, Ask, Fleet, listed
from .genlog import RunLog, new_run_id
from .genplan import SceneSelection, parse_scene_selection, plan
from .genresult import GenerateResult, ManyResult
from .interrupt import StopSignal, sigint_stops
from .keeper import Keeper, opened_keeper
from .pace import PaceReport
from .provider import Provider
from .slots import Slots
from .store import Store

if TYPE_CHECKING:
    from .progress import ProgressReporter

__all__ = ["GenerateResult", "ManyResult", "SceneSelection", "parse_scene_selection", "plan"]


async def run(
    settings: Settings,
    projects: str | Sequence[str] = (),
    *,
    all_projects: bool = False,
    images_per_scene: int,
    concurrency: int,
    selection: SceneSelection | None = None,
    force: bool = False,
    max_images: int | None = None,
    strict: bool = False,
    reporter: ProgressReporter | None = None,
) -> GenerateResult | ManyResult:
    """The whole command: open the database, provider and store, claim and generate, close.
    One project named as a string gives that project's result; several, or `--all`, the run's.
    """
    single = isinstance(projects, str)
    names = [projects] if isinstance(projects, str) else list(dict.fromkeys(projects))
    if bool(names) == all_projects:
        raise UsageError("name the projects to generate for, or give --all (not both)")
    stop = StopSignal()
    store = Store.from_settings(settings)
    log_dir = settings.resolved_log_dir()
    run_id = new_run_id()
    async with (
        Provider.from_settings(settings) as provider,
        await Database.from_settings(settings, max_size=4 if single else 6) as db,
        opened_keeper(settings, store, log_dir) as keeper,
    ):
        if store is not None:
            await store.probe()  # before anything is spent
        # One spelling per row, once, before claims, object keys, logs and output: a uuid typed
        # in upper case on one host and listed in lower case by another is one project.
        names = list(dict.fromkeys(db.normalise_key(name) or name for name in names))
        async with _claims(db, run_id, settings) as claims:
            with sigint_stops(stop), RunLog(log_dir, run_id) as log:
                fleet = Fleet(
                    db=db,
                    provider=provider,
                    keeper=keeper,
                    log=log,
                    shape=settings.shape,
                    ask=Ask(images_per_scene, selection, force),
                    slots=Slots(
                        concurrency,
                        budget=max_images,
                        quantum=1 if single else max(1, concurrency // MIN_IN_FLIGHT),
                    ),
                    stop=stop,
                    claims=claims,
                    reporter=(lambda _: reporter)
                    if single or reporter is None
                    else reporter.project,
                    result=lambda name: GenerateResult(project=name, run=run_id, strict=strict),
                    linger=0.0 if single else LINGER,
                    allow_http=settings.allow_http,
                )
                pace = provider.pace.report if provider.pace else lambda: None
                if single:
                    return await _one(fleet, names[0], pace)
                many = ManyResult(run=run_id)
                try:
                    many.projects_not_started = await fleet.run(
                        _sources(db, names, all_projects, images_per_scene, force), many.add
                    )
                finally:
                    if reporter is not None:
                        reporter.finish()
                many.stopped = fleet.fatal or many.stopped
                many.interrupted = stop.signalled
                many.pace = pace()
                return many


@contextlib.asynccontextmanager
async def _claims(db: Database, run_id: str, settings: Settings) -> AsyncIterator[Claims | None]:
    if not settings.claims.enabled:
        yield None
        return
    async with Claims(db, run_id, settings.claims.expiry) as claims:
        yield claims


def _sources(
    db: Database, names: list[str], all_projects: bool, images_per_scene: int, force: bool
) -> AsyncIterator[list[str]]:
    if not all_projects:
        return listed(names)
    # --force asks K more of every scene: every project has work.
    return db.project_keys() if force else db.projects_short_of(images_per_scene)


async def _one(fleet: Fleet, project: str, pace: Callable[[], PaceReport | None]) -> GenerateResult:
    landed: list[GenerateResult] = []
    await fleet.run(listed([project]), landed.append, strict=True)
    result = landed[0]
    result.pace = pace()
    return result


async def generate(
    *,
    db: Database,
    provider: Provider,
    log_dir: Path,
    project: str,
    shape: Shape,
    images_per_scene: int,
    concurrency: int,
    selection: SceneSelection | None = None,
    force: bool = False,
    stop: StopSignal | None = None,
    reporter: Reporter | None = None,
    keeper: Keeper | None = None,
) -> GenerateResult:
    """One project's images on an open database and provider, without claims (the demo and
    the benchmarks). Without a `keeper`, URL answers are saved as the provider's URLs and a
    bytes answer stops the run (there is no store to put it in)."""
    keeper = keeper or Keeper(
        store=None, fetcher=None, log_dir=log_dir, max_image_bytes=StoreSettings().max_image_bytes
    )
    with RunLog(log_dir) as log:
        fleet = Fleet(
            db=db,
            provider=provider,
            keeper=keeper,
            log=log,
            shape=shape,
            ask=Ask(images_per_scene, selection, force),
            slots=Slots(concurrency),
            stop=stop or StopSignal(),
            claims=None,
            reporter=lambda _: reporter,
            result=lambda name: GenerateResult(project=name, run=log.run_id),
        )
        return await _one(fleet, project, lambda: None)
