"""`imgsave generate`: fill projects' scenes with images, with none lost and none paid twice.

Opens the image API, the database, the store and the run's log (operations/session.py), then
asks operations/generating.py to settle what this database paid for and to buy what is still
missing, synchronously or through the Batch API. The results (terminal/generate_view.py)
render themselves.

`--dry-run` (`run_dry`) opens the database alone, reads, and prints the plan: nothing is
bought, claimed or written, and no table is made.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.postgres.database import Database
from imgsave.core.cost import BATCH, SYNC, Limits, Pricing
from imgsave.core.settings import Settings
from imgsave.errors import UsageError
from imgsave.operations import generating
from imgsave.operations.batches import Batches, opened_api
from imgsave.operations.planning import Ask
from imgsave.operations.session import Session, opened
from imgsave.operations.stop import StopSignal, sigint_stops
from imgsave.terminal.generate_view import (
    BatchRunResult,
    DryRunResult,
    GenerateResult,
    ManyResult,
    PlanOutput,
)

if TYPE_CHECKING:
    from imgsave.operations.execution import Reporter
    from imgsave.terminal.progress import ProgressReporter


@dataclass(frozen=True)
class Wanted:
    """What a generate run is asked for, in every mode: images for `projects` (the keys named,
    one or several) or, with `all_projects`, for every project with a scene short of K; as
    much as `ask` says of each, within `limits`."""

    projects: str | Sequence[str]
    ask: Ask
    all_projects: bool = False
    limits: Limits = field(default_factory=Limits)


async def run(
    settings: Settings,
    wanted: Wanted,
    *,
    concurrency: int = 8,
    strict: bool = False,
    quiet: bool = False,
    stop: StopSignal | None = None,
    reporter: ProgressReporter | None = None,
) -> GenerateResult | ManyResult:
    """Settle, then generate synchronously: one project named gives that project's result;
    several, or `--all`, the run's. `stop`: the run's Ctrl-C (one of its own by default).
    At most `--max-images` images, and no more than `--max-cost` buys at the configured price."""
    names = _named(wanted)
    pricing = Pricing.of(settings.provider)
    cap = wanted.limits.cap(pricing, SYNC)
    stop = stop or StopSignal()
    async with (
        Provider.from_settings(settings) as provider,
        opened(settings, max_size=4 if len(names) == 1 else 6) as s,
        _batches(settings, s) as batches,
    ):
        targets = generating.Targets(await generating.resolve(s.db, names), wanted.all_projects)
        settled = await generating.settle(s, targets, provider, batches)
        ask = replace(wanted.ask, held_back=frozenset(settled.held_back))
        landed: list[GenerateResult] = []
        many = ManyResult(run=s.run, quiet=quiet, pricing=pricing)
        many.absorb(settled)

        def result(name: str) -> GenerateResult:
            return GenerateResult(project=name, run=s.run, strict=strict, pricing=pricing)

        def project_reporter(name: str) -> Reporter | None:
            return reporter if targets.single or reporter is None else reporter.project(name)

        hooks = generating.ProjectHooks(
            result, project_reporter, landed.append if targets.single else many.add
        )
        with sigint_stops(stop):
            try:
                many.projects_not_started, fatal = await generating.buy_sync(
                    s, provider, targets, ask, concurrency=concurrency, cap=cap, stop=stop,
                    hooks=hooks,
                )  # fmt: skip
            finally:
                if reporter is not None and not targets.single:
                    reporter.finish()
        pace = provider.pace.report() if provider.pace else None
        if targets.single:
            one = landed[0]
            one.absorb(settled)
            one.pace = pace
            return one
        many.stopped = fatal or many.stopped
        many.interrupted = stop.signalled
        many.pace = pace
        return many


async def run_batch(
    settings: Settings,
    wanted: Wanted,
    *,
    batch_size: int = 500,
    strict: bool = False,
    wait: bool = False,
    reporter: ProgressReporter | None = None,
) -> BatchRunResult:
    """Collect every finished batch of this database, then submit what is still missing and
    not already on its way; with `wait`, stay until what was submitted is collected. At most
    `--max-images` images submitted, and no more than `--max-cost` buys at the batch price."""
    names = _named(wanted)
    pricing = Pricing.of(settings.provider)
    cap = wanted.limits.cap(pricing, BATCH)
    async with opened(settings) as s, _batches(settings, s, required=True) as batches:
        assert batches is not None
        targets = generating.Targets(await generating.resolve(s.db, names), wanted.all_projects)
        result = BatchRunResult(
            s.run, targets.names[0] if targets.single else None, strict=strict, cap=cap,
            pricing=pricing,
        )  # fmt: skip
        result.settled = await generating.settle(s, targets, None, batches)
        ask = replace(wanted.ask, held_back=frozenset(result.settled.held_back))
        result.submitted, plan = await generating.buy_batch(
            s, batches, targets, ask, batch_size=batch_size, max_images=cap.images,
            errors=result.errors,
        )  # fmt: skip
        result.count(plan)
        if wait:
            later = await batches.wait(
                set(result.submitted.submitted),
                lambda: generating.settle(s, targets, None, batches),
                poll=settings.provider.batch_poll,
                reporter=reporter,
                total=result.submitted.in_batches,
            )
            for settled in later:
                result.settled.merge(settled)
        running = set(batches.pending) | set(result.submitted.submitted)
        result.pending = sorted(running - set(result.settled.collected))
    return result


async def run_dry(
    settings: Settings, wanted: Wanted, *, batch: bool = False, output: PlanOutput
) -> DryRunResult:
    """The plan a run with these arguments would make, each project printed by `output` as it
    is planned: no image API is called, nothing claimed, no ledger row, table, log file or
    store object is made (the database is read, and the ledger only where it exists)."""
    names = _named(wanted)
    mode = BATCH if batch else SYNC
    if batch:
        generating.refuse_without_batch_api(settings.provider.kind)
    pricing = Pricing.of(settings.provider)
    cap = wanted.limits.cap(pricing, mode)
    result = DryRunResult(mode, pricing, cap, output)
    output.open(result.header())
    async with await Database.from_settings(settings, max_size=2) as db:
        await db.check_readable()
        ledger = await generating.ledger_if_any(db)
        targets = generating.Targets(await generating.resolve(db, names), wanted.all_projects)
        plans = generating.dry_plans(
            db, ledger, targets, wanted.ask, settings.shape, budget=cap.images
        )
        async for planned in plans:
            result.add(planned)
    return result


def _named(wanted: Wanted) -> list[str]:
    projects = wanted.projects
    names = [projects] if isinstance(projects, str) else list(dict.fromkeys(projects))
    if bool(names) == wanted.all_projects:
        raise UsageError("name the projects to generate for, or give --all (not both)")
    return names


@contextlib.asynccontextmanager
async def _batches(
    settings: Settings, s: Session, *, required: bool = False
) -> AsyncIterator[Batches | None]:
    """The configured kind's Batch API, for settling its batches (and, with `required`, for
    submitting): None where the kind has none or no image API is configured."""
    async with opened_api(settings, required=required) as api:
        yield (
            Batches(api=api, db=s.db, purchases=s.purchases, shape=settings.shape) if api else None
        )
