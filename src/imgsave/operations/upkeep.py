"""The upkeep of what imgsave keeps, for cron and for an operator: retention (the ledger's
resolved rows and imgsave's own run logs; the journal), a restored copy's own identity, and
finding this database's ledger without making it.

A row still on its way to its scene (requested, received, stored) is never pruned, however
old: a pending batch or job is money spent. Nor is a run log whose records a marker says the
ledger may not have yet (adapters/runlog/unsettled.py): it is the only record of what it holds
until a run on this host settles it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.identity import (
    ensure_identity,
    read_identity,
    read_note,
    write_note,
)
from imgsave.adapters.postgres.install import new_identity
from imgsave.adapters.postgres.journal_rows import JournalRows
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.adapters.runlog import unsettled
from imgsave.adapters.runlog.reader import logs_before_the_ledger
from imgsave.adapters.runlog.writer import SUFFIX
from imgsave.errors import CannotWork


async def existing_ledger(db: Database) -> LedgerRows | None:
    """This database's ledger, or None where nothing was ever bought for it (nothing made)."""
    db_id = await read_identity(db.connector)
    ledger = LedgerRows(db.connector, db_id) if db_id else None
    return ledger if ledger is not None and await ledger.exists() else None


async def made_ledger(db: Database) -> LedgerRows:
    """This database's ledger, made (and its identity) if missing."""
    ledger = LedgerRows(db.connector, await ensure_identity(db.connector))
    await ledger.ensure_table()
    return ledger


def _imported(host: str) -> str:
    return f"imported:{host}"


async def note_import(db: Database, host: str) -> None:
    """`ledger import` ran on `host`: its logs from before the ledger are in it."""
    await write_note(db.connector, _imported(host), datetime.now(UTC).isoformat())


async def unimported(db: Database, log_dir: Path, host: str) -> list[str]:
    """A note for audit, where this host's log folder holds logs from before the ledger that
    no `ledger import` on this host took into this database: audit reads the ledger alone."""
    if await read_note(db.connector, _imported(host)) is not None:
        return []
    count = await asyncio.to_thread(logs_before_the_ledger, log_dir)
    if not count:
        return []
    return [
        f"{count} run log(s) in {log_dir} are from before the ledger, and audit reads the "
        "ledger: `imgsave ledger import` takes what they hold into it, once (or name the "
        "folder with --log)"
    ]


@dataclass
class Pruned:
    files: list[str] = field(default_factory=list)
    kept: int = 0
    bytes: int = 0
    # Ledger rows that reached their end (saved, failed, refused, lost, orphaned) before the
    # window: removed, or to be removed.
    ledger_rows: int = 0


async def prune(db: Database, log_dir: Path, cutoff: float, *, execute: bool) -> Pruned:
    """Remove (with `execute`) resolved ledger rows and run logs last written before `cutoff`
    (epoch seconds)."""
    done = Pruned()
    ledger = await existing_ledger(db)
    if ledger is not None:
        done.ledger_rows = await ledger.prune(cutoff, execute=execute)
    await asyncio.to_thread(_prune_logs, log_dir, cutoff, done, execute)
    return done


def _prune_logs(log_dir: Path, cutoff: float, done: Pruned, execute: bool) -> None:
    if not log_dir.is_dir():
        return
    held = {marker.log for marker in unsettled.every_marker(log_dir)}
    for path in sorted(log_dir.glob(f"*{SUFFIX}")):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_mtime >= cutoff or path in held:
            done.kept += 1
            continue
        if execute:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CannotWork(f"cannot remove {path}: {exc.strerror}") from None
        done.files.append(str(path))
        done.bytes += info.st_size


async def prune_journal(db: Database, before: datetime, *, execute: bool) -> int:
    """Delete (or count) journal rows older than `before`."""
    journal = JournalRows(db.connector)
    if not await journal.installed():
        raise CannotWork("this database has no imgsave journal (imgsave sql --journal)")
    return await journal.prune(before.astimezone(UTC), execute=execute)


@dataclass
class Renewed:
    script: str
    old: str | None
    new: str | None = None
    # Purchases on their way under the old identity: the original database's, not this one's.
    left_behind: int = 0


async def renew_identity(db: Database, *, apply: bool) -> Renewed:
    """A new identity for this database (the SQL, and with `apply` applied): what a copy
    restored from another database's snapshot needs before it runs anything else."""
    done = Renewed(new_identity(db.table.schema), await read_identity(db.connector))
    if not apply:
        return done
    ledger = await existing_ledger(db)
    done.left_behind = len(await ledger.unresolved()) if ledger is not None else 0
    await db.connector.apply(done.script, "give this database a new identity")
    done.new = await read_identity(db.connector)
    return done
