"""`imgsave sql` and `imgsave journal prune`: what imgsave installs in the app's database,
printed for a migration or applied in one transaction; a new identity for a restored copy; the
journal's upkeep."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.install import (
    APPEND,
    JOURNAL,
    SUPABASE_ROLES,
    Options,
    install,
    uninstall,
)
from imgsave.core.result_json import NOT_IN_JSON, FieldsResult
from imgsave.core.settings import Settings
from imgsave.operations import upkeep
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class SqlResult(FieldsResult):
    script: str = field(metadata=NOT_IN_JSON)
    applied: bool
    journal: bool
    uninstall: bool
    table: str
    granted: str

    def render(self, console: Console) -> None:
        if not self.applied:
            # The SQL itself, byte for byte: no wrapping, no markup.
            console.out(self.script, end="", highlight=False)
            return
        parts = f"{APPEND}()" + (f" and the journal ({JOURNAL})" if self.journal else "")
        if self.uninstall:
            console.print(f"sql: removed {parts} from {shown(self.table)}", markup=False)
        else:
            console.print(
                f"sql: installed {parts} on {shown(self.table)}; EXECUTE granted to {self.granted}",
                markup=False,
            )


@dataclass
class IdentityResult(FieldsResult):
    script: str = field(metadata=NOT_IN_JSON)
    applied: bool
    old: str | None
    new: str | None
    # Purchases on their way under the old identity: the original database's, not this one's.
    left_behind: int

    def render(self, console: Console) -> None:
        if not self.applied:
            console.out(self.script, end="", highlight=False)
            return
        console.print(
            f"sql: this database's identity is now {self.new} (it was {self.old or 'unset'})"
            + (
                f"; {self.left_behind} purchases still on their way belong to the database "
                "this one was copied from, and are left to it"
                if self.left_behind
                else ""
            ),
            markup=False,
        )


async def run_new_identity(settings: Settings, *, apply: bool) -> IdentityResult:
    """A new identity for this database (printed, or applied): what a copy restored from
    another database's snapshot needs before it runs anything else."""
    async with await Database.from_settings(settings, max_size=1) as db:
        done = await upkeep.renew_identity(db, apply=apply)
    return IdentityResult(done.script, apply, done.old, done.new, done.left_behind)


async def run_sql(settings: Settings, *, journal: bool, apply: bool, remove: bool) -> SqlResult:
    """The migration for the configured table (its types read from the catalog), or its
    removal; with `apply`, run in one transaction (through a transaction pooler too)."""
    grant = settings.sql.grant or None
    options = Options(journal=journal, grant=grant, allow_http=settings.allow_http)
    async with await Database.from_settings(settings, max_size=1) as db:
        table = db.table
        script = uninstall(table, options) if remove else install(table, settings.shape, options)
        if apply:
            await db.connector.apply(
                script, "remove imgsave's SQL" if remove else "install imgsave's SQL"
            )
    return SqlResult(
        script=script,
        applied=apply,
        journal=journal,
        uninstall=remove,
        table=f"{table.schema}.{table.name}",
        granted=", ".join(grant) if grant else f"{' and '.join(SUPABASE_ROLES)} where they exist",
    )


@dataclass
class JournalPruneResult(FieldsResult):
    executed: bool
    older_than: str
    removed: int

    def to_json(self) -> dict[str, object]:
        # A dry run removed nothing: it says what it would remove, under that name.
        count = "removed" if self.executed else "would_remove"
        return {"executed": self.executed, "older_than": self.older_than, count: self.removed}

    def render(self, console: Console) -> None:
        verb = "removed" if self.executed else "would remove (run with --execute)"
        console.print(
            f"journal prune: {verb} {self.removed} journal rows older than "
            f"{shown(self.older_than)}",
            markup=False,
        )


async def run_journal_prune(
    settings: Settings, older_than: timedelta, *, label: str, execute: bool
) -> JournalPruneResult:
    """Delete (with `execute`) journal rows older than the window. Every row of one write has
    the same time, so a write is pruned whole and what is left is still classified right."""
    async with await Database.from_settings(settings, max_size=1) as db:
        before = datetime.now(UTC) - older_than
        removed = await upkeep.prune_journal(db, before, execute=execute)
    return JournalPruneResult(executed=execute, older_than=label, removed=removed)
