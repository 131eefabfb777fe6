"""The writes imgsave itself never makes: creating demo documents, and the incident's blind
overwrite. They live here so that `adapters.postgres.database.Database` stays the one safe
writer."""

from __future__ import annotations

import psycopg

from imgsave.adapters.postgres.database import Database
from imgsave.errors import CannotWork


class DemoDatabase(Database):
    """A Database that can also set documents up and overwrite them the way the incident did."""

    async def put(self, project: str, text: str | None) -> None:
        """Create or replace a project's document (demo and test set-up, not the save path)."""
        await self._write(project, self._sql.upsert, (project, text))

    async def overwrite_unlocked(self, project: str, text: str) -> None:
        """The incident's write: no lock, no check, whatever was written meanwhile is lost."""
        await self._write(project, self._sql.update, (text, self.normalise_key(project)))

    async def _write(
        self, project: str, statement: psycopg.sql.Composed, params: tuple[object, ...]
    ) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(statement, params)
        except psycopg.Error as exc:
            raise CannotWork(f"project {project}: could not write: {self._one_line(exc)}") from None
