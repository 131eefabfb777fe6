"""Generating for many projects in one run: which projects are in flight, and each one's course.

A project's course: read and plan it; claim the planned scenes (claims.py); read it again, now
that no other run can start on them, and plan again (another host may have filled them
between the first read and the claim); carry the plan out with its own batched writer; release
the claims. Every project shares the run's slots (the concurrency bound, handed out in turn),
its pace (in the provider), its log and its stop.

Projects are let in while the slots have too little queued to stay busy, and always at least
`MIN_IN_FLIGHT` of them, so a project with thousands of images cannot keep the rest waiting.
Only the projects in flight are in memory; a finished one leaves its result, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog
from imgsave.core.documents import SceneRef, Shape, decode, scenes
from imgsave.core.scene_plan import Plan, SceneSelection, plan
from imgsave.errors import ClaimsUnavailable, DatabaseUnavailable, ImgsaveError, LogUnwritable
from imgsave.operations.claims import Claims, Held, held_lines, stalled
from imgsave.operations.execution import Execution, Reporter, Tally, finish_log
from imgsave.operations.intake import Intake
from imgsave.operations.job_resume import Resumed, resume_jobs
from imgsave.operations.recovery import (
    SceneKey,
    Unsaved,
    job_ledger,
    save_recovered,
    unsaved_in_log,
)
from imgsave.operations.slots import Slots
from imgsave.operations.stop import StopSignal

# Projects always in flight (when there are that many): the fairness floor.
MIN_IN_FLIGHT = 4
# Projects being read, planned and claimed at once, ahead of need.
PREPARING = 4
# How often admission looks again while the slots are busy enough.
ADMIT_POLL = 0.02
# How long a project's save may wait for its other answers when projects share the slots.
LINGER = 0.05


class ProjectResult(Protocol):
    """What the scheduler fills in for each project: generate's result has these (and says
    them); the scheduler needs nothing else of it."""

    tally: Tally
    skipped_scenes: list[int]
    unprompted_scenes: list[int]
    held_scenes: list[int]
    stalled_scenes: list[int]
    recovered: int
    # Jobs an earlier run paid for and this run polled again (their images are in recovered).
    jobs_resumed: int
    log_path: str | None

    def failure(self, exc: ImgsaveError) -> None: ...


R = TypeVar("R", bound=ProjectResult)


@dataclass(frozen=True)
class Ask:
    """What the run asks of every project."""

    images_per_scene: int
    selection: SceneSelection | None
    force: bool


class Scheduler(Generic[R]):
    def __init__(
        self,
        *,
        db: Database,
        provider: Provider,
        intake: Intake,
        log: RunLog,
        shape: Shape,
        ask: Ask,
        slots: Slots,
        stop: StopSignal,
        claims: Claims | None,
        reporter: Callable[[str], Reporter | None],
        result: Callable[[str], R],
        linger: float = 0.0,
        allow_http: bool = False,
    ):
        self._db = db
        self._provider = provider
        self._intake = intake
        self._log = log
        self._shape = shape
        self._ask = ask
        self._slots = slots
        self._stop = stop
        self._claims = claims
        self._reporter = reporter
        self._result = result
        self._linger = linger
        self._allow_http = allow_http
        # What this host's log says was paid for and never saved; read once, when first needed.
        self._unsaved: asyncio.Task[Unsaved] | None = None
        # Jobs this host's log says were paid for and never ended; read once, when first needed.
        self._pending: asyncio.Task[dict[str, list[tuple[SceneKey, RemoteJob]]]] | None = None
        self._preparing = 0
        self._said: set[str] = set()  # warnings given once per run, whichever project met them
        # Why the whole run stopped (the database went away), if it did.
        self.fatal: str | None = None

    async def run(
        self,
        batches: AsyncIterator[list[str]],
        landed: Callable[[R], None],
        *,
        strict: bool = False,
    ) -> int:
        """Carry out every project `batches` names, handing each result to `landed` as it
        finishes. Returns how many named projects were never started (the run stopped or
        --max-images was reached first). `strict`: a project that cannot be read raises
        instead of being reported (a run of one project)."""
        in_flight: set[asyncio.Task[R]] = set()
        not_started = 0

        def done(task: asyncio.Task[R]) -> None:
            in_flight.discard(task)
            if not task.cancelled() and task.exception() is None:
                landed(task.result())

        try:
            async for names in batches:
                for name in names:
                    if self._stop.requested or self._slots.exhausted:
                        if self._stop.signalled:
                            break
                        not_started += 1  # counted, so the summary can say what is left
                        continue
                    while in_flight and not self._room(len(in_flight)):
                        await asyncio.wait(
                            in_flight, timeout=ADMIT_POLL, return_when=asyncio.FIRST_COMPLETED
                        )
                    task = asyncio.create_task(self.project(name, strict=strict))
                    task.add_done_callback(done)
                    in_flight.add(task)
                if self._stop.signalled:
                    break
        finally:
            # Projects in flight finish (their saves too) whatever stopped the admission.
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors and not isinstance(errors[0], asyncio.CancelledError):
                raise errors[0]
        return not_started

    def _room(self, in_flight: int) -> bool:
        if in_flight < MIN_IN_FLIGHT:
            return True
        concurrency = self._slots.concurrency
        busy = self._slots.waiting >= concurrency
        return not busy and self._preparing < PREPARING and in_flight < 4 * concurrency

    async def project(self, name: str, *, strict: bool = False) -> R:
        result = self._result(name)
        self._preparing += 1
        try:
            the_plan, held = await self._prepare(name, result, every_selected=strict)
        except ImgsaveError as exc:
            self._failed(result, exc, strict)
            return result
        finally:
            self._preparing -= 1
        result.skipped_scenes = list(the_plan.skipped_scenes)
        result.unprompted_scenes = list(the_plan.unprompted_scenes)
        result.held_scenes = sorted(h.ref.index for h in held)
        expiry = self._claims.expiry if self._claims else 0.0
        result.stalled_scenes = sorted(h.ref.index for h in stalled(held, expiry))
        reporter = self._reporter(name)
        for line in held_lines(name, held, expiry) + unprompted_lines(
            name, the_plan.unprompted_scenes
        ):
            result.tally.errors.append(line)
            if reporter:
                reporter.warn(line)
        try:
            if the_plan.jobs:  # else nothing to spend, nothing to record
                await self._carry_out(name, the_plan, result, reporter)
        except ImgsaveError as exc:  # the log would not take run.started
            self._failed(result, exc, strict)
        finally:
            if self._claims is not None:
                await self._claims.release(name)
        return result

    def _failed(self, result: R, exc: ImgsaveError, strict: bool) -> None:
        if strict:
            raise exc
        run_wide = DatabaseUnavailable | LogUnwritable | ClaimsUnavailable
        if isinstance(exc, run_wide) and self.fatal is None:
            # Every other project would meet the same wall: the run stops.
            self.fatal = str(exc)
            self._stop.halt()
        result.failure(exc)

    async def _prepare(
        self, name: str, result: R, *, every_selected: bool
    ) -> tuple[Plan, list[Held]]:
        """The plan for the scenes this run holds, from the document as it is once held, after
        what earlier runs paid for and never saved is saved (recovery.py)."""

        async def planned(mine: set[SceneRef] | None = None) -> Plan:
            found = plan(
                scenes(decode(await self._db.read(name), project=name), self._shape, project=name),
                self._ask.images_per_scene,
                selection=self._ask.selection,
                force=self._ask.force,
                project=name,
                every_selected=every_selected,
            )
            if mine is None:
                return found
            jobs = tuple(job for job in found.jobs if job.scene.ref in mine)
            return Plan(jobs, found.skipped_scenes, found.unprompted_scenes)

        first = await planned()
        if not first.jobs:
            return first, []
        held: list[Held] = []
        mine = None
        if self._claims is not None:
            claimed, held = await self._claims.claim(name, [job.scene.ref for job in first.jobs])
            if not claimed:
                return Plan((), first.skipped_scenes, first.unprompted_scenes), held
            mine = set(claimed)
            first = await planned(mine)
        result.recovered = await self._recover(name, first)
        resumed = await self._resume(name, result)
        if resumed.waiting:  # their jobs are paid for and still running: not bought again
            mine = (mine or {job.scene.ref for job in first.jobs}) - resumed.waiting
        changed = result.recovered or resumed.saved or resumed.waiting
        return (await planned(mine) if changed else first), held

    async def _resume(self, name: str, result: R) -> Resumed:
        """Poll the jobs earlier runs on this host paid for and never saw end (job APIs)."""
        kind = self._provider.job_kind
        if kind is None:
            return Resumed()
        if self._pending is None:
            self._pending = asyncio.ensure_future(
                asyncio.to_thread(
                    lambda: job_ledger(
                        self._log.path.parent, normalise=self._db.normalise_key
                    ).of_kind(kind)
                )
            )
        pending = [
            (SceneRef(index, scene_id), job)
            for (index, scene_id), job in (await self._pending).get(name, [])
        ]
        resumed = await resume_jobs(
            db=self._db, shape=self._shape, provider=self._provider, intake=self._intake,
            log=self._log, project=name, pending=pending,
        )  # fmt: skip
        result.jobs_resumed = resumed.jobs
        result.recovered += resumed.saved
        result.tally.jobs_lost += resumed.lost
        result.tally.errors.extend(resumed.errors)
        return resumed

    async def _recover(self, name: str, the_plan: Plan) -> int:
        """Save what earlier runs received for the planned scenes and never saved; returns how
        many images that added (each logged as image.repaired)."""
        if self._unsaved is None:
            self._unsaved = asyncio.ensure_future(
                asyncio.to_thread(
                    unsaved_in_log,
                    self._log.path.parent,
                    allow_http=self._allow_http,
                    normalise=self._db.normalise_key,
                )
            )
        return await save_recovered(
            self._db,
            self._shape,
            self._log,
            name,
            the_plan.jobs,
            logged=(await self._unsaved).for_project(name),
            store=self._intake.store,
            inherited=self._claims.inherited.get(name, {}) if self._claims else {},
        )

    async def _carry_out(
        self, name: str, the_plan: Plan, result: R, reporter: Reporter | None
    ) -> None:
        self._log.write(
            "run.started",
            command="generate",
            mode="append",
            project=name,
            requested=the_plan.requested,
            skipped_scenes=list(the_plan.skipped_scenes),
            plan=the_plan.to_log(),
        )
        result.log_path = str(self._log.path)
        errors = result.tally.errors
        execution = Execution(
            db=self._db,
            provider=self._provider,
            intake=self._intake,
            log=self._log,
            project=name,
            shape=self._shape,
            slots=self._slots,
            stop=self._stop,
            reporter=reporter,
            claims=self._claims,
            linger=self._linger,
            said=self._said,
        )
        result.tally = await execution.run(the_plan)
        result.tally.errors[:0] = errors
        finish_log(self._log, result.tally, project=name)


def unprompted_lines(project: str, indexes: tuple[int, ...]) -> list[str]:
    """One line per project, not one per scene: a cron log reads it every run."""
    if not indexes:
        return []
    named = ", ".join(map(str, indexes[:10])) + (" …" if len(indexes) > 10 else "")
    which = f"scene {named} has" if len(indexes) == 1 else f"{len(indexes)} scenes ({named}) have"
    return [f"project {project}: {which} no prompt; skipped"]


async def listed(names: list[str]) -> AsyncIterator[list[str]]:
    """Named projects, as the one batch `Scheduler.run` takes."""
    yield names
