"""Progress on a terminal: one bar on stderr, and warnings as plain lines either way."""

from __future__ import annotations

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .consoles import stderr_console, warn


class ProgressReporter:
    """The engine's Reporter for a person at a terminal; silent when stderr is not one."""

    def __init__(self, *, quiet: bool = False):
        self._console = stderr_console()
        self._quiet = quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self.failed = 0

    def start(self, total: int, description: str) -> None:
        if self._quiet or not self._console.is_terminal or total == 0:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(escape(description), total=total, failed=0)

    def advance(self, *, ok: bool) -> None:
        if not ok:
            self.failed += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, failed=self.failed)

    def warn(self, message: str) -> None:
        if not self._quiet:
            warn(message, self._console)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
