"""What audit reads of imgsave's own history: the ledger's images that have a URL, as the
sightings a log's lines become, spilled into the same partitions as the logs' (by project), so
that one diff takes both. A query, not a folder of files: its cost follows the rows asked for,
never the size of a host's log history."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.core.log_history import write_chunk

# What one ledger row weighs against log text, for sizing partitions (log_history): an image
# is two JSON lines of about 230 bytes in its run's log.
ROW_BYTES = 460
# Rows held for all partitions at once before a partition's are written out: memory stays
# bounded however many partitions there are.
BUFFERED = 50_000


async def spill(
    ledger: LedgerRows,
    projects: Sequence[str] | None,
    since: float | None,
    *,
    partitions: int,
    folder: Path,
    place: Callable[[str, int], int],
) -> list[Path | None]:
    """Write the ledger's sightings (of these projects; since `since`) to one file per
    partition under `folder`, each row in partition `place(project, partitions)`; per
    partition its file (None: no row fell in it)."""
    parts: list[Path | None] = [None] * partitions
    buffers: list[list[tuple[Any, ...]]] = [[] for _ in range(partitions)]
    handles: dict[int, BinaryIO] = {}
    chunk = max(64, BUFFERED // partitions)
    with ExitStack() as files:

        def write(part: int) -> None:
            if part not in handles:
                path = parts[part] = folder / f"ledger-{partitions}-p{part:03d}.bin"
                handles[part] = files.enter_context(path.open("wb"))
            write_chunk(buffers[part], handles[part])

        placed: dict[str, int] = {}  # a project's rows are many; its hash is one
        async for rows in ledger.sightings(projects, since):
            for row in rows:
                part = placed.get(row[0])
                if part is None:
                    part = placed[row[0]] = place(row[0], partitions)
                buffers[part].append(row)
                if len(buffers[part]) >= chunk:
                    write(part)
        for part, buffer in enumerate(buffers):
            if buffer:
                write(part)
    return parts


async def by_project(
    ledger: LedgerRows,
    projects: Sequence[str] | None,
    since: float | None,
    folder: Path,
    rows: int,
) -> AsyncIterator[list[Path]]:
    """The ledger's sightings a project after another, in files of some `rows` rows, each
    holding whole projects: each file is there to be diffed while the next is read. For a diff
    of the ledger alone (LedgerRows.sightings)."""
    number = held = 0
    last: str | None = None
    out: BinaryIO | None = None
    path = folder
    async for batch in ledger.sightings(projects, since, alone=True):
        start, at = 0, max(0, rows - held)
        while at < len(batch):
            if batch[at][0] == (batch[at - 1][0] if at else last):
                at += 1  # the same project: never split
                continue
            if at > start:
                out = out or (path := folder / f"ledger-{number:05d}.bin").open("wb")
                write_chunk(batch[start:at], out)
            if out is not None:
                out.close()
                out, number = None, number + 1
                yield [path]
            start, held, at = at, 0, at + rows
        out = out or (path := folder / f"ledger-{number:05d}.bin").open("wb")
        write_chunk(batch[start:], out)
        held += len(batch) - start
        last = batch[-1][0]
    if out is not None:
        out.close()
        yield [path]
