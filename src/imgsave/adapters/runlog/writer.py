"""The generation log: one JSON-lines file per run, the record audit and repair trust.

`image.generated` is written and fsynced before the save is attempted: an image that was paid
for is on disk even if the process dies the next instant. fsync costs milliseconds on real
disks, so concurrent durable writes share one fsync, run off the event loop.

A write that fails (disk full, I/O error) must not leave half a record behind: the file is cut
back to the last whole line, and the log refuses every later write, so the run stops spending
and reports the images it holds instead of trusting a log that no longer records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from imgsave.errors import CannotWork, LogUnwritable

VERSION = 1
SUFFIX = ".jsonl"


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def timestamp(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class RunLog:
    """Appends one run's events to `<log dir>/<run id>.jsonl`.

    The file is created by the first write, so a run with nothing to record (a cron repair that
    found nothing) leaves no file behind; the directory is checked up front all the same.
    """

    def __init__(self, directory: Path, run_id: str | None = None, *, db_id: str | None = None):
        self.run_id = run_id or new_run_id()
        # Every record names the database it concerns: a later run on this host settles only
        # its own database's records (staging and prod never mix).
        self._db = {"db": db_id} if db_id else {}
        self.path = directory / f"{self.run_id}{SUFFIX}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CannotWork(
                f"cannot write the generation log in {directory}: {exc.strerror}"
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise CannotWork(f"cannot write the generation log in {directory}: permission denied")
        self._fd: int | None = None
        self._size = 0
        self._closed = False
        self.broken: str | None = None
        self._written = 0
        self._synced = 0
        self._syncing: asyncio.Task[None] | None = None

    @property
    def written(self) -> bool:
        """Whether this run wrote a record (its file exists)."""
        return self._written > 0

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._size = os.fstat(self._fd).st_size
            except OSError as exc:
                self._fail(exc)
        return self._fd

    def _fail(self, exc: OSError) -> NoReturn:
        self.broken = f"cannot write the generation log {self.path}: {exc.strerror or exc}"
        raise LogUnwritable(self.broken)

    def write(self, event: str, **fields: Any) -> None:
        """Append one whole event line (on disk at the next fsync; see `record`).

        Raises LogUnwritable when the line cannot be written whole; nothing of it is left.
        """
        if self._closed:
            raise ValueError("log is closed")
        if self.broken:
            raise LogUnwritable(self.broken)
        record = {
            "v": VERSION, "ts": timestamp(), "run": self.run_id, "event": event, **self._db,
            **fields,
        }  # fmt: skip
        # ASCII only: a lone surrogate in some field can then never make a record unwritable.
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")
        fd = self._open()
        view = memoryview(data)
        try:
            while view:
                count = os.write(fd, view)
                if count <= 0:  # pragma: no cover - os.write raises rather than return 0
                    raise OSError(28, "no space left on device")
                view = view[count:]
        except OSError as exc:
            # If even this fails, the reader still never takes a torn last line for a record.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            self._fail(exc)
        self._size += len(data)
        self._written += 1

    async def record(self, event: str, **fields: Any) -> None:
        """Append one event and return only once it is on disk."""
        self.write(event, **fields)
        target = self._written
        while self._synced < target:
            if self.broken:
                raise LogUnwritable(self.broken)
            if self._syncing is None:
                self._syncing = asyncio.create_task(self._sync())
            await asyncio.shield(self._syncing)

    async def _sync(self) -> None:
        upto = self._written
        try:
            await asyncio.to_thread(os.fsync, self._open())
            self._synced = max(self._synced, upto)
        except OSError as exc:
            self._fail(exc)
        finally:
            self._syncing = None

    def close(self) -> None:
        """Flush and close; a failure here is kept in `broken`, never raised."""
        self._closed = True
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.broken = self.broken or f"cannot write the generation log {self.path}: {exc}"
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
