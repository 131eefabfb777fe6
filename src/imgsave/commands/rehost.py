"""`imgsave rehost`: copy images behind a provider's expiring links into the store and put each
copy in its link's place (operations/rehosting.py); with --regenerate, new images for links
that no longer resolve."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.storage.object_store import Store
from imgsave.core import events
from imgsave.core.cost import SYNC, Limits, Pricing
from imgsave.core.result_json import NOT_IN_JSON, fields_json, json_name
from imgsave.core.settings import Settings
from imgsave.errors import EXIT_CANNOT_WORK, EXIT_FINDINGS, EXIT_OK, LogUnwritable, UsageError
from imgsave.operations import generating, rehosting
from imgsave.operations.rehosting import Link
from imgsave.operations.session import opened
from imgsave.operations.stop import StopSignal, sigint_stops
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console

    from imgsave.operations.execution import Reporter


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
    # With --regenerate: images asked of the image API and what one costs (the JSON's `cost`).
    sent: int = field(default=0, metadata=NOT_IN_JSON)
    pricing: Pricing | None = field(default=None, metadata=NOT_IN_JSON)

    @property
    def projects(self) -> int:
        """Projects holding a link to copy."""
        return len({link.project for link in self.plan})

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return EXIT_CANNOT_WORK
        return EXIT_FINDINGS if self.remaining or self.errors else EXIT_OK

    def stderr_lines(self) -> list[str]:
        return [self.fatal] if self.fatal else []

    def to_json(self) -> dict[str, object]:
        priced = {"cost": self.pricing.cost_json(self.sent, SYNC)} if self.pricing else {}
        return {**fields_json(self), **priced}

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


async def run_rehost(
    settings: Settings,
    projects: Sequence[str],
    *,
    all_projects: bool,
    execute: bool,
    regenerate: bool = False,
    concurrency: int = 8,
    limits: Limits = Limits(),
    reporter: Reporter | None = None,
) -> RehostResult:
    """Copy every provider link into the store and replace it; with `regenerate`, buy a new
    image for each link that no longer resolves: at most `--max-images`, and no more than
    `--max-cost` buys at the configured price."""
    if bool(projects) == all_projects:
        raise UsageError("name the projects to rehost, or give --all")
    store = Store.from_settings(settings)
    if store is None:
        raise UsageError(
            "rehost copies images into your store: set IMGSAVE_STORE (s3://BUCKET/PREFIX or "
            "file:///DIR) and IMGSAVE_PUBLIC_URL"
        )
    pricing = Pricing.of(settings.provider)
    max_images = limits.cap(pricing, SYNC).images
    result = RehostResult(executed=execute, pricing=pricing if regenerate else None)
    async with await Database.from_settings(settings) as db:
        names = await generating.resolve(db, projects)
        found = await rehosting.find_links(
            db, names, all_projects=all_projects, shape=settings.shape, store=store,
            allow_http=settings.allow_http,
        )  # fmt: skip
    result.plan, result.errors = found.links, found.errors
    result.remaining = len(found.links)
    if not execute or not found.links:
        return result
    async with opened(settings) as s:
        result.run = s.run
        stop = StopSignal()
        with sigint_stops(stop):
            s.log.write(
                events.RUN_STARTED, command="rehost", mode="replace", links=len(found.links)
            )
            copied = await rehosting.copy_links(
                s, found.links, concurrency=concurrency, stop=stop, reporter=reporter
            )
            result.rehosted, result.expired = copied.rehosted, copied.expired
            result.errors += copied.errors
            if regenerate and copied.expired and not stop.requested:
                async with Provider.from_settings(settings) as provider:
                    tally, result.regenerated = await rehosting.regenerate_links(
                        s, provider, copied.expired, concurrency=concurrency,
                        max_images=max_images, stop=stop, reporter=reporter,
                    )  # fmt: skip
                result.added = tally.extras
                result.possibly_billed_retries = tally.possibly_billed_retries
                result.usage = tally.usage
                result.sent = tally.sent
                result.fatal = tally.fatal
                result.errors += [e for e in tally.errors if e != tally.fatal]
        result.remaining = len(found.links) - result.rehosted - result.regenerated
        with contextlib.suppress(LogUnwritable):  # the document is already right
            s.log.write(
                events.RUN_FINISHED, command="rehost", rehosted=result.rehosted,
            expired=len(result.expired), regenerated=result.regenerated,
                remaining=result.remaining, interrupted=stop.requested,
            )  # fmt: skip
    return result
