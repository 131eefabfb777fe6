"""How an audit report looks at a terminal: the findings table, the problems on stderr, the
summary line. Audit's output and repair's dry run share them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape

from imgsave.adapters.runlog.reader import MAX_LINE_BYTES
from imgsave.operations.lost_images import AuditReport
from imgsave.terminal.consoles import error, printable, shown, warn

if TYPE_CHECKING:
    from rich.console import Console

STATUS_COLOURS = {
    "lost": "red",
    "expired": "magenta",
    "stale": "yellow",
    "orphaned": "dim",
    "unreferenced": "cyan",
}
MAX_ROWS = 200


def render(report: AuditReport, console: Console) -> None:
    render_findings(report, console, "Images not in their scene")
    report_problems(report)
    console.print(escape(summary_line(report)))


def render_findings(report: AuditReport, console: Console, title: str) -> None:
    from rich.table import Table

    rows = [(status, f) for status in STATUS_COLOURS for f in getattr(report, status)]
    if not rows:
        return
    rows.sort(key=lambda row: (row[1].project, row[1].scene, row[0], row[1].url))
    table = Table(title=title, title_justify="left")
    for column in ("project", "scene", "status", "url"):
        table.add_column(column, overflow="fold" if column == "url" else "ellipsis")
    previous = None
    for status, f in rows[:MAX_ROWS]:
        key = (f.project, f.scene)
        first = key != previous
        previous = key
        scene = f"{f.scene}" + (f" ({f.scene_id})" if f.scene_id else "")
        table.add_row(
            shown(f.project) if first else "",
            shown(scene) if first else "",
            f"[{STATUS_COLOURS[status]}]{status}[/]",
            shown(f.url),
        )
    console.print(table)
    if len(rows) > MAX_ROWS:
        console.print(f"… and {len(rows) - MAX_ROWS} more rows (--json lists them all)")


def report_problems(report: AuditReport, extra: list[str] | tuple[str, ...] = ()) -> None:
    for message in [*report.errors, *extra]:
        error(message)
    for note in report.notes:
        warn(note)
    if report.stats.files == 0 and report.journal_rows is None and not report.ledger_rows:
        # An executing repair makes the ledger before it audits: an empty one says the same.
        ledger = " has no ledger yet" if report.ledger_rows is None else "'s ledger is empty"
        warn(f"nothing was read: this database{ledger}, and no --log was given")
    for where in report.stats.truncated_files:
        warn(f"{where}: last line cut short")


def summary_line(report: AuditReport, prefix: str = "audit") -> str:
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
    if report.journal_rows is not None:
        text += f"; {report.journal_rows} journal rows"
    if report.unchecked:
        text += f"; {report.unchecked} lost URLs could not be checked"
    if report.spooled:
        text += f"; {report.spooled} paid images wait in the spool (repair uploads them)"
    if report.uncollected:
        text += (
            f"; {report.uncollected} images of finished batches were never collected "
            "(repair --execute collects them)"
        )
    if report.jobs:
        lost = report.jobs_lost
        text += f"; {len(report.jobs) - lost} jobs paid for and still pending (generate polls them)"
        if lost:
            text += f", {lost} paid for and lost (their results were gone)"
    if report.unreferenced:
        text += (
            f"; {len(report.unreferenced)} objects in the store are not provably imgsave's "
            "images or are older than the logs read (never written)"
        )
    return printable(text)
