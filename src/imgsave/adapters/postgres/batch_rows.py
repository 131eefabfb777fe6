"""The batches table's statements (sql/batches_table.sql): every batch submitted for this
database, by any host, and whether some run has collected it. Which images a batch holds is the
ledger's (ledger_rows.py); this is the batch as a whole, for `imgsave batches`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from imgsave.adapters.postgres.connector import Connector
from imgsave.adapters.postgres.install import BATCHES, batches_table
from imgsave.errors import CannotWork

# A batches table made before the ledger lacks this column: it is brought up to date once.
_NEWEST_COLUMN = "submitted_at"


@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    kind: str
    run: str
    images: int
    collected: bool


class BatchRows:
    """This database's batches (the connector's retries and error translation)."""

    def __init__(self, connector: Connector, db_id: str) -> None:
        self._db = connector
        self._db_id = db_id
        self._table = connector.table(BATCHES)
        self._ready = False

    async def ensure_table(self) -> None:
        """Create the table, or bring one made before the ledger up to date."""
        if self._ready:
            return
        name = self._table.as_string(None)
        rows, _ = await self._db.run(
            f"look for {name}",
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s AND column_name = %s",
            (self._db.schema, BATCHES, _NEWEST_COLUMN),
        )
        if not rows[0][0]:
            await self._db.migrate(
                self._table,
                batches_table(self._db.schema),
                error=lambda reason: CannotWork(f"cannot create {name}: {reason}"),
            )
        self._ready = True

    async def submitted(
        self, batch_id: str, kind: str, run: str, input_file: str, images: int
    ) -> None:
        await self._db.run(
            f"record batch {batch_id}",
            sql.SQL(
                "INSERT INTO {b} (batch_id, db_id, kind, run, input_file, images) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (batch_id) DO NOTHING"
            ).format(b=self._table),
            (batch_id, self._db_id, kind, run, input_file, images),
        )

    async def collected(self, batch_id: str, *, saved: int, failed: int, lost: int) -> None:
        await self._db.run(
            f"mark batch {batch_id} collected",
            sql.SQL(
                "UPDATE {b} SET collected_at = now(), saved = saved + %s, failed = failed + %s, "
                "lost = lost + %s WHERE batch_id = %s AND db_id = %s"
            ).format(b=self._table),
            (saved, failed, lost, batch_id, self._db_id),
        )

    async def listed(self, batch_ids: Sequence[str] | None = None) -> list[BatchRow]:
        """This database's batches (of these ids), newest first."""
        rows, _ = await self._db.run(
            "read the batches",
            sql.SQL(
                "SELECT batch_id, kind, run, images, collected_at IS NOT NULL FROM {b} "
                "WHERE db_id = %s AND (%s::text[] IS NULL OR batch_id = ANY(%s::text[])) "
                "ORDER BY submitted_at DESC"
            ).format(b=self._table),
            (self._db_id, _list(batch_ids), _list(batch_ids)),
        )
        return [BatchRow(*row) for row in rows]


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)
