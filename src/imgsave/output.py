"""What people see: progress on a terminal, diagnostics on stderr, one JSON object with --json."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    stderr_console().print(f"[bold red]imgsave: error:[/] {escape(message)}")


class ProgressReporter:
    """A progress bar on stderr when it is a terminal; warnings as plain lines either way."""

    def __init__(self, *, quiet: bool = False):
        self._console = stderr_console()
        self._quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None
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
        if self._progress is not None:
            self._progress.update(self._task, advance=1, failed=self.failed)

    def warn(self, message: str) -> None:
        if not self._quiet:
            self._console.print(f"[yellow]warning:[/] {escape(message)}")

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def render(result: Any) -> None:
    """The human summary of a command's result, on stdout."""
    from .demo import DemoResult
    from .generate import GenerateResult

    console = stdout_console()
    if isinstance(result, GenerateResult):
        console.print(_generate_line(result))
    elif isinstance(result, DemoResult):
        verdict = "every image saved" if result.exit_code == 0 else "images missing"
        console.print(
            f"demo: the route kept {result.naive_kept} of {result.naive_logged} images it logged "
            f"as saved; imgsave saved {result.imgsave_saved} of {result.imgsave_requested} "
            f"({verdict})."
        )
    else:  # pragma: no cover - every command's result is listed above
        raise TypeError(f"no renderer for {type(result).__name__}")


def _generate_line(r: Any) -> str:
    head = f"project {r.project}: {r.saved} of {r.requested} images saved"
    if r.requested:
        head += f" in {r.transactions} transaction{'s' if r.transactions != 1 else ''}"
    parts = [head]
    if r.failed:
        parts.append(f"{r.failed} failed (in the log for `imgsave repair`)")
    if r.skipped_scenes:
        parts.append(f"{len(r.skipped_scenes)} scenes already complete")
    if r.unprompted_scenes:
        parts.append(f"{len(r.unprompted_scenes)} scenes without a prompt")
    if r.interrupted:
        parts.append("interrupted")
    if r.fatal:
        parts.append(f"stopped: {r.fatal}")
    return escape(", ".join(parts) + f" (run {r.run})")
