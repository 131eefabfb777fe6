"""The engine every command that spends money shares: run a plan of provider calls, log each
image durably, save it through the project's batched writer.

Order per image: answer → bytes → put in the store → `image.generated` (permanent URL, key,
sha256) fsynced → locked save → `image.saved` (intake.py has the store half). Provider calls run
under a semaphore; no row lock is held during a network call. When the log stops
taking writes (disk full), no new request starts, every image already in hand is still saved,
and each one the log could not record is kept in `Tally.unlogged` so it is printed, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from imgsave.adapters.imageapi.client import ImageFailed, NotSent, Provider, add_usage
from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.imageapi.wires import Answer, Received
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog
from imgsave.core.documents import Outcome, Scene, SceneRef, Shape
from imgsave.core.result_json import NOT_IN_JSON, fields_json
from imgsave.core.scene_plan import Plan
from imgsave.errors import (
    EXIT_CANNOT_WORK,
    EXIT_FINDINGS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CannotWork,
    LogUnwritable,
    ProviderStopped,
)
from imgsave.operations.claims import Claims
from imgsave.operations.group_commit import ProjectSaver
from imgsave.operations.intake import Intake, NotKept
from imgsave.operations.slots import Slots
from imgsave.operations.stop import StopSignal

EXPIRING = (
    "no store is configured: the provider's image URLs are saved as they are, and such URLs "
    "usually expire within hours; set IMGSAVE_STORE and IMGSAVE_PUBLIC_URL to keep the images "
    "(`imgsave rehost` copies the links saved so far)"
)


class Reporter(Protocol):
    def start(self, total: int, description: str) -> None: ...
    # `requested=False`: the image was never asked for (the run stopped first), not failed.
    def advance(self, *, ok: bool, requested: bool = True) -> None: ...
    def warn(self, message: str) -> None: ...
    def finish(self) -> None: ...


@dataclass
class Tally:
    """What one execution of a plan did; the commands' results are built from it."""

    requested: int = 0
    saved: int = 0
    failed: int = 0
    # The provider answered with a URL the scene already held: paid for, nothing gained.
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    # Why the run stopped early: the image API refused or was unreachable ...
    fatal: str | None = field(default=None, metadata=NOT_IN_JSON)
    # ... or the generation log stopped taking writes.
    log_error: str | None = field(default=None, metadata=NOT_IN_JSON)
    interrupted: bool = False
    transactions: int = 0
    # Images the answers carried (an answer may hold more than the one asked for).
    received: int = 0
    # Paid images whose bytes wait in the spool for `imgsave repair` (the store refused).
    spooled: int = 0
    # Saved as the provider's expiring URL although a store is configured (the download
    # failed): `imgsave rehost` copies them while they still resolve.
    provisional: int = 0
    possibly_billed_retries: int = 0
    # Planned images never asked for: the run stopped, --max-images was reached, or the
    # scene's claim could no longer be vouched for.
    not_requested: int = 0
    # Requests sent and then abandoned at a second Ctrl-C: the provider may have billed them,
    # and their images were never received (so none is in the log, or lost).
    abandoned: int = 0
    # Failed images whose URL is in the log (their save failed): `imgsave repair` restores them.
    failed_in_log: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    # Images the provider refused to make, by its reason (moderation_blocked, SAFETY, ...):
    # failed, not retried.
    refusals: Counter[str] = field(default_factory=Counter)
    # Jobs paid for whose result the provider no longer held when they were polled.
    jobs_lost: int = 0
    saved_by_scene: Counter[int] = field(default_factory=Counter, metadata=NOT_IN_JSON)
    unlogged: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.fatal:
            return EXIT_CANNOT_WORK
        short = self.saved < self.requested
        unfinished = self.spooled or self.provisional
        if self.failed or self.duplicates or self.log_error or unfinished or short:
            return EXIT_FINDINGS
        return EXIT_OK

    def to_json(self) -> dict[str, object]:
        return {**fields_json(self), "stopped": self.fatal or self.log_error}

    def count(self, answer: Answer) -> None:
        self.received += len(answer.images)
        self.possibly_billed_retries += answer.possibly_billed_retries
        add_usage(self.usage, answer.usage)

    def unlogged_lines(self) -> list[str]:
        """One line per paid image the generation log could not record, so it is never lost."""
        return [
            f"NOT IN THE LOG: project {u['project']} scene {u['scene']}"
            + (f" ({u['scene_id']})" if u["scene_id"] else "")
            + (" saved: " if u["saved"] else " NOT SAVED: ")
            + u["url"]
            for u in self.unlogged
        ]


class Execution:
    """One plan for one project, carried out once. `run` returns the tally."""

    def __init__(
        self,
        *,
        db: Database,
        provider: Provider,
        intake: Intake,
        log: RunLog,
        project: str,
        shape: Shape,
        slots: Slots | int,
        stop: StopSignal | None = None,
        reporter: Reporter | None = None,
        claims: Claims | None = None,
        linger: float = 0.0,
        said: set[str] | None = None,
    ):
        """`slots` is the run's shared concurrency bound (or a number, for a run of one
        project); with `claims`, no request starts for a scene the run does not hold;
        `linger` lets a save wait for the project's other answers (group_commit.py); `said` holds
        the run-wide warnings already given, shared by the run's projects."""
        self._db = db
        self._provider = provider
        self._intake = intake
        self._log = log
        self._project = project
        self._shape = shape
        self._slots = Slots(slots) if isinstance(slots, int) else slots
        self._claims = claims
        self._linger = linger
        self._stop = stop or StopSignal()
        self._reporter = reporter
        self._calls: set[asyncio.Future[Answer]] = set()
        self._announced: set[str] = set()
        self._said = set() if said is None else said
        self.tally = Tally()

    async def run(self, plan: Plan) -> Tally:
        self.tally.requested = plan.requested
        if self._reporter:
            self._reporter.start(plan.requested, f"project {self._project}")
        watcher = asyncio.create_task(self._watch_stop())
        try:
            async with ProjectSaver(
                self._db,
                self._project,
                self._shape,
                linger=self._linger,
                expecting=lambda: len(self._calls),
            ) as saver:
                # Image i of a job stands in for the job's i-th replaced URL, if any: one new
                # image supersedes exactly one old one, so a failure leaves the other reported.
                await asyncio.gather(
                    *(
                        self._one(saver, job.scene, job.replaces[i : i + 1])
                        for job in plan.jobs
                        for i in range(job.count)
                    )
                )
            self.tally.transactions = saver.transactions
        finally:
            watcher.cancel()
            if self._reporter:
                self._reporter.finish()
        self.tally.interrupted = (
            self._stop.signalled and self.tally.fatal is None and self.tally.log_error is None
        )
        return self.tally

    async def _one(self, saver: ProjectSaver, scene: Scene, replaces: tuple[str, ...]) -> None:
        answer = await self._request(scene)
        if answer is None:
            return
        self.tally.count(answer)
        for problem in answer.problems:  # entries without an image, beside ones with
            self._note(scene.ref, problem)
        # Every image an answer carries was paid for: each is kept and saved. The first stands
        # in for the replaced URL, if any.
        for n, received in enumerate(answer.images):
            await self._keep_and_save(
                saver, scene, received, replaces if n == 0 else (), answer.job
            )

    async def _keep_and_save(
        self,
        saver: ProjectSaver,
        scene: Scene,
        received: Received,
        replaces: tuple[str, ...],
        job: str | None = None,
    ) -> None:
        try:
            kept = await self._intake.keep(self._project, scene.ref, received, replaces)
        except NotKept as exc:
            self._not_kept(scene.ref, exc)
            return
        except CannotWork as exc:  # not even the spool could take the bytes
            self._stop_run(str(exc))
            return
        url = kept.url
        if kept.provisional:
            self.tally.provisional += 1
            self._note(
                scene.ref,
                f"{kept.provisional}; the provider's URL is saved as it is: run `imgsave "
                "rehost` to copy it into the store while it still resolves",
            )
        if self._intake.store is None and EXPIRING not in self._said:
            self._said.add(EXPIRING)
            if self._reporter:
                self._reporter.warn(EXPIRING)
        fields = {**kept.fields, "job": job} if job else kept.fields
        logged = await self._record_generated(scene, url, replaces, fields)
        try:
            outcome = await saver.save(scene.ref, url)
        except Exception as exc:  # whatever the save hit, the paid URL is reported, not dropped
            self._keep_unlogged(scene.ref, url, logged, saved=False)
            self.tally.failed_in_log += logged
            where = "kept in the log for `imgsave repair`" if logged else "printed below"
            self._failed(scene.ref, f"not saved, {where}: {exc}", url)
            return
        self._keep_unlogged(scene.ref, url, logged, saved=outcome is Outcome.ADDED)
        if outcome is Outcome.NO_SCENE:
            self._failed(scene.ref, "the scene no longer exists; URL not saved", url)
        elif outcome is Outcome.PRESENT:
            self.tally.duplicates += 1
            # `in_scene`: nothing to recover (recovery.py), whoever put it there.
            self._failed(
                scene.ref,
                "the image API answered with a URL the scene already holds",
                url,
                count=False,
                in_scene=True,
            )
        else:
            self.tally.saved += 1
            self.tally.saved_by_scene[scene.ref.index] += 1
            self._write("image.saved", scene.ref, url=url)
            if self._reporter:
                self._reporter.advance(ok=True)

    def _not_kept(self, ref: SceneRef, exc: NotKept) -> None:
        if exc.spooled is None:  # no image to keep (refused bytes, a dead link): it failed
            self._failed(ref, str(exc))
            return
        # Paid, and kept on disk for `imgsave repair`: spooled, not failed.
        self.tally.spooled += 1
        self._write("image.spooled", ref, spool=str(exc.spooled), error=str(exc))
        if exc.fatal:
            self._stop_run(str(exc))
        else:
            self._note(ref, str(exc))
        if self._reporter:
            self._reporter.advance(ok=False)

    def _stop_run(self, reason: str) -> None:
        if self.tally.fatal is None:
            self.tally.fatal = reason
            self.tally.errors.append(reason)
        self._stop.halt()

    def _note(self, ref: SceneRef, message: str) -> None:
        text = f"project {self._project}: {ref}: {message}"
        self.tally.errors.append(text)
        if self._reporter:
            self._reporter.warn(text)

    async def _request(self, scene: Scene) -> Answer | None:
        """The provider's answer for one image of `scene`, or None (failed, stopped, refused)."""
        if scene.prompt is None:  # plans hold prompted scenes only; never spend on None
            self._failed(scene.ref, "the scene has no prompt")
            return None
        async with self._slots.slot(self._project):
            if self._stop.requested or not self._may_start(scene.ref):
                self.tally.not_requested += 1
                if self._reporter:
                    self._reporter.advance(ok=False, requested=False)
                return None
            call = asyncio.ensure_future(
                self._provider.generate(scene.prompt, on_job=partial(self._job_started, scene.ref))
            )
            self._calls.add(call)
            try:
                return await call
            except asyncio.CancelledError:
                if call.cancelled() and self._stop.hard.is_set():
                    # Sent, maybe billed, its answer never awaited: said, not silently dropped.
                    self.tally.abandoned += 1
                    if self._reporter:
                        self._reporter.advance(ok=False)
                    return None
                raise
            except NotSent as exc:  # the run stopped while it waited for its start
                self.tally.possibly_billed_retries += exc.possibly_billed_retries
                self.tally.not_requested += 1
                if self._reporter:
                    self._reporter.advance(ok=False, requested=False)
            except ImageFailed as exc:
                self.tally.possibly_billed_retries += exc.possibly_billed_retries
                if exc.refusal:
                    self.tally.refusals[exc.refusal] += 1
                self.tally.jobs_lost += exc.lost
                # A job that is over is named, so no later run polls it again.
                self._failed(scene.ref, str(exc), **job_fields(exc))
            except ProviderStopped as exc:  # refused (401/403/404) or unreachable
                self.tally.possibly_billed_retries += exc.possibly_billed_retries
                self._stop_run(str(exc))
            finally:
                self._calls.discard(call)
        return None

    def _may_start(self, ref: SceneRef) -> bool:
        if self._claims is not None and not self._claims.holds(self._project, ref):
            self._note_once(
                ref,
                "the scene's claim could not be extended in time (is the database reachable?); "
                "not requested, so that no other host pays for it twice",
            )
            return False
        if not self._slots.spend():
            self._note_once(ref, f"--max-images {self._slots.budget} reached; not requested")
            return False
        return True

    def _note_once(self, ref: SceneRef, message: str) -> None:
        """Noted in this project's errors; said on the terminal once per run."""
        if message in self._announced:
            return
        self._announced.add(message)
        text = f"project {self._project}: {ref}: {message}"
        self.tally.errors.append(text)
        if self._reporter and message not in self._said:
            self._said.add(message)
            self._reporter.warn(text)

    async def _job_started(self, ref: SceneRef, job: RemoteJob) -> None:
        """A paid job, on disk before it is first polled: a run that dies meanwhile leaves it
        for the next run to poll instead of paying again."""
        try:
            await self._log.record(
                "image.requested", project=self._project, scene=ref.index, scene_id=ref.id,
                **job.to_log(),
            )  # fmt: skip
        except LogUnwritable as exc:
            self._log_failed(str(exc))

    async def _record_generated(
        self, scene: Scene, url: str, replaces: tuple[str, ...], fields: dict[str, Any]
    ) -> bool:
        """Durably log a paid image before saving it; False when the log would not take it."""
        try:
            await record_generated(self._log, self._project, scene.ref, url, fields, replaces)
        except LogUnwritable as exc:
            self._log_failed(str(exc))
            return False
        return True

    def _write(self, event: str, ref: SceneRef, **fields: Any) -> None:
        try:
            self._log.write(
                event, project=self._project, scene=ref.index, scene_id=ref.id, **fields
            )
        except LogUnwritable as exc:
            self._log_failed(str(exc))

    def _log_failed(self, message: str) -> None:
        # No new request may start: each would be an image paid for that no log remembers.
        if self.tally.log_error is None:
            self.tally.log_error = message
            self.tally.errors.append(f"{message}; no new images requested")
            if self._reporter:
                self._reporter.warn(self.tally.errors[-1])
        self._stop.halt()

    def _keep_unlogged(self, ref: SceneRef, url: str, logged: bool, *, saved: bool) -> None:
        if logged:
            return
        self.tally.unlogged.append(
            {
                "project": self._project,
                "scene": ref.index,
                "scene_id": ref.id,
                "url": url,
                "saved": saved,
            }
        )

    def _failed(
        self,
        ref: SceneRef,
        message: str,
        url: str | None = None,
        *,
        count: bool = True,
        **fields: Any,
    ) -> None:
        if count:
            self.tally.failed += 1
        text = f"project {self._project}: scene {ref.index}: {message}"
        self.tally.errors.append(text)
        self._write("image.failed", ref, url=url, error=message, **fields)
        if self._reporter:
            # One failing transaction fails every URL in it: say each distinct reason once.
            if message not in self._announced:
                self._announced.add(message)
                self._reporter.warn(text)
            self._reporter.advance(ok=False)

    async def _watch_stop(self) -> None:
        """On a stop, no request goes out any more; on a hard stop (a second Ctrl-C), requests
        still waiting for an answer are abandoned too."""
        await self._stop.soft.wait()
        self._provider.stop_sending()
        await self._stop.hard.wait()
        for call in list(self._calls):
            call.cancel()


def job_fields(exc: ImageFailed) -> dict[str, Any]:
    """What an image.failed record says of the job it ended (nothing when there was none)."""
    if exc.job is None:
        return {}
    return {"job": exc.job, **({"lost": True} if exc.lost else {})}


async def record_generated(
    log: RunLog,
    project: str,
    ref: SceneRef,
    url: str,
    fields: dict[str, Any],
    replaces: tuple[str, ...] = (),
) -> None:
    """`image.generated`, on disk before this returns: a paid image's record, made before the
    save that could fail. `replaces` names the URLs it stands in for (audit reads it)."""
    await log.record(
        "image.generated",
        project=project,
        scene=ref.index,
        scene_id=ref.id,
        url=url,
        **fields,
        **({"replaces": list(replaces)} if replaces else {}),
    )


def finish_log(log: RunLog, tally: Tally, **fields: Any) -> None:
    """run.finished, with why the run stopped; a log that cannot take it is already reported."""
    with contextlib.suppress(LogUnwritable):
        log.write(
            "run.finished",
            requested=tally.requested,
            saved=tally.saved,
            failed=tally.failed,
            duplicates=tally.duplicates,
            received=tally.received,
            spooled=tally.spooled,
            possibly_billed_retries=tally.possibly_billed_retries,
            usage=tally.usage,
            interrupted=tally.interrupted,
            stopped=tally.fatal or tally.log_error,
            **fields,
        )
