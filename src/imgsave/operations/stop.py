"""Ctrl-C as a two-step stop: the first stops new work and lets what is in flight finish and
save; the second also abandons provider requests still waiting for an answer."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager


class StopSignal:
    def __init__(self) -> None:
        self.soft = asyncio.Event()
        self.hard = asyncio.Event()
        # Someone asked (Ctrl-C, SIGTERM), as opposed to the run halting itself on an error.
        self.signalled = False

    def request(self) -> None:
        self.signalled = True
        if self.soft.is_set():
            self.hard.set()
        self.soft.set()

    def halt(self) -> None:
        """Stop new work only; never escalates to abandoning requests in flight."""
        self.soft.set()

    @property
    def requested(self) -> bool:
        return self.soft.is_set()


@contextmanager
def sigint_stops(stop: StopSignal) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call `stop.request()` instead of raising."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.request)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
