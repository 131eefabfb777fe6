"""This database's identity: a random id made once per database (sql/meta_table.sql), written
into every ledger row, log record, stored object's metadata and batch, so that a staging and a
prod database on one host never read each other's records, and a batch or job is only ever
collected into the database that paid for it."""

from __future__ import annotations

from psycopg import sql

from imgsave.adapters.postgres.connector import Connector
from imgsave.adapters.postgres.install import META, meta_table
from imgsave.errors import CannotWork

_READ = "SELECT value FROM {meta} WHERE key = %s"


async def ensure_identity(connector: Connector) -> str:
    """The identity, the table made (and the identity with it) by the first command that
    needs it; CannotWork when the database will not take it (nothing is bought then)."""
    table = connector.table(META)
    name = table.as_string(None)
    await connector.create(
        table,
        meta_table(connector.schema),
        error=lambda reason: CannotWork(
            f"cannot create {name}: {reason} (run `imgsave sql --apply` as the table's owner, "
            "or grant CREATE on its schema)"
        ),
    )
    found = await read_identity(connector)
    if found is None:
        # The table was there without its row (someone deleted it): made again, once.
        await connector.apply(meta_table(connector.schema), f"write {name}")
        found = await read_identity(connector)
    if found is None:  # pragma: no cover - the statement above inserts it
        raise CannotWork(f"{name} holds no database_id")
    return found


async def read_identity(connector: Connector) -> str | None:
    """The identity, or None where no command has made it yet (audit reads without writing)."""
    return await read_note(connector, "database_id")


async def read_note(connector: Connector, key: str) -> str | None:
    """A value imgsave keeps beside the identity, or None."""
    table = connector.table(META)
    if not await connector.table_exists(table, "look for imgsave's identity table"):
        return None
    rows, _ = await connector.run("read imgsave's notes", sql.SQL(_READ).format(meta=table), (key,))
    return str(rows[0][0]) if rows else None


async def write_note(connector: Connector, key: str, value: str) -> None:
    """Keep `value` under `key` beside the identity (the table exists: ensure_identity)."""
    await connector.run(
        "write imgsave's notes",
        sql.SQL(
            "INSERT INTO {meta} (key, value) VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value, updated_at = now()"
        ).format(meta=connector.table(META)),
        (key, value),
    )
