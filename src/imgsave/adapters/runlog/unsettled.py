"""Runs on this host whose records may not all be in the ledger yet.

The generation log stays the write-ahead record for the moment the database cannot be reached
after a purchase: `image.generated` is fsynced before the save. A run that buys something
leaves a marker, `<log dir>/unsettled/<database identity>/<run id>`, holding its process;
it removes the marker when it ends with every record in the ledger. A later run on this host
reads only the logs its own database's markers name (never the whole folder, whose size grows
with history), settles them into the ledger, and removes the markers of runs that are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgsave.adapters.runlog.processes import process_is_gone, this_process
from imgsave.adapters.runlog.writer import SUFFIX

UNSETTLED = "unsettled"


@dataclass(frozen=True)
class Marker:
    run: str
    process: str
    path: Path

    @property
    def log(self) -> Path:
        return self.path.parents[2] / f"{self.run}{SUFFIX}"

    def gone(self) -> bool:
        return process_is_gone(self.process)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def mark(log_dir: Path, db_id: str, run: str) -> Marker:
    """Before the run's first purchase: on disk (fsynced) before anything is bought."""
    folder = log_dir / UNSETTLED / db_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / run
    process = this_process()
    with open(path, "w", encoding="ascii") as out:
        out.write(process + "\n")
        out.flush()
        os.fsync(out.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return Marker(run, process, path)


def marked(log_dir: Path, db_id: str) -> list[Marker]:
    """This database's markers on this host."""
    folder = log_dir / UNSETTLED / db_id
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            process = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            process = ""
        found.append(Marker(path.name, process, path))
    return found


def every_marker(log_dir: Path) -> list[Marker]:
    """Every database's markers on this host (prune keeps the logs they name)."""
    root = log_dir / UNSETTLED
    found: list[Marker] = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        found += marked(log_dir, folder.name)
    return found


def records(log: Path) -> Iterator[dict[str, Any]]:
    """The whole records of one run's log (a line cut short by a crash is skipped)."""
    try:
        handle = log.open("rb")
    except OSError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record
