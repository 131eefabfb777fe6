"""The batches table's statements: which batches some run has already collected (on any
host), and marking one collected. What a batch is, and collecting it, is
operations/batches.py's; the table's DDL is sql/batches_table.sql."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.install import BATCHES, batches_table
from imgsave.core.redaction import redact
from imgsave.errors import CannotWork


class BatchRows:
    """The collected batches of one database (the same pool, retries and error translation)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._table = db._sql.batches

    async def ensure_table(self) -> None:
        """Create the table if it is not there (`imgsave sql` also creates it)."""
        if await self._db._table_exists(self._table, "look for the batches table"):
            return
        try:
            async with self._db._connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (BATCHES,))
                await conn.execute(batches_table(self._db._sql.table.schema).encode())
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or type(exc).__name__
            raise CannotWork(
                f"cannot create the batches table {self._table.as_string(None)}: "
                f"{redact(reason, self._db._secrets)} (run `imgsave sql --apply` as the table's "
                "owner, or grant CREATE on its schema)"
            ) from None

    async def collected(self, batch_ids: Sequence[str]) -> set[str]:
        """Which of these batches were collected already."""
        if not batch_ids:
            return set()
        rows, _ = await self._db._run(
            "read the collected batches",
            sql.SQL("SELECT batch_id FROM {b} WHERE batch_id = ANY(%s::text[])").format(
                b=self._table
            ),
            (list(batch_ids),),
        )
        return {row[0] for row in rows}

    async def mark(self, batch_id: str, *, saved: int, failed: int, lost: int) -> None:
        await self._db._run(
            f"mark batch {batch_id} collected",
            sql.SQL(
                "INSERT INTO {b} (batch_id, saved, failed, lost) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (batch_id) DO NOTHING"
            ).format(b=self._table),
            (batch_id, saved, failed, lost),
        )
