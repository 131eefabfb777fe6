"""`imgsave rehost`: rescue documents whose URLs are a provider's expiring links.

Every URL not under the store's public URL is downloaded while it still resolves, stored like a
new image, and replaced in place (same position) in one locked write per project, only where the
old URL is still there. `image.rehosted` logs the new URL with `replaces: [old]`, so audit counts
the old link superseded, not lost. Links that no longer resolve are reported expired; with
`--regenerate`, new images are made for their scenes, each logged as replacing one of them.
A second run finds nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imgsave.adapters.imageapi.client import ImageFailed, Provider, add_usage
from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.imageapi.wires import Received
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog
from imgsave.adapters.storage.object_store import Store
from imgsave.core.documents import Outcome, SceneRef, decode, encode, replace_urls, scenes
from imgsave.core.json_splice import splice_replace
from imgsave.core.result_json import NOT_IN_JSON, fields_json, json_name
from imgsave.core.settings import Settings
from imgsave.core.url_rule import url_problem
from imgsave.errors import (
    EXIT_CANNOT_WORK,
    EXIT_FINDINGS,
    EXIT_OK,
    ImgsaveError,
    LogUnwritable,
    ProjectNotFound,
    ProviderStopped,
    UsageError,
)
from imgsave.operations.execution import Reporter, job_fields, record_generated
from imgsave.operations.intake import Intake, Kept, NotKept, opened_intake
from imgsave.operations.stop import StopSignal, sigint_stops
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console

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
class RehostResult:
    executed: bool
    rehosted: int = 0
    expired: list[Link] = field(default_factory=list)
    regenerated: int = 0
    # Images an answer held beyond the one asked for, kept and appended to their scene.
    added: int = 0
    # What --regenerate spent: retries the provider may have billed, and its token counts.
    possibly_billed_retries: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    # Links left as they were: not yet rehosted (dry run), failed, or expired and not replaced.
    remaining: int = 0
    plan: list[Link] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    run: str | None = None
    fatal: str | None = field(default=None, metadata=json_name("stopped"))
    projects: int = field(default=0, metadata=NOT_IN_JSON)

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return EXIT_CANNOT_WORK
        return EXIT_FINDINGS if self.remaining or self.errors else EXIT_OK

    def stderr_lines(self) -> list[str]:
        return [self.fatal] if self.fatal else []

    def to_json(self) -> dict[str, object]:
        return fields_json(self)

    def render(self, console: Console) -> None:
        for error in self.errors:
            console.print(f"[yellow]warning:[/] {shown(error)}")
        if not self.executed:
            console.print(
                f"rehost plan: {_count(len(self.plan), 'provider link')} in "
                f"{_count(self.projects, 'project')} would be copied into the store"
                + (" (run again with --execute)" if self.plan else "")
            )
            return
        run = f" (run {self.run})" if self.run else ""
        console.print(
            shown(
                f"rehost: {self.rehosted} links copied into the store and replaced, "
                f"{len(self.expired)} expired, {self.regenerated} regenerated, "
                f"{self.remaining} left{run}"
            )
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def foreign_links(project: str, raw: str | None, settings: Settings, store: Store) -> list[Link]:
    """The URLs of a document that are not the store's (and that the URL rule accepts)."""
    found = []
    for scene in scenes(decode(raw, project=project), settings.shape, project=project):
        # A link held twice is one image: one copy takes its first place (document.replace_urls).
        for url in dict.fromkeys(scene.urls):
            if not store.owns(url) and url_problem(url, allow_http=settings.allow_http) is None:
                found.append(Link(project, scene.ref.index, scene.ref.id, url, scene.prompt))
    return found


async def run_rehost(
    settings: Settings,
    projects: list[str],
    *,
    all_projects: bool,
    execute: bool,
    regenerate: bool = False,
    concurrency: int = 8,
    reporter: Reporter | None = None,
) -> RehostResult:
    if bool(projects) == all_projects:
        raise UsageError("name the projects to rehost, or give --all")
    store = Store.from_settings(settings)
    if store is None:
        raise UsageError(
            "rehost copies images into your store: set IMGSAVE_STORE (s3://BUCKET/PREFIX or "
            "file:///DIR) and IMGSAVE_PUBLIC_URL"
        )
    log_dir = settings.resolved_log_dir()
    result = RehostResult(executed=execute)
    async with await Database.from_settings(settings) as db:
        links: list[Link] = []
        async for batch in _batches(db, projects, all_projects):
            documents, failures = await db.read_many(batch)
            result.errors += failures.values()
            for name in batch:
                if name not in documents and name not in failures and not all_projects:
                    raise ProjectNotFound(f"project {name} not found")
            for name, raw in documents.items():
                result.projects += 1
                try:
                    links += foreign_links(name, raw, settings, store)
                except ImgsaveError as exc:
                    result.errors.append(str(exc))
        result.plan = links
        result.remaining = len(links)
        if not execute or not links:
            return result
        await store.probe()
        async with opened_intake(settings, store, log_dir) as intake:
            with RunLog(log_dir) as log, sigint_stops(stop := StopSignal()):
                result.run = log.run_id
                log.write("run.started", command="rehost", mode="replace", links=len(links))
                rehost = Rehosting(db, intake, log, settings, result, concurrency, stop, reporter)
                await rehost.run(links, rehost.download)
                if regenerate and result.expired and not stop.requested:
                    async with Provider.from_settings(settings) as provider:
                        rehost.provider = provider
                        await rehost.run(list(result.expired), rehost.generate)
                        await rehost.save_extras()
                result.remaining = len(links) - result.rehosted - result.regenerated
                with contextlib.suppress(LogUnwritable):  # the document is already right
                    log.write(
                        "run.finished",
                        command="rehost",
                        rehosted=result.rehosted,
                        expired=len(result.expired),
                        regenerated=result.regenerated,
                        remaining=result.remaining,
                        interrupted=stop.requested,
                    )
    return result


class Rehosting:
    """One rehost run: get an image for each link (downloaded, or newly generated for a dead
    one), keep it in the store, then replace the links in place, one locked write per project."""

    def __init__(
        self,
        db: Database,
        intake: Intake,
        log: RunLog,
        settings: Settings,
        result: RehostResult,
        concurrency: int,
        stop: StopSignal,
        reporter: Reporter | None,
    ):
        self._reporter = reporter
        self._db = db
        self._intake = intake
        self._log = log
        self._settings = settings
        self._result = result
        self._semaphore = asyncio.Semaphore(concurrency)
        self._stop = stop
        self.provider: Provider | None = None
        self._extras: dict[str, list[tuple[SceneRef, Received, str | None]]] = defaultdict(list)
        # The job (Replicate, fal, BFL) each regenerated link's image came from, named in its
        # record so no later run polls it again.
        self._jobs: dict[str, str] = {}

    async def download(self, link: Link) -> Received:
        return Received(url=link.url)

    async def generate(self, link: Link) -> Received:
        if self.provider is None or link.prompt is None:
            raise NotKept("the scene has no prompt to regenerate from")

        async def job_started(job: RemoteJob) -> None:
            await self._log.record(
                "image.requested", project=link.project, scene=link.scene,
                scene_id=link.scene_id, **job.to_log(),
            )  # fmt: skip

        try:
            answer = await self.provider.generate(link.prompt, on_job=job_started)
        except ImageFailed as exc:
            self._result.possibly_billed_retries += exc.possibly_billed_retries
            if exc.job is not None:
                self._log.write(
                    "image.failed", project=link.project, scene=link.scene,
                    scene_id=link.scene_id, error=str(exc), **job_fields(exc),
                )  # fmt: skip
            raise NotKept(str(exc)) from None
        except ProviderStopped as exc:  # refused or unreachable: no further link is tried
            self._result.possibly_billed_retries += exc.possibly_billed_retries
            self._result.fatal = self._result.fatal or str(exc)
            self._stop.halt()
            raise NotKept(str(exc), fatal=True) from None
        self._result.possibly_billed_retries += answer.possibly_billed_retries
        add_usage(self._result.usage, answer.usage)
        # The first takes the dead link's place; any more were paid for too, and are added.
        self._extras[link.project] += [(link.ref, x, answer.job) for x in answer.images[1:]]
        if answer.job:
            self._jobs[link.url] = answer.job
        return answer.images[0]

    async def save_extras(self) -> None:
        """Images an answer held beyond the one asked for: kept, logged, appended like any
        generated image."""
        from imgsave.operations.group_commit import ProjectSaver

        for project, extras in self._extras.items():
            async with ProjectSaver(self._db, project, self._settings.shape) as saver:
                for ref, received, job in extras:
                    try:
                        image = await self._intake.keep(project, ref, received)
                        fields = {**image.fields, "job": job} if job else image.fields
                        await record_generated(self._log, project, ref, image.url, fields)
                        outcome = await saver.save(ref, image.url)
                    except (NotKept, ImgsaveError) as exc:
                        self._result.errors.append(f"project {project}: {ref}: {exc}")
                        continue
                    if outcome is Outcome.ADDED:
                        self._result.added += 1
                        self._log.write(
                            "image.saved", project=project, scene=ref.index, scene_id=ref.id,
                            url=image.url,
                        )  # fmt: skip
        self._extras.clear()

    async def run(self, links: list[Link], source: Callable[[Link], Awaitable[Received]]) -> None:
        regenerating = source == self.generate
        kept: dict[str, list[tuple[Link, Kept]]] = defaultdict(list)
        if self._reporter:
            verb = "regenerating" if regenerating else "rehosting"
            self._reporter.start(len(links), f"{verb} {len(links)} links")

        async def one(link: Link) -> None:
            async with self._semaphore:
                if self._stop.requested:
                    return
                try:
                    received = await source(link)
                    image = await self._intake.keep(link.project, link.ref, received)
                except NotKept as exc:
                    if exc.expired:
                        self._result.expired.append(link)
                    elif not exc.fatal:  # a fatal one is the run's `stopped`, said once
                        self._result.errors.append(f"project {link.project}: {link.ref}: {exc}")
                    if self._reporter:
                        self._reporter.advance(ok=False)
                    return
                if image.provisional:  # not in the store: the link stays as it is, for later
                    self._result.errors.append(
                        f"project {link.project}: {link.ref}: {image.provisional}; left as it is"
                    )
                    if self._reporter:
                        self._reporter.advance(ok=False)
                    return
                kept[link.project].append((link, image))
                if self._reporter:
                    self._reporter.advance(ok=True)

        try:
            await asyncio.gather(*(one(link) for link in links))
        finally:
            if self._reporter:
                self._reporter.finish()
        for project, items in kept.items():
            await self._replace(project, items, regenerating)

    async def _replace(
        self, project: str, items: list[tuple[Link, Kept]], regenerating: bool
    ) -> None:
        shape = self._settings.shape
        replacements = [(link.ref, link.url, image.url) for link, image in items]

        def change(raw: str | None) -> tuple[str | None, tuple[Outcome, ...]]:
            document = decode(raw, project=project)
            edit = replace_urls(document, shape, replacements, project=project)
            if not edit.changed:
                return None, edit.outcomes
            if self._db.keeps_text and raw is not None:
                text = splice_replace(
                    raw,
                    scenes_key=shape.scenes_key,
                    urls_key=shape.urls_key,
                    identity_keys=(shape.id_key, shape.index_key),
                    replaced=edit.replaced,
                    double_encoded=document.double_encoded,
                    project=project,
                )
                return text, edit.outcomes
            return encode(edit.document), edit.outcomes

        # Before the commit, fsynced: a run killed between the commit and a later log line
        # would leave the copy unexplained and its link "lost", and repair would put the link
        # back beside its copy. A commit that then fails or finds the link gone is harmless:
        # audit counts a copy whose link still holds its place as present
        # (log_history.SceneHistory.partners).
        try:
            for link, image in items:
                await self._log.record(
                    "image.rehosted",
                    project=project,
                    scene=link.scene,
                    scene_id=link.scene_id,
                    url=image.url,
                    replaces=[link.url],
                    regenerated=regenerating,
                    **image.fields,
                    **({"job": self._jobs[link.url]} if link.url in self._jobs else {}),
                )
            outcomes = await self._db.locked_update(project, change)
        except ImgsaveError as exc:
            self._result.errors.append(f"{exc} ({len(items)} links not replaced)")
            return
        for (link, _), outcome in zip(items, outcomes, strict=True):
            if outcome is Outcome.ABSENT or outcome is Outcome.NO_SCENE:
                self._result.errors.append(
                    f"project {project}: {link.ref}: {link.url} changed meanwhile; left as it is"
                )
            elif outcome is Outcome.ADDED:
                if regenerating:
                    self._result.regenerated += 1
                else:
                    self._result.rehosted += 1


async def _batches(
    db: Database, projects: list[str], all_projects: bool
) -> AsyncIterator[list[str]]:
    if all_projects:
        async for keys in db.project_keys(batch=BATCH):
            yield keys
        return
    # As generate does: one spelling per row, before keys, logs and output.
    named = list(dict.fromkeys(db.normalise_key(name) or name for name in projects))
    for start in range(0, len(named), BATCH):
        yield named[start : start + BATCH]
