"""Progress on a terminal: one bar on stderr, and warnings as plain lines either way.

A run over many projects shows one bar for all of them, whose total grows as projects are
planned, and names the projects in flight beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column

from imgsave.terminal.consoles import stderr_console, warn

if TYPE_CHECKING:
    from imgsave.operations.execution import Reporter

# Projects named beside the bar; the rest are counted.
NAMED_IN_FLIGHT = 3
# The columns before the projects in flight: "generate", a 24-wide bar, "12/80", "0 failed",
# "0:01:02", and the spaces between them.
BESIDE_THE_FLIGHT = 56


class ProgressReporter:
    """The engine's Reporter for a person at a terminal; silent when stderr is not one."""

    def __init__(self, *, quiet: bool = False):
        self._console = stderr_console()
        self._quiet = quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self.failed = 0
        self.not_requested = 0
        self._total = 0
        self._in_flight: dict[str, None] = {}

    def start(self, total: int, description: str) -> None:
        if self._quiet or not self._console.is_terminal or total == 0:
            return
        # The bar and its numbers first, at their own widths; the projects in flight last, cut
        # to what the terminal has left (at 80 columns three project keys would otherwise
        # squeeze the bar out of the line).
        self._progress = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=24),
            TextColumn("{task.completed}/{task.total}", table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True)),
            TimeElapsedColumn(),
            TextColumn(
                "{task.fields[flight]}",
                table_column=Column(no_wrap=True, overflow="ellipsis"),
            ),
            console=self._console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            escape(description), total=total, note=self._note(), flight=""
        )

    def project(self, name: str) -> Reporter:
        """A reporter for one project of a run over many; they share this one display."""
        return _ProjectView(self, name)

    def grow(self, total: int, name: str) -> None:
        self._in_flight[name] = None
        self._total += total
        if self._progress is None:
            self.start(self._total, "generate")
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=self._total, flight=self._flight())

    def landed(self, name: str) -> None:
        self._in_flight.pop(name, None)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, flight=self._flight())

    def _flight(self) -> str:
        names = list(self._in_flight)
        shown = ", ".join(names[:NAMED_IN_FLIGHT])
        if len(names) > NAMED_IN_FLIGHT:
            shown += f" +{len(names) - NAMED_IN_FLIGHT}"
        text = f"projects in flight: {shown or '-'}"
        # What the line has left beside the bar and its numbers: cut here, where it is known
        # to be the flight list, rather than let the table squeeze the bar.
        room = max(12, self._console.width - BESIDE_THE_FLIGHT)
        if len(text) > room:
            text = text[: room - 1] + "…"
        return escape(text)

    def advance(self, *, ok: bool, requested: bool = True) -> None:
        if not requested:
            self.not_requested += 1
        elif not ok:
            self.failed += 1
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, note=self._note())

    def _note(self) -> str:
        """What the bar says beside the count: failures, and images never asked for (a stop)
        apart from them, since those cost nothing and are no fault."""
        note = f"[red]{self.failed} failed[/]"
        if self.not_requested:
            note += f", {self.not_requested} not requested"
        return note

    def warn(self, message: str) -> None:
        if not self._quiet:
            warn(message, self._console)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class _ProjectView:
    """One project's view of the shared display: its start grows the total."""

    def __init__(self, display: ProgressReporter, name: str):
        self._display = display
        self._name = name

    def start(self, total: int, description: str) -> None:
        self._display.grow(total, self._name)

    def advance(self, *, ok: bool, requested: bool = True) -> None:
        self._display.advance(ok=ok, requested=requested)

    def warn(self, message: str) -> None:
        self._display.warn(message)

    def finish(self) -> None:
        self._display.landed(self._name)
