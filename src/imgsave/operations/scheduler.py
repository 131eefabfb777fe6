"""Generating for many projects in one run: which projects are in flight, and each one's course.

A project's course: read → plan → claim (planning.py, less what the ledger says is on its way);
carry the plan out with its own batched writer (execution.py); release the claims. Every
project shares the run's slots (the concurrency bound, handed out in turn), its pace (in the
provider), its purchases (ledger and log) and its stop.

Projects are let in while the slots have too little queued to stay busy, and always at least
`MIN_IN_FLIGHT` of them, so a project with thousands of images cannot keep the rest waiting.
Only the projects in flight are in memory; a finished one leaves its result, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

from imgsave.core import events
from imgsave.core.scene_plan import Plan
from imgsave.errors import (
    ClaimsUnavailable,
    DatabaseUnavailable,
    ImgsaveError,
    LedgerUnavailable,
    LogUnwritable,
)
from imgsave.operations.claims import held_lines, stalled
from imgsave.operations.execution import Execution, Means, Reporter, Tally, finish_log
from imgsave.operations.planning import Ask, plan_project

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
    # Scenes whose missing images are all on their way already (a job, a batch, a dead run).
    pending_scenes: list[int]
    log_path: str | None

    def failure(self, exc: ImgsaveError) -> None: ...


R = TypeVar("R", bound=ProjectResult)


class Scheduler(Generic[R]):
    def __init__(
        self,
        means: Means,
        ask: Ask,
        *,
        reporter: Callable[[str], Reporter | None],
        result: Callable[[str], R],
    ):
        """`reporter(project)`: where a project's progress is shown; `result(project)`: the
        object its outcome is put in."""
        self._means = means
        self._ask = ask
        self._reporter = reporter
        self._result = result
        self._preparing = 0
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
                    if self._means.stop.requested or self._means.slots.exhausted:
                        if self._means.stop.signalled:
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
                if self._means.stop.signalled:
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
        concurrency = self._means.slots.concurrency
        busy = self._means.slots.waiting >= concurrency
        return not busy and self._preparing < PREPARING and in_flight < 4 * concurrency

    async def project(self, name: str, *, strict: bool = False) -> R:
        result = self._result(name)
        self._preparing += 1
        try:
            planned = await plan_project(
                self._means.db, self._means.purchases.ledger, self._means.claims, name, self._ask,
                shape=self._means.shape, every_selected=strict,
            )  # fmt: skip
        except ImgsaveError as exc:
            self._failed(result, exc, strict)
            if self._means.claims is not None:
                await self._means.claims.release(name)
            return result
        finally:
            self._preparing -= 1
        the_plan, held = planned.plan, planned.held
        result.skipped_scenes = list(the_plan.skipped_scenes)
        result.unprompted_scenes = list(the_plan.unprompted_scenes)
        result.pending_scenes = list(the_plan.pending_scenes)
        result.held_scenes = sorted(h.ref.index for h in held)
        expiry = self._means.claims.expiry if self._means.claims else 0.0
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
        except ImgsaveError as exc:  # the ledger or the log would not take the purchase
            self._failed(result, exc, strict)
        finally:
            if self._means.claims is not None:
                await self._means.claims.release(name)
        return result

    def _failed(self, result: R, exc: ImgsaveError, strict: bool) -> None:
        if strict:
            raise exc
        run_wide = DatabaseUnavailable | LogUnwritable | ClaimsUnavailable | LedgerUnavailable
        if isinstance(exc, run_wide) and self.fatal is None:
            # Every other project would meet the same wall: the run stops.
            self.fatal = str(exc)
            self._means.stop.halt()
        result.failure(exc)

    async def _carry_out(
        self, name: str, the_plan: Plan, result: R, reporter: Reporter | None
    ) -> None:
        log = self._means.purchases.log
        log.write(
            events.RUN_STARTED,
            command="generate",
            mode="append",
            project=name,
            requested=the_plan.requested,
            skipped_scenes=list(the_plan.skipped_scenes),
            plan=the_plan.to_log(),
        )
        result.log_path = str(log.path)
        errors = result.tally.errors
        execution = Execution(self._means, name, reporter=reporter)
        result.tally = await execution.run(the_plan)
        result.tally.errors[:0] = errors
        finish_log(log, result.tally, project=name)


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
