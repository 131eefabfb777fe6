"""The claims table's statements: creating it, taking claims, finding their holders, extending
and releasing them. What to claim, and when a claim may be trusted, is operations/claims.py's;
this module only runs the SQL, through the database's retried, translated statements. The
table's DDL is sql/claims_table.sql."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.install import CLAIMS, claims_table
from imgsave.core.redaction import redact
from imgsave.errors import ClaimsUnavailable


class ClaimRows:
    """The claims of one database (the same pool, retries and error translation)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def ensure_table(self) -> None:
        """Create the claims table if it is not there (`imgsave sql` also creates it)."""

        if await self._db._table_exists(self._db._sql.claims, "look for the claims table"):
            return
        schema = self._db._sql.table.schema
        try:
            async with self._db._connection() as conn, conn.transaction():
                # Two hosts starting at once would both try to create it; a lock that ends with
                # the transaction (so the pooler is no trouble) lets one do it.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (CLAIMS,))
                await conn.execute(claims_table(schema).encode())
        except psycopg.Error as exc:
            # The primary message only: the statement psycopg quotes is the whole DDL.
            reason = exc.diag.message_primary or type(exc).__name__
            raise ClaimsUnavailable(
                f"cannot create the claims table {self._db._sql.claims.as_string(None)}: "
                f"{redact(reason, self._db._secrets)} (run `imgsave sql --apply` as the table's "
                "owner, or grant CREATE on its schema; on one host only, [claims] enabled = "
                "false does without)"
            ) from None

    async def take(
        self,
        project: str,
        scenes: Sequence[str],
        *,
        run: str,
        host: str,
        process: str,
        expiry: float,
        dead: Sequence[str] = (),
    ) -> list[tuple[str, float | None]]:
        """Claim `scenes` of `project` for `run`: those free, expired, already this run's, or
        held by one of the `dead` processes. One statement: concurrent claims of one scene are
        serialised by its key, and one wins. Returns each scene taken, with when the claim of
        the other run it was taken from began (epoch seconds), or None: that run never
        released it, so it may have paid for images it did not live to save."""

        rows, _ = await self._db._run(
            f"claim scenes of project {project}",
            sql.SQL(
                "WITH prior AS (SELECT scene, claimed_at FROM {c} WHERE project = %(p)s AND "
                "scene = ANY(%(scenes)s::text[]) AND run <> %(run)s) "
                "INSERT INTO {c} AS c (project, scene, run, host, process, claimed_at, "
                "expires_at) SELECT %(p)s, s, %(run)s, %(host)s, %(process)s, now(), "
                "now() + make_interval(secs => %(expiry)s) FROM unnest(%(scenes)s::text[]) "
                "AS s ON CONFLICT (project, scene) DO UPDATE SET run = excluded.run, "
                "host = excluded.host, process = excluded.process, claimed_at = "
                "excluded.claimed_at, expires_at = excluded.expires_at WHERE "
                "c.expires_at < now() OR c.run = excluded.run OR c.process = "
                "ANY(%(dead)s::text[]) RETURNING scene, (SELECT extract(epoch FROM "
                "prior.claimed_at)::float8 FROM prior WHERE prior.scene = c.scene)"
            ).format(c=self._db._sql.claims),
            {
                "p": project,
                "run": run,
                "host": host,
                "process": process,
                "expiry": expiry,
                "scenes": list(scenes),
                "dead": list(dead),
            },
        )
        return [(row[0], row[1]) for row in rows]

    async def holders(
        self, project: str, scenes: Sequence[str]
    ) -> list[tuple[str, str, str, str, float]]:
        """Who holds these scenes: (scene, host, process, run, seconds until it expires)."""

        rows, _ = await self._db._run(
            f"read the claims of project {project}",
            sql.SQL(
                "SELECT scene, host, process, run, greatest(0, extract(epoch FROM "
                "expires_at - now()))::float8 FROM {c} "
                "WHERE project = %s AND scene = ANY(%s::text[])"
            ).format(c=self._db._sql.claims),
            (project, list(scenes)),
        )
        return rows

    async def extend(self, run: str, expiry: float) -> list[tuple[str, str]]:
        """Push back the expiry of every claim `run` still holds; returns (project, scene) of
        each one extended (a claim that expired and was taken by another run is not)."""

        rows, _ = await self._db._run(
            "extend the run's claims",
            sql.SQL(
                "UPDATE {c} SET expires_at = now() + make_interval(secs => %s) "
                "WHERE run = %s RETURNING project, scene"
            ).format(c=self._db._sql.claims),
            (expiry, run),
        )
        return rows

    async def release(self, run: str, project: str | None = None) -> None:
        """Drop `run`'s claims (on one project, or all of them)."""

        await self._db._run(
            "release the run's claims",
            sql.SQL("DELETE FROM {c} WHERE run = %s AND (%s::text IS NULL OR project = %s)").format(
                c=self._db._sql.claims
            ),
            (run, project, project),
        )

    async def release_scenes(self, run: str, project: str, scenes: Sequence[str]) -> None:
        """Drop `run`'s claims on these scenes of `project` (a batch's, once collected)."""

        await self._db._run(
            f"release the claims of project {project}",
            sql.SQL(
                "DELETE FROM {c} WHERE run = %s AND project = %s AND scene = ANY(%s::text[])"
            ).format(c=self._db._sql.claims),
            (run, project, list(scenes)),
        )
