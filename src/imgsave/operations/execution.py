"""Carrying out one project's plan of synchronous provider calls: its images ordered in the
ledger before any request leaves, each answer taken through the one paid-image sequence
(purchases.py: keep → record → locked save), all of the project's saves through its batched
writer (group_commit.py). Provider calls run under the run's shared slots; no row lock is held
during a network call. When the log stops taking writes (disk full), no new request starts,
every image already in hand is still saved, and each one the log could not record is kept in
`Tally.unlogged` so it is printed, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from imgsave.adapters.imageapi.client import ImageFailed, NotSent, Provider, add_usage
from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.imageapi.wires import Answer
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog
from imgsave.core import events
from imgsave.core.documents import Outcome, Scene, SceneRef, Shape
from imgsave.core.ledger import Edit, Mode, NewPurchase, Purchase, State, unanswered
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
from imgsave.operations.intake import Kept, NotKept
from imgsave.operations.purchases import Purchases, Taken
from imgsave.operations.slots import Slots
from imgsave.operations.stop import StopSignal

EXPIRING = (
    "no store is configured: the provider's image URLs are saved as they are, and such URLs "
    "usually expire within hours; set IMGSAVE_STORE and IMGSAVE_PUBLIC_URL to keep the images "
    "(`imgsave rehost` copies the links saved so far)"
)


ABANDONED = unanswered("abandoned at a second Ctrl-C; the provider may have billed it")
# An answer's images beyond the one asked for get slots of their own, apart from the plan's.
EXTRA_SLOTS = 1000


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
    # Images asked of the image API (one request each, retries aside): what the run paid for,
    # whatever became of them; `requested` is what the plan held.
    sent: int = field(default=0, metadata=NOT_IN_JSON)
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
    # Jobs paid for and still running when the run stopped polling them (poll_timeout): the
    # ledger holds their scenes, and the next run polls them.
    jobs_pending: int = 0
    # Images an answer held beyond the one asked for, saved beside it.
    extras: int = field(default=0, metadata=NOT_IN_JSON)
    saved_by_scene: Counter[int] = field(default_factory=Counter, metadata=NOT_IN_JSON)
    unlogged: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.fatal:
            return EXIT_CANNOT_WORK
        short = self.saved + self.jobs_pending < self.requested
        unfinished = self.spooled or self.provisional
        if self.failed or self.duplicates or self.log_error or unfinished or short:
            return EXIT_FINDINGS
        return EXIT_OK

    def to_json(self) -> dict[str, object]:
        return {**fields_json(self), "stopped": self.fatal or self.log_error}

    def merge(self, other: Tally) -> None:
        """Add another execution's counts (a run of several plans, as rehost's)."""
        for name in (
            "requested",
            "sent",
            "saved",
            "failed",
            "duplicates",
            "received",
            "spooled",
            "provisional",
            "possibly_billed_retries",
            "not_requested",
            "abandoned",
            "failed_in_log",
            "jobs_lost",
            "jobs_pending",
            "extras",
            "transactions",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors
        add_usage(self.usage, other.usage)
        self.refusals.update(other.refusals)
        self.saved_by_scene.update(other.saved_by_scene)
        self.unlogged += other.unlogged
        self.fatal = self.fatal or other.fatal
        self.log_error = self.log_error or other.log_error
        self.interrupted = self.interrupted or other.interrupted

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


@dataclass
class Means:
    """What a run's projects share as they buy: the database, the image API, the purchases
    (ledger and log), the document's shape, the concurrency bound (`slots`), the stop, the
    claims (no request starts for a scene the run does not hold), how long a save may wait for
    a project's other answers (`linger`, group_commit.py), and the warnings already given."""

    db: Database
    provider: Provider
    purchases: Purchases
    shape: Shape
    slots: Slots
    stop: StopSignal = field(default_factory=StopSignal)
    claims: Claims | None = None
    linger: float = 0.0
    said: set[str] = field(default_factory=set)


class Execution:
    """One plan for one project, carried out once. `run` returns the tally."""

    def __init__(
        self,
        means: Means,
        project: str,
        *,
        reporter: Reporter | None = None,
        edit: Edit = Edit.APPEND,
    ):
        """`edit`: each image is appended (generate, repair), or takes the place of the URL it
        replaces (rehost)."""
        self._edit = edit
        self._db = means.db
        self._provider = means.provider
        self._purchases = means.purchases
        self._project = project
        self._shape = means.shape
        self._slots = means.slots
        self._claims = means.claims
        self._linger = means.linger
        self._stop = means.stop
        self._reporter = reporter
        self._calls: set[asyncio.Future[Answer]] = set()
        self._announced: set[str] = set()
        self._said = means.said
        # The rows whose job the provider accepted (their handles are recorded).
        self._jobs_started: set[int] = set()
        self.tally = Tally()

    async def run(self, plan: Plan) -> Tally:
        self.tally.requested = plan.requested
        if self._reporter:
            self._reporter.start(plan.requested, f"project {self._project}")
        watcher = asyncio.create_task(self._watch_stop())
        try:
            # Ordered (committed) before any request leaves: if the database cannot take them,
            # nothing is bought. Image i of a job stands in for the job's i-th replaced URL.
            mode = Mode.JOB if self._provider.job_kind else Mode.SYNC
            wanted = [(job.scene, slot, job.replaces[slot : slot + 1])
                      for job in plan.jobs for slot in range(job.count)]  # fmt: skip
            ordered = await self._purchases.order(
                [NewPurchase(self._project, scene.ref, slot, mode, replaces=replaces,
                             edit=self._edit if replaces else Edit.APPEND)
                 for scene, slot, replaces in wanted]
            )  # fmt: skip
            async with ProjectSaver(
                self._db,
                self._project,
                self._shape,
                ledger=self._purchases.ledger,
                linger=self._linger,
                expecting=lambda: len(self._calls),
            ) as saver:
                await asyncio.gather(
                    *(self._one(saver, w[0], p) for w, p in zip(wanted, ordered, strict=True))
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

    async def _one(self, saver: ProjectSaver, scene: Scene, p: Purchase) -> None:
        answer = await self._request(scene, p)
        if answer is None:
            return
        self.tally.count(answer)
        for problem in answer.problems:  # entries without an image, beside ones with
            self._note(scene.ref, problem)
        # Every image an answer carries was paid for: each is kept and saved. The first is the
        # one asked for; any more get rows of their own.
        for n, received in enumerate(answer.images):
            target = p if n == 0 else await self._purchases.extra(p, p.slot + EXTRA_SLOTS * n)
            try:
                taken = await self._purchases.take(
                    saver, target, received, on_fatal=self._stop_run, job=answer.job
                )
            except CannotWork as exc:  # not even the spool could take the bytes
                self._stop_run(str(exc))
                return
            self._taken(scene.ref, taken)
            self.tally.extras += n > 0 and taken.added

    def _taken(self, ref: SceneRef, taken: Taken) -> None:
        """Count one paid image's fate and say what needs saying."""
        if self._purchases.log_error:
            self._log_failed(self._purchases.log_error)
        if taken.not_kept is not None:
            self._not_kept(ref, taken.not_kept)
            return
        kept = taken.kept
        assert kept is not None
        self._kept(ref, kept)
        if taken.save_error is not None:
            self._keep_unlogged(ref, kept.url, taken.logged, saved=False)
            self.tally.failed_in_log += taken.logged
            where = "kept for `imgsave repair`" if taken.logged else "printed below"
            self._failed(ref, f"not saved, {where}: {taken.save_error}")
            return
        self._keep_unlogged(ref, kept.url, taken.logged, saved=taken.added)
        if taken.outcome is Outcome.NO_SCENE:
            self._failed(ref, "the scene no longer exists; URL not saved")
        elif taken.outcome is Outcome.PRESENT:
            self.tally.duplicates += 1
            self._failed(
                ref, "the image API answered with a URL the scene already holds", count=False
            )
        else:
            self.tally.saved += 1
            self.tally.saved_by_scene[ref.index] += 1
            if self._reporter:
                self._reporter.advance(ok=True)

    def _not_kept(self, ref: SceneRef, exc: NotKept) -> None:
        if exc.spooled is None:  # no image to keep (refused bytes, a dead link): failed
            self._failed(ref, str(exc))
            return
        # Paid, and kept on disk for a later run: spooled, not failed.
        self.tally.spooled += 1
        if exc.fatal:
            self._stop_run(str(exc))
        else:
            self._note(ref, str(exc))
        if self._reporter:
            self._reporter.advance(ok=False)

    def _kept(self, ref: SceneRef, kept: Kept) -> None:
        """What a kept image may need said before its save: a provider's URL it had to keep
        as it is, or (once a run) that without a store such URLs expire."""
        if kept.provisional:
            self.tally.provisional += 1
            self._note(
                ref,
                f"{kept.provisional}; the provider's URL is saved as it is: run `imgsave "
                "rehost` to copy it into the store while it still resolves",
            )
        if self._purchases.intake.store is None and EXPIRING not in self._said:
            self._said.add(EXPIRING)
            if self._reporter:
                self._reporter.warn(EXPIRING)

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

    async def _request(self, scene: Scene, p: Purchase) -> Answer | None:
        """The provider's answer for one image, or None (failed, stopped, refused: its ledger
        row says which)."""
        if scene.prompt is None:  # plans hold prompted scenes only; never spend on None
            await self._purchases.end(p, State.FAILED, "the scene has no prompt")
            self._failed(scene.ref, "the scene has no prompt")
            return None
        async with self._slots.slot(self._project):
            if self._stop.requested or not self._may_start(scene.ref):
                await self._not_requested(p)
                return None
            return await self._call(scene.ref, scene.prompt, p)

    async def _call(self, ref: SceneRef, prompt: str, p: Purchase) -> Answer | None:
        """One request sent and answered; each way it can end without an answer recorded."""

        async def started(job: RemoteJob) -> None:
            await self._job_started(p, job)

        self.tally.sent += 1
        call = asyncio.ensure_future(self._provider.generate(prompt, on_job=started))
        self._calls.add(call)
        try:
            return await call
        except asyncio.CancelledError:
            if call.cancelled() and self._stop.hard.is_set():
                # Sent, maybe billed, its answer never awaited: said, not silently dropped.
                self.tally.abandoned += 1
                await self._purchases.end(p, State.LOST, ABANDONED)
                if self._reporter:
                    self._reporter.advance(ok=False)
                return None
            raise
        except NotSent as exc:  # the run stopped while it waited for its start
            self.tally.possibly_billed_retries += exc.possibly_billed_retries
            await self._not_requested(p)
        except ImageFailed as exc:
            await self._image_failed(ref, p, exc)
        except ProviderStopped as exc:  # refused (401/403/404) or unreachable
            self.tally.possibly_billed_retries += exc.possibly_billed_retries
            if p.id not in self._jobs_started:  # a job accepted stays the ledger's
                await self._purchases.end(p, State.FAILED, str(exc))
            self._stop_run(str(exc))
        finally:
            self._calls.discard(call)
        return None

    async def _image_failed(self, ref: SceneRef, p: Purchase, exc: ImageFailed) -> None:
        self.tally.possibly_billed_retries += exc.possibly_billed_retries
        if exc.job is None and p.id in self._jobs_started:
            # A job still running (or not readable now): paid for and on its way; the ledger
            # holds its scene and the next run polls it, however long it takes.
            self.tally.jobs_pending += 1
            self._note(ref, str(exc))
            if self._reporter:
                self._reporter.advance(ok=False)
            return
        if exc.refusal:
            self.tally.refusals[exc.refusal] += 1
        self.tally.jobs_lost += exc.lost
        state = State.REFUSED if exc.refusal else State.LOST if exc.lost else State.FAILED
        job = {"job": exc.job, **({"lost": True} if exc.lost else {})} if exc.job else {}
        await self._purchases.end(p, state, str(exc), **job)
        self._failed(ref, str(exc))

    async def _not_requested(self, p: Purchase) -> None:
        self.tally.not_requested += 1
        await self._purchases.end(p, State.FAILED, "not requested: the run stopped first")
        if self._reporter:
            self._reporter.advance(ok=False, requested=False)

    def _may_start(self, ref: SceneRef) -> bool:
        if self._purchases.log_error is not None:
            self._log_failed(self._purchases.log_error)
            return False
        if self._claims is not None and not self._claims.holds(self._project, ref):
            self._note_once(
                ref,
                "the scene's claim could not be extended in time (is the database reachable?); "
                "not requested, so that no other host pays for it twice",
            )
            return False
        if not self._slots.spend():
            self._note_once(ref, f"{self._slots.cap} reached; not requested")
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

    async def _job_started(self, p: Purchase, job: RemoteJob) -> None:
        """A paid job, in the ledger and on disk before it is first polled: a run that dies
        meanwhile leaves it for the next run to poll instead of paying again."""
        self._jobs_started.add(p.id)
        await self._purchases.job_started(p, job)
        if self._purchases.log_error:
            self._log_failed(self._purchases.log_error)

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

    def _failed(self, ref: SceneRef, message: str, *, count: bool = True) -> None:
        if count:
            self.tally.failed += 1
        text = f"project {self._project}: scene {ref.index}: {message}"
        self.tally.errors.append(text)
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


def finish_log(log: RunLog, tally: Tally, **fields: Any) -> None:
    """run.finished, with why the run stopped; a log that cannot take it is already reported."""
    with contextlib.suppress(LogUnwritable):
        log.write(
            events.RUN_FINISHED,
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
