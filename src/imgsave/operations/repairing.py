"""`imgsave repair --execute`: after settling what this database paid for (settle.py), put back
what audit found lost, through the same locked, append-if-absent save, and, with --regenerate,
buy new images for scenes left short (claimed first, as generate does). Stale and orphaned URLs
are never written."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field

from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.runlog.host_lock import exclusive
from imgsave.adapters.runlog.reader import LogQuery
from imgsave.core import events
from imgsave.core.documents import Outcome, SceneRef, decode, find, scenes
from imgsave.core.ledger import on_their_way, scene_key
from imgsave.core.result_json import NOT_IN_JSON, json_name
from imgsave.core.scene_plan import Job, Plan
from imgsave.core.settings import Settings
from imgsave.errors import ImgsaveError, LogUnwritable
from imgsave.operations.auditing import Sources, audited, opened_sources
from imgsave.operations.batches import Batches, opened_api
from imgsave.operations.claims import Claims, claimed
from imgsave.operations.execution import Execution, Means, Reporter, Tally
from imgsave.operations.generating import Targets, settle
from imgsave.operations.group_commit import ProjectSaver, Saving
from imgsave.operations.lost_images import AuditReport, Finding
from imgsave.operations.session import Session, opened
from imgsave.operations.settled import Settled
from imgsave.operations.slots import Slots
from imgsave.operations.stop import StopSignal, sigint_stops

SceneCounts = dict[tuple[str, int], int]


@dataclass
class Repaired:
    """What an executing repair did, in its JSON."""

    repaired: int = 0
    # Spooled images put in the store and saved.
    uploaded: int = 0
    # Images of finished batches no run had collected, saved now.
    collected: int = 0
    # Jobs an earlier run paid for and never saw end, polled now; their images saved.
    jobs_resumed: int = 0
    resumed: int = 0
    regenerated: int = 0
    remaining: int = 0
    errors: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    run: str | None = None
    # Why regeneration stopped (the image API refused or could not be reached).
    fatal: str | None = field(default=None, metadata=json_name("stopped"))
    # What --regenerate spent: retries the provider may have billed, and its token counts.
    possibly_billed_retries: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    # Images --regenerate asked of the image API (what it bought: `cost` in the JSON).
    sent: int = field(default=0, metadata=NOT_IN_JSON)
    # Settling found these paid and lost, and could not read these APIs (exit 3).
    lost_now: int = 0
    unreadable: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)

    def absorb(self, settled: Settled) -> None:
        self.uploaded = settled.uploaded
        self.collected = settled.batch_images
        self.jobs_resumed = settled.jobs_resumed
        self.resumed = settled.job_images
        self.lost_now = settled.lost
        self.unreadable = settled.unreadable
        self.errors += settled.errors
        # Saved by their known URLs: what a run left stored, or a copy a rehost left.
        self.repaired = (
            settled.recovered - settled.uploaded - settled.batch_images - settled.job_images
        )


@dataclass(frozen=True)
class Regeneration:
    """`--regenerate`: new images bought for the scenes a repair leaves short, `concurrency`
    requests at a time, at most `max_images` in all (None: no cap)."""

    concurrency: int = 8
    max_images: int | None = None


async def run(
    settings: Settings,
    query: LogQuery,
    done: Repaired | None,
    *,
    regenerate: Regeneration | None,
    check_urls: bool,
    reporter: Reporter | None,
) -> AuditReport:
    """The audit's report; with `done` (an executing repair), the repair itself, counted in
    `done`, and with `regenerate`, new images for the scenes it leaves short. Only one
    executing repair runs on a host at a time."""
    if done is None:
        async with opened_sources(settings) as sources:
            return await audited(settings, sources, query, check_urls=check_urls)
    lock = settings.resolved_log_dir() / "repair.lock"
    # One database pool, store and Batch API client for the audit and the repair that follows.
    with exclusive(lock, "imgsave repair"):
        async with opened(settings, probe=False) as s, opened_api(settings) as api:
            sources = Sources(s.db, s.store, api)
            report = await audited(settings, sources, query, check_urls=check_urls)
            wanted = needs_provider(settings, report, regenerate=regenerate is not None)
            provider = Provider.from_settings(settings) if wanted else None
            async with provider if provider is not None else nullcontext() as provider:
                if s.store is not None and (provider is not None or report.spooled):
                    await s.store.probe()
                batches = Batches(api=api, db=s.db, purchases=s.purchases,
                                  shape=settings.shape) if api else None  # fmt: skip
                await repair(
                    s, report, done, provider=provider, batches=batches, regenerate=regenerate,
                    reporter=reporter,
                )  # fmt: skip
    return report


def needs_provider(settings: Settings, report: AuditReport, *, regenerate: bool) -> bool:
    """Whether the image API may be called (and its settings checked): to regenerate, or to
    poll the jobs of the configured kind that are still pending."""
    kind = settings.provider.kind
    pending = any(j["state"] == "pending" and j["kind"] == kind for j in report.jobs)
    return bool(regenerate and (report.expired or report.empty_scenes)) or pending


async def repair(
    s: Session,
    report: AuditReport,
    done: Repaired,
    *,
    provider: Provider | None,
    batches: Batches | None,
    regenerate: Regeneration | None,
    reporter: Reporter | None,
) -> None:
    """Settle what this database paid for, restore what the audit found lost (and settling did
    not already put back), and, with `regenerate`, buy new images for scenes left short."""
    done.run = s.run
    everything = Targets((), all_projects=True)
    settled = await settle(s, everything, provider, batches)
    done.absorb(settled)
    wanted = regenerate is not None and (report.expired or report.empty_scenes)
    if not (report.lost or wanted or report.spooled or report.uncollected):
        # Cron runs this every few minutes: nothing to do leaves no log behind.
        done.remaining = _waiting(report, done)
        return
    try:
        s.log.write(events.RUN_STARTED, command="repair", mode="append", lost=len(report.lost),
                    expired=len(report.expired))  # fmt: skip
    except LogUnwritable as exc:
        done.errors.append(f"{exc}; nothing repaired")
        done.remaining = remaining(report, {}, {}, empty_scenes=regenerate is not None)
        return
    # What settling just put back is not restored a second time.
    lost = [f for f in report.lost if f.url not in settled.saved_urls]
    restored = await restore(s, lost)
    done.errors += restored.errors
    regenerated: SceneCounts = {}
    if provider is not None and regenerate is not None:
        stop = StopSignal()
        with sigint_stops(stop):
            async with claimed(s.db.connector, s.run, s.settings.claims) as claims:
                regenerated, tally = await regenerate_short(
                    s, provider, report, claims=claims, regeneration=regenerate, stop=stop,
                    reporter=reporter,
                )  # fmt: skip
        done.errors += [e for e in tally.errors if e != tally.fatal]
        done.possibly_billed_retries = tally.possibly_billed_retries
        done.usage = tally.usage
        done.sent = tally.sent
        done.fatal = tally.fatal
    done.repaired += sum(restored.by_scene.values())
    done.regenerated = sum(regenerated.values())
    back = _with_settled(restored.by_scene, report, settled.saved_urls)
    done.remaining = remaining(report, back, regenerated, empty_scenes=regenerate is not None)
    done.remaining += _waiting(report, done)
    with contextlib.suppress(LogUnwritable):  # already reported by the write that failed first
        s.log.write(
            events.RUN_FINISHED, command="repair", repaired=done.repaired,
            regenerated=done.regenerated, remaining=done.remaining, stopped=done.fatal,
        )  # fmt: skip


def _waiting(report: AuditReport, done: Repaired) -> int:
    """Spooled images not uploaded, and images of finished batches not collected."""
    return max(0, report.spooled - done.uploaded) + max(0, report.uncollected - done.collected)


def _with_settled(restored: SceneCounts, report: AuditReport, saved: set[str]) -> SceneCounts:
    """What came back, scene by scene: restored now, or saved by settling just before."""
    counts = dict(restored)
    for finding in report.lost:
        if finding.url in saved:
            key = (finding.project, finding.scene)
            counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass
class Restored:
    by_scene: SceneCounts = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def restore(s: Session, findings: list[Finding], *, projects_at_once: int = 4) -> Restored:
    """Append every lost URL, one locked transaction per project; image.repaired for each."""
    by_project: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        by_project[finding.project].append(finding)
    done = Restored(defaultdict(int))
    gate = asyncio.Semaphore(projects_at_once)

    async def one(project: str, items: list[Finding]) -> None:
        async with gate:
            try:
                async with ProjectSaver(s.db, project, s.settings.shape) as saver:
                    outcomes = await saver.save_many(
                        [Saving(SceneRef(f.scene, f.scene_id), f.url) for f in items]
                    )
            except Exception as exc:  # one project's failure must not stop the others
                done.errors.append(f"{_one_line(exc)} ({len(items)} URLs not restored)")
                return
        for finding, outcome in zip(items, outcomes, strict=True):
            if outcome is Outcome.NO_SCENE:
                done.errors.append(f"project {project}: scene {finding.scene} no longer exists")
                continue
            done.by_scene[(project, finding.scene)] += 1
            if outcome is Outcome.ADDED:
                try:
                    s.log.write(
                        events.IMAGE_REPAIRED, project=project, scene=finding.scene,
                        scene_id=finding.scene_id, url=finding.url,
                    )  # fmt: skip
                except LogUnwritable as exc:
                    # Saved all the same; the image was recorded when it was generated.
                    if str(exc) not in done.errors:
                        done.errors.append(str(exc))

    await asyncio.gather(*(one(p, f) for p, f in by_project.items()))
    return done


def remaining(
    report: AuditReport,
    restored: SceneCounts,
    regenerated: SceneCounts,
    *,
    empty_scenes: bool = False,
) -> int:
    """Images still missing, scene by scene: what was lost, less what came back or was replaced
    (with `empty_scenes`, each never-logged empty scene --regenerate was asked to fill counts)."""
    missing: dict[tuple[str, int], int] = defaultdict(int)
    for finding in (*report.lost, *report.expired):
        missing[(finding.project, finding.scene)] += 1
    if empty_scenes:
        for project, ref in report.empty_scenes:
            missing[(project, ref.index)] += 1
    return sum(
        max(0, count - restored.get(key, 0) - regenerated.get(key, 0))
        for key, count in missing.items()
    )


async def regenerate_short(
    s: Session,
    provider: Provider,
    report: AuditReport,
    *,
    claims: Claims | None,
    regeneration: Regeneration,
    stop: StopSignal,
    reporter: Reporter | None,
) -> tuple[SceneCounts, Tally]:
    """New images for scenes left short: expired URLs that cannot come back (each new image
    recorded as replacing one of them), and scenes that hold nothing and were never logged.
    Only scenes this run can claim: one waiting in a batch, or being generated now, is being
    paid for already. At most `regeneration.max_images` in all."""
    regenerated: SceneCounts = {}
    total = Tally()
    budget = regeneration.max_images
    slots = Slots(regeneration.concurrency)
    means = Means(s.db, provider, s.purchases, s.settings.shape, slots, stop, claims)
    for project, by_scene in _short_scenes(report).items():
        if stop.requested or (budget is not None and budget <= 0):
            break
        jobs = await _jobs(s, project, by_scene, claims, total.errors)
        if jobs is None:
            continue
        plan = Plan(jobs)
        if budget is not None:
            plan, cut = plan.capped(budget)
            total.not_requested += cut
            budget -= plan.requested
        execution = Execution(means, project, reporter=reporter)
        tally = await execution.run(plan)
        if claims is not None:
            await claims.release(project)
        total.merge(tally)
        for index, saved in tally.saved_by_scene.items():
            regenerated[(project, index)] = saved
        if tally.fatal or tally.log_error:
            break
    return regenerated, total


def _short_scenes(report: AuditReport) -> dict[str, dict[SceneRef, list[str | None]]]:
    """Project by project, scene by scene, an entry for each image to buy: the expired URL it
    replaces, or None for an image an empty scene lacks."""
    wanted: dict[str, dict[SceneRef, list[str | None]]] = defaultdict(lambda: defaultdict(list))
    for finding in report.expired:
        wanted[finding.project][SceneRef(finding.scene, finding.scene_id)].append(finding.url)
    for project, ref in report.empty_scenes:
        wanted[project][ref].append(None)
    return wanted


async def _jobs(
    s: Session,
    project: str,
    by_scene: dict[SceneRef, list[str | None]],
    claims: Claims | None,
    errors: list[str],
) -> tuple[Job, ...] | None:
    """What `project` may have bought for it now, read once its scenes are claimed by this run
    (the audit was read before, and another host may have bought them since): its scenes that
    still exist, have a prompt and still lack the image (a dead link no purchase replaces yet,
    an empty scene still empty), less those whose images are on their way already; None when
    its document cannot be read. What is left out is said in `errors`."""
    refs = list(by_scene)
    if claims is not None:
        mine, held = await claims.claim(project, refs)
        if held:
            errors.append(
                f"project {project}: {len(held)} scenes not regenerated: held by another "
                "run (a batch waiting, or a generate in progress)"
            )
        refs = [ref for ref in refs if ref in set(mine)]
        if not refs:
            return ()
    # The ledger before the document, as planning.plan_project reads them (it says why).
    pending = on_their_way(await s.ledger.unresolved([project]))
    dead = [url for ref in refs for url in by_scene[ref] if url is not None]
    replaced = await s.ledger.replaced(project, dead)
    try:
        all_scenes = scenes(
            decode(await s.db.read(project), project=project), s.settings.shape,
            project=project,
        )  # fmt: skip
    except ImgsaveError as exc:
        errors.append(f"{exc} (not regenerated)")
        return None
    jobs = []
    for ref in refs:
        scene = find(all_scenes, ref)
        if scene is None or not scene.prompt:
            continue
        wanted = [u for u in by_scene[ref] if (u not in replaced if u else not scene.urls)]
        if wanted:
            jobs.append(Job(scene, len(wanted), tuple(u for u in wanted if u is not None)))
    # A scene a batch or a job is paying for already is not bought again.
    waiting = [job for job in jobs if pending.get(scene_key(job.scene.ref))]
    if waiting:
        errors.append(
            f"project {project}: {len(waiting)} scenes not regenerated: their images are on "
            "their way (a batch or a job is paying for them)"
        )
    return tuple(job for job in jobs if job not in waiting)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
