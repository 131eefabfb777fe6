"""`imgsave prune`: a retention rule for imgsave's own generation logs.

Every run with something to record leaves one file; audit rereads them all. Files older than the
window go; so does the evidence in them, so the window must be longer than the longest time a
loss may take to be noticed (docs/usage.md's cron section says how to choose it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from imgsave.adapters.runlog.writer import SUFFIX
from imgsave.core.result_json import FieldsResult, fields_json
from imgsave.errors import CannotWork
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class PruneResult(FieldsResult):
    executed: bool
    older_than: str
    files: list[str] = field(default_factory=list)
    kept: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, object]:
        # A dry run removed nothing: it says what it would remove, under that name.
        return {
            **fields_json(self),
            "removed" if self.executed else "would_remove": len(self.files),
        }

    def render(self, console: Console) -> None:
        verb = "removed" if self.executed else "would remove (run with --execute)"
        console.print(
            f"prune: {verb} {len(self.files)} run logs older than {shown(self.older_than)} "
            f"({self.bytes / 1e6:.1f} MB); {self.kept} kept"
        )


def prune(
    log_dir: Path, older_than: timedelta, *, label: str, execute: bool, now: float | None = None
) -> PruneResult:
    """Remove (with `execute`) imgsave's run logs in `log_dir` last written before the window."""
    result = PruneResult(executed=execute, older_than=label)
    if not log_dir.is_dir():
        return result
    cutoff = (time.time() if now is None else now) - older_than.total_seconds()
    for path in sorted(log_dir.glob(f"*{SUFFIX}")):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_mtime >= cutoff:
            result.kept += 1
            continue
        if execute:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CannotWork(f"cannot remove {path}: {exc.strerror}") from None
        result.files.append(str(path))
        result.bytes += info.st_size
    return result
