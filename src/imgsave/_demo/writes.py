"""The writes imgsave itself never makes: creating demo documents, and the incident's blind
overwrite. They live here so that `adapters.postgres.database.Database` stays the one safe
writer."""

from __future__ import annotations

from psycopg import sql

from imgsave.adapters.postgres.database import Database


class DemoDatabase(Database):
    """A Database that can also set documents up and overwrite them the way the incident did."""

    async def put(self, project: str, text: str | None) -> None:
        """Create or replace a project's document (demo and test set-up, not the save path)."""
        t = self.table
        statement = sql.SQL(
            "INSERT INTO {t} ({k}, {d}) VALUES (%s, %s::{dt}) ON CONFLICT ({k}) DO UPDATE "
            "SET {d} = excluded.{d}"
        ).format(
            t=sql.Identifier(t.schema, t.name),
            k=sql.Identifier(t.key_column),
            d=sql.Identifier(t.document_column),
            dt=sql.SQL(t.document_type),
        )
        await self.connector.run(f"write project {project}", statement, (project, text))

    async def overwrite_unlocked(self, project: str, text: str) -> None:
        """The incident's write: no lock, no check, whatever was written meanwhile is lost."""
        t = self.table
        statement = sql.SQL("UPDATE {t} SET {d} = %s::{dt} WHERE {k} = %s").format(
            t=sql.Identifier(t.schema, t.name),
            k=sql.Identifier(t.key_column),
            d=sql.Identifier(t.document_column),
            dt=sql.SQL(t.document_type),
        )
        await self.connector.run(
            f"write project {project}", statement, (text, self.normalise_key(project))
        )
