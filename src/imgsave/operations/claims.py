"""Claims: how runs on several hosts share out scenes so that none is paid for twice.

Before a run spends on a scene it claims (project, scene) in the `imgsave_claims` table, with
one statement that either takes the row (free, expired, or already this run's) or leaves it
to its holder; a scene someone else holds is skipped and reported, never waited for. Every
claim names its run and host and expires; while the run works, it extends all of its claims
every quarter of the expiry. Nothing lives in the session (no session locks, no temp tables),
so claims work through a transaction pooler.

The guarantee, precisely: a request is only started on a claim this run extended less than
three quarters of an expiry ago (by this host's monotonic clock, measured from before the
statement was sent, so the database's expiry is never earlier than the one assumed here). A
scene can still be paid for twice when a request already started outlives its claim: the host
could not reach the database to extend it for a whole expiry (a partition, an outage, a process
frozen for that long) while the request ran, and another host claimed the scene meanwhile.
Size the expiry above the longest such stretch you want to ride out; a dead host's scenes wait
at most that long for another run.

A claim also names its process (PID namespace, PID and start time). A run on the same host
whose holder process is gone (a crash, a SIGKILL, a reboot) takes its claims over at once
instead of waiting for them to expire: that process can no longer spend anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from imgsave.adapters.postgres.claim_rows import ClaimRows
from imgsave.adapters.postgres.connector import Connector
from imgsave.adapters.runlog.processes import process_is_gone, this_process
from imgsave.core.documents import SceneRef
from imgsave.core.ledger import scene_key
from imgsave.core.settings import ClaimSettings
from imgsave.errors import ImgsaveError
from imgsave.logs import logger


@dataclass(frozen=True)
class Held:
    """A scene another run holds: who, and for how much longer unless it is extended."""

    ref: SceneRef
    host: str
    run: str
    expires_in: float


def stalled(held: Sequence[Held], expiry: float) -> list[Held]:
    """Scenes whose holder has stopped extending its claims: a live run extends them every
    quarter of the expiry, so one with less than half an expiry left has missed a heartbeat
    (a run killed on another host). They wait for nobody: they free up at their expiry."""
    return [h for h in held if h.expires_in < expiry / 2]


def held_lines(project: str, held: Sequence[Held], expiry: float = math.inf) -> list[str]:
    """One line per run holding scenes of `project` (not one per scene: two hosts sharing a
    cron line would print thousands)."""
    by_holder: dict[tuple[str, str], list[Held]] = defaultdict(list)
    for h in held:
        by_holder[(h.run, h.host)].append(h)
    lines = []
    for (run, host), items in by_holder.items():
        indexes = sorted(h.ref.index for h in items)
        named = ", ".join(map(str, indexes[:10])) + (" …" if len(indexes) > 10 else "")
        which = f"scene {named}" if len(indexes) == 1 else f"{len(indexes)} scenes ({named})"
        left = math.ceil(max(h.expires_in for h in items))
        if len(stalled(items, expiry)) == len(items):
            free = datetime.now(UTC) + timedelta(seconds=left)
            lines.append(
                f"project {project}: {which} claimed by run {run} on {host}, which stopped "
                f"extending its claims (a dead run?): they free up at "
                f"{free:%Y-%m-%dT%H:%M:%SZ} (in {left}s), when a rerun takes them; skipped"
            )
        else:
            lines.append(
                f"project {project}: {which} claimed by run {run} on {host} "
                f"(for {left}s more unless extended); skipped"
            )
    return lines


class Claims:
    """One run's claims. Open with `async with`: extends the claims in the background and
    releases whatever is left at the end. The table is created by the first claim if needed,
    so a run with nothing to do needs no right to create it."""

    def __init__(
        self,
        db: Connector,
        run: str,
        expiry: float,
        *,
        host: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._rows = ClaimRows(db)
        self.run = run
        self.host = host or socket.gethostname()
        self.process = this_process()
        self.expiry = expiry
        self._clock = clock
        self._held: dict[str, set[str]] = defaultdict(set)
        # When each project's latest claim came back: an extension sent before it cannot
        # have seen that claim, so it says nothing about it.
        self._claimed: dict[str, float] = {}
        # Until when (this host's clock) every claim held is known to stand.
        self._valid_until = math.inf
        self._heartbeat: asyncio.Task[None] | None = None
        self._table: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Claims:
        self._heartbeat = asyncio.create_task(self._extend_forever(), name="claims")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if any(self._held.values()):
            # Left to expire when the database cannot be reached: nothing is lost by that.
            with contextlib.suppress(ImgsaveError):
                await asyncio.shield(self._rows.release(self.run))

    async def claim(
        self, project: str, refs: Sequence[SceneRef]
    ) -> tuple[list[SceneRef], list[Held]]:
        """Take what can be taken of `refs`; the rest is held by other runs. (What a run that
        died holding them had bought is the ledger's to settle.)"""
        if self._table is None:
            self._table = asyncio.ensure_future(self._rows.ensure_table())
        await self._table  # once, however many projects ask at the same moment
        by_key = {scene_key(ref): ref for ref in refs}
        sent = self._clock()
        taken = dict(await self._claim(project, list(by_key)))
        holders = []
        if len(taken) < len(by_key):
            holders = await self._rows.holders(project, [k for k in by_key if k not in taken])
            dead = sorted({process for _, _, process, _, _ in holders if process_is_gone(process)})
            if dead:
                taken |= dict(await self._claim(project, [h[0] for h in holders], dead))
        got = set(taken)
        if not self._held_any():
            self._valid_until = sent + self.expiry
        self._held[project] |= got
        self._claimed[project] = self._clock()
        held = [
            Held(by_key[key], host, run, expires_in)
            for key, host, _, run, expires_in in holders
            if key not in got
        ]
        return [by_key[key] for key in by_key if key in got], held

    async def _claim(
        self, project: str, keys: list[str], dead: Sequence[str] = ()
    ) -> list[tuple[str, float | None]]:
        return await self._rows.take(
            project,
            keys,
            run=self.run,
            host=self.host,
            process=self.process,
            expiry=self.expiry,
            dead=dead,
        )

    def holds(self, project: str, ref: SceneRef) -> bool:
        """Whether a request for this scene may start: the claim is this run's, and was
        extended recently enough that it cannot have expired before the request begins."""
        fresh = self._clock() < self._valid_until - self.expiry / 4
        return fresh and scene_key(ref) in self._held.get(project, ())

    async def release(self, project: str) -> None:
        """This project is done: its scenes are free for others (filled ones are skipped by
        their plans). Left to expire if the database cannot be reached now."""
        self._claimed.pop(project, None)
        if self._held.pop(project, None):
            try:
                await self._rows.release(self.run, project)
            except ImgsaveError as exc:
                logger.debug("claims of project %s left to expire: %s", project, exc)

    def _held_any(self) -> bool:
        return any(self._held.values())

    async def _extend_forever(self) -> None:
        while True:
            await asyncio.sleep(self.expiry / 4)
            if not self._held_any():
                self._valid_until = math.inf
                continue
            sent = self._clock()
            try:
                kept = await self._rows.extend(self.run, self.expiry)
            except ImgsaveError as exc:
                # Not fatal: the claims stand until their expiry, and `holds` stops new
                # requests before that if no later attempt gets through.
                logger.debug("claims not extended: %s", exc)
                continue
            self._valid_until = sent + self.expiry
            still: dict[str, set[str]] = defaultdict(set)
            for project, scene in kept:
                still[project].add(scene)
            for project in list(self._held):
                # A claim that expired and was taken over is no longer this run's.
                if self._claimed.get(project, math.inf) < sent:
                    self._held[project] &= still.get(project, set())


@contextlib.asynccontextmanager
async def claimed(
    connector: Connector, run: str, settings: ClaimSettings
) -> AsyncIterator[Claims | None]:
    """The run's claims, or None where [claims] enabled = false (one host only)."""
    if not settings.enabled:
        yield None
        return
    async with Claims(connector, run, settings.expiry) as claims:
        yield claims
