"""The run's concurrency bound, handed out in turn across projects, and its spending cap.

One semaphore for a whole run would serve its waiters first come, first served: a project that
queued 5,000 images before a small one would hold every slot until it was done. Here each
project waits in its own line and the projects take turns, so every project in flight gets its
share however many images it has queued.

A turn is `quantum` slots in a row, not one: requests started together answer together, and
answers that arrive together share one transaction of their project's batched writer. Handing
out single slots in rotation would spread every project's answers evenly in time and cost one
transaction per image.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Slots:
    def __init__(
        self, concurrency: int, *, budget: int | None = None, quantum: int = 1, cap: str = ""
    ):
        """`budget`: how many requests the run may start (`--max-images`, or what `--max-cost`
        buys); None: no cap. `cap`: the flag that set it, as the run says it was reached.
        `quantum`: slots a project is given in a row when its turn comes."""
        self.concurrency = concurrency
        self._free = concurrency
        self._quantum = quantum
        self._given = 0  # slots given in a row to the project at the front of the ring
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}
        self._ring: deque[str] = deque()
        self.budget = budget
        self.cap = cap or f"--max-images {budget}"
        self.spent = 0

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._lines.values())

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and self.spent >= self.budget

    def spend(self) -> bool:
        """Count one request against the budget; False (and nothing counted) when it is spent."""
        if self.exhausted:
            return False
        self.spent += 1
        return True

    @asynccontextmanager
    async def slot(self, project: str) -> AsyncIterator[None]:
        await self._acquire(project)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, project: str) -> None:
        if self._free > 0 and not self._ring:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._lines.get(project)
        if line is None:
            line = self._lines[project] = deque()
            self._ring.append(project)
        line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot was handed over as we were cancelled: pass it on
            else:
                self._leave(project, turn)
            raise

    def _leave(self, project: str, turn: asyncio.Future[None]) -> None:
        line = self._lines.get(project)
        if line is not None and turn in line:
            line.remove(turn)
            if not line:
                del self._lines[project]
                if self._ring[0] == project:
                    self._given = 0
                self._ring.remove(project)

    def _release(self) -> None:
        while self._ring:
            project = self._ring[0]
            line = self._lines[project]
            turn = line.popleft()
            self._given += 1
            if not line:
                del self._lines[project]
                self._ring.popleft()
                self._given = 0
            elif self._given >= self._quantum:
                self._ring.rotate(-1)  # its turn is over: to the back, the others go first
                self._given = 0
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to it
                return
        self._free += 1
