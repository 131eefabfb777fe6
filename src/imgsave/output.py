"""What people see: progress on a terminal, diagnostics on stderr, one JSON object with --json."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into a file or a pager: keep URLs whole rather than folded at 80 columns.
        console.width = 200
    return console


def print_json(payload: dict[str, Any]) -> None:
    # No masking here: data is printed as it is; secrets were masked in the error texts of
    # outside systems where imgsave took them in (provider.py, db.py).
    text = json.dumps(payload, ensure_ascii=False) + "\n"
    # A lone surrogate (from a document or a log) becomes its JSON escape: the object printed
    # is always valid JSON, whatever the data held.
    data = text.encode("utf-8", "backslashreplace")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]warning:[/] {escape(_printable(message))}")


def error(message: str) -> None:
    stderr_console().print(f"[bold red]imgsave: error:[/] {escape(_printable(message))}")


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def unlogged_lines(unlogged: list[dict[str, Any]]) -> list[str]:
    """One line per paid image the generation log could not record, so it is never lost."""
    return [
        f"NOT IN THE LOG: project {u['project']} scene {u['scene']}"
        + (f" ({u['scene_id']})" if u["scene_id"] else "")
        + (" saved: " if u["saved"] else " NOT SAVED: ")
        + u["url"]
        for u in unlogged
    ]


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
    from .audit import AuditReport
    from .demo import DemoResult
    from .generate import GenerateResult
    from .prune import PruneResult
    from .repair import RepairResult

    console = stdout_console()
    if isinstance(result, GenerateResult):
        console.print(_generate_line(result))
    elif isinstance(result, AuditReport):
        _findings_table(console, result, "Lost and unrecoverable images")
        _report_problems(result)
        console.print(escape(_audit_line(result)))
    elif isinstance(result, RepairResult):
        _report_problems(result.report, result.errors)
        if not result.executed:
            _findings_table(console, result.report, "Repair plan (dry run: nothing written)")
            console.print(escape(_audit_line(result.report, prefix="repair plan")))
            if result.report.lost:
                console.print("Run again with --execute to restore the lost images.")
        else:
            run = f" (run {result.run})" if result.run else ""
            console.print(
                escape(
                    f"repair: restored {result.repaired} of {result.lost_before} missing images, "
                    f"regenerated {result.regenerated}, {result.remaining} still missing{run}"
                )
            )
    elif isinstance(result, PruneResult):
        verb = "removed" if result.executed else "would remove (run with --execute)"
        console.print(
            f"prune: {verb} {len(result.removed)} run logs older than {escape(result.older_than)} "
            f"({result.bytes / 1e6:.1f} MB); {result.kept} kept"
        )
    elif isinstance(result, DemoResult):
        verdict = "every image saved" if result.exit_code == 0 else "images missing"
        console.print(
            f"demo: the route kept {result.naive_kept} of {result.naive_logged} images it logged "
            f"as saved, {result.naive_repaired} after repair; imgsave saved "
            f"{result.imgsave_saved} of {result.imgsave_requested} ({verdict})."
        )
    else:  # pragma: no cover - every command's result is listed above
        raise TypeError(f"no renderer for {type(result).__name__}")


def _generate_line(r: Any) -> str:
    t = r.tally
    head = f"project {r.project}: {t.saved} of {t.requested} images saved"
    if t.requested:
        head += f" in {t.transactions} transaction{'s' if t.transactions != 1 else ''}"
    parts = [head]
    if t.failed:
        parts.append(f"{t.failed} failed (in the log for `imgsave repair`)")
    if t.duplicates:
        parts.append(f"{t.duplicates} answered with a URL the scene already held (not saved)")
    if r.skipped_scenes:
        parts.append(f"{len(r.skipped_scenes)} scenes already complete")
    if r.unprompted_scenes:
        parts.append(f"{len(r.unprompted_scenes)} scenes without a prompt")
    if t.interrupted:
        parts.append("interrupted")
    if t.fatal:
        parts.append(f"stopped: {t.fatal}")
    if t.log_error:
        parts.append(f"stopped: {t.log_error}")
    return escape(_printable(", ".join(parts) + f" (run {r.run})"))


MAX_ROWS = 200


def _findings_table(console: Console, report: Any, title: str) -> None:
    from rich.table import Table

    rows = [("lost", f) for f in report.lost] + [("expired", f) for f in report.expired]
    rows += [("stale", f) for f in report.stale] + [("orphaned", f) for f in report.orphaned]
    if not rows:
        return
    rows.sort(key=lambda row: (row[1].project, row[1].scene, row[0], row[1].url))
    table = Table(title=title, title_justify="left")
    for column in ("project", "scene", "status", "url"):
        table.add_column(column, overflow="fold" if column == "url" else "ellipsis")
    colours = {"lost": "red", "expired": "magenta", "stale": "yellow", "orphaned": "dim"}
    previous = None
    for status, f in rows[:MAX_ROWS]:
        key = (f.project, f.scene)
        first = key != previous
        previous = key
        scene = f"{f.scene}" + (f" ({f.scene_id})" if f.scene_id else "")
        table.add_row(
            escape(_printable(f.project)) if first else "",
            escape(_printable(scene)) if first else "",
            f"[{colours[status]}]{status}[/]",
            escape(_printable(f.url)),
        )
    console.print(table)
    if len(rows) > MAX_ROWS:
        console.print(f"… and {len(rows) - MAX_ROWS} more rows (--json lists them all)")


def _report_problems(report: Any, extra: list[str] | tuple[str, ...] = ()) -> None:
    for message in [*report.errors, *extra]:
        error(message)
    stats = report.stats
    if stats.files == 0:
        stderr_console().print(
            "[yellow]warning:[/] no log files were read (give --log, or check IMGSAVE_LOG_DIR)"
        )
    for where in stats.truncated_files:
        stderr_console().print(f"[yellow]warning:[/] {escape(where)}: last line cut short")


def _audit_line(report: Any, prefix: str = "audit") -> str:
    from .logread import MAX_LINE_BYTES

    s = report.summary()
    stats = report.stats
    text = (
        f"{prefix}: {s['lost']} lost, {s['expired']} expired, {s['stale']} stale, "
        f"{s['orphaned']} orphaned, {s['present']} present; "
        f"{stats.lines} log lines in {stats.files} file{'s' if stats.files != 1 else ''}, "
        f"{s['lines_skipped']} skipped"
    )
    detail = [
        f"{count} {name}"
        for name, count in (
            ("unmatched", stats.unmatched),
            ("garbage", stats.garbage),
            ("not UTF-8", stats.undecodable),
            ("refused URLs", stats.refused),
            ("invalid", stats.invalid),
            (f"longer than {MAX_LINE_BYTES // (1 << 20)} MiB", stats.too_long),
        )
        if count
    ]
    if detail:
        text += f" ({', '.join(detail)})"
    if report.unchecked:
        text += f"; {report.unchecked} lost URLs could not be checked"
    return text
