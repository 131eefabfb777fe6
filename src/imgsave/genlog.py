"""The generation log: one JSON-lines file per run, the record audit and repair trust.

`image.generated` is written and fsynced before the save is attempted: an image that was paid
for is on disk even if the process dies the next instant. fsync costs milliseconds on real
disks, so concurrent durable writes share one fsync, run off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import CannotWork

VERSION = 1


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def timestamp(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class RunLog:
    """Appends one run's events to `<log dir>/<run id>.jsonl`."""

    def __init__(self, directory: Path, run_id: str | None = None):
        self.run_id = run_id or new_run_id()
        self.path = directory / f"{self.run_id}.jsonl"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise CannotWork(f"cannot write the generation log in {directory}: {exc}") from None
        self._written = 0
        self._synced = 0
        self._syncing: asyncio.Task[None] | None = None

    def write(self, event: str, **fields: Any) -> None:
        """Append one event (reaching the disk at the next fsync; see `record`)."""
        if self._fd is None:
            raise ValueError("log is closed")
        record = {"v": VERSION, "ts": timestamp(), "run": self.run_id, "event": event, **fields}
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        self._written += 1

    async def record(self, event: str, **fields: Any) -> None:
        """Append one event and return only once it is on disk."""
        self.write(event, **fields)
        target = self._written
        while self._synced < target:
            if self._syncing is None:
                self._syncing = asyncio.create_task(self._sync())
            await asyncio.shield(self._syncing)

    async def _sync(self) -> None:
        upto = self._written
        try:
            await asyncio.to_thread(os.fsync, self._fd)
            self._synced = max(self._synced, upto)
        finally:
            self._syncing = None

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
