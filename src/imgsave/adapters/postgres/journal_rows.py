"""The journal table's statements: is it installed, its rows in the order they were written (a
batch at a time), and pruning it. What the rows mean is core/journal_verdicts.py's; the
table and its trigger are sql/journal_*.sql."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from psycopg import sql

from imgsave.adapters.postgres.connector import Connector
from imgsave.adapters.postgres.install import JOURNAL
from imgsave.core.journal_verdicts import JournalRow


class JournalRows:
    """The journal of one database (the connector's retries and error translation)."""

    def __init__(self, connector: Connector) -> None:
        self._db = connector
        self._table = connector.table(JOURNAL)

    async def installed(self) -> bool:
        return await self._db.table_exists(self._table, "read the journal")

    async def rows(
        self, since: datetime | None, *, batch: int = 20_000
    ) -> AsyncIterator[list[JournalRow]]:
        """The journal in the order it was written, a batch at a time (never all in memory)."""
        query = sql.SQL(
            "SELECT id, extract(epoch FROM at)::float8, txid::text, project, scene_index, "
            "scene_id, url, change = 'added', scene_replaced FROM {j} WHERE id > %s "
            "AND (%s::timestamptz IS NULL OR at >= %s) ORDER BY id LIMIT %s"
        ).format(j=self._table)
        after = 0
        while True:
            found, _ = await self._db.run("read the journal", query, (after, since, since, batch))
            if not found:
                return
            rows = [JournalRow._make(row) for row in found]
            yield rows
            after = rows[-1].id

    async def prune(self, before: datetime, *, execute: bool, batch: int = 10_000) -> int:
        """Delete (or, without `execute`, count) journal rows older than `before`, in batches:
        short transactions that never hold up the app's writes for long."""
        journal = self._table
        if not execute:
            count = sql.SQL("SELECT count(*) FROM {j} WHERE at < %s").format(j=journal)
            rows, _ = await self._db.run("read the journal", count, (before,))
            return int(rows[0][0])
        delete = sql.SQL(
            "DELETE FROM {j} WHERE id IN (SELECT id FROM {j} WHERE at < %s ORDER BY id LIMIT %s)"
        ).format(j=journal)
        deleted = 0
        while True:
            _, done = await self._db.run("prune the journal", delete, (before, batch))
            deleted += done
            if done < batch:
                return deleted
