"""The claims table's statements: creating it, taking claims, finding their holders, extending
and releasing them. What to claim, and when a claim may be trusted, is operations/claims.py's;
this module only runs the SQL, through the database's retried, translated statements. The
table's DDL is sql/claims_table.sql."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from imgsave.adapters.postgres.connector import Connector
from imgsave.adapters.postgres.install import CLAIMS, claims_table
from imgsave.errors import ClaimsUnavailable


class ClaimRows:
    """The claims of one database (the connector's retries and error translation)."""

    def __init__(self, connector: Connector) -> None:
        self._db = connector
        self._table = connector.table(CLAIMS)

    async def ensure_table(self) -> None:
        """Create the claims table if it is not there (`imgsave sql` also creates it)."""
        name = self._table.as_string(None)
        await self._db.create(
            self._table,
            claims_table(self._db.schema),
            error=lambda reason: ClaimsUnavailable(
                f"cannot create the claims table {name}: {reason} (run `imgsave sql --apply` as "
                "the table's owner, or grant CREATE on its schema; on one host only, [claims] "
                "enabled = false does without)"
            ),
        )

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

        rows, _ = await self._db.run(
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
            ).format(c=self._table),
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

        rows, _ = await self._db.run(
            f"read the claims of project {project}",
            sql.SQL(
                "SELECT scene, host, process, run, greatest(0, extract(epoch FROM "
                "expires_at - now()))::float8 FROM {c} "
                "WHERE project = %s AND scene = ANY(%s::text[])"
            ).format(c=self._table),
            (project, list(scenes)),
        )
        return rows

    async def extend(self, run: str, expiry: float) -> list[tuple[str, str]]:
        """Push back the expiry of every claim `run` still holds; returns (project, scene) of
        each one extended (a claim that expired and was taken by another run is not)."""

        rows, _ = await self._db.run(
            "extend the run's claims",
            sql.SQL(
                "UPDATE {c} SET expires_at = now() + make_interval(secs => %s) "
                "WHERE run = %s RETURNING project, scene"
            ).format(c=self._table),
            (expiry, run),
        )
        return rows

    async def release(self, run: str, project: str | None = None) -> None:
        """Drop `run`'s claims (on one project, or all of them)."""

        await self._db.run(
            "release the run's claims",
            sql.SQL("DELETE FROM {c} WHERE run = %s AND (%s::text IS NULL OR project = %s)").format(
                c=self._table
            ),
            (run, project, project),
        )

    async def release_scenes(self, run: str, project: str, scenes: Sequence[str]) -> None:
        """Drop `run`'s claims on these scenes of `project` (a batch's, once collected)."""

        await self._db.run(
            f"release the claims of project {project}",
            sql.SQL(
                "DELETE FROM {c} WHERE run = %s AND project = %s AND scene = ANY(%s::text[])"
            ).format(c=self._table),
            (run, project, list(scenes)),
        )
