"""The ledger's statements (sql/ledger_table.sql): what this database paid for, one row per
image, readable by every host. What the rows mean is core/ledger.py's; acting on them is
operations/. Every statement names this database's identity, so a restored copy that was given
its own (`imgsave sql --new-identity`) never takes another database's rows for its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from imgsave.adapters.postgres.connector import Conn, Connector
from imgsave.adapters.postgres.install import LEDGER, ledger_table
from imgsave.core.documents import SceneRef
from imgsave.core.ledger import (
    UNRESOLVED,
    Edit,
    Handle,
    Kept,
    Mode,
    Move,
    NewPurchase,
    Purchase,
    State,
    scene_key,
)
from imgsave.errors import CannotWork, DatabaseUnavailable, LedgerUnavailable

_OPEN = sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(str(s)) for s in sorted(UNRESOLVED)))
# A purchase that has its image, or may still get it.
_TAKING = sql.SQL("({})").format(
    sql.SQL(", ").join(sql.Literal(str(s)) for s in sorted(UNRESOLVED | {State.SAVED}))
)

# What a read gives, in this order (Purchase._from_row).
_COLUMNS = sql.SQL(
    "id, project, scene_index, scene_id, slot, run, host, kind, mode, state, job_id, poll_url, "
    "result_url, cancel_url, batch_id, custom_id, input_file, url, object_key, sha256, bytes, "
    "content_type, source_url, spool, replaces, edit, error, "
    "extract(epoch FROM requested_at)::float8, lease_run, lease_process, "
    "coalesce(extract(epoch FROM lease_until - now()), 0)::float8"
)


def _with_url(*states: State) -> sql.Composed:
    """This database's rows in `states` that have a URL (of the projects asked for, bought
    since the time asked for: the parameters of `_sighted`)."""
    return sql.SQL(
        "db_id = %(db)s AND url IS NOT NULL AND state IN ({states}) "
        "AND (%(projects)s::text[] IS NULL OR project = ANY(%(projects)s::text[])) "
        "AND (%(since)s::float8 IS NULL OR requested_at >= to_timestamp(%(since)s::float8))"
    ).format(states=sql.SQL(", ").join(sql.Literal(str(state)) for state in states))


# The images their scenes should hold; those whose scene was gone when they came.
_SIGHTED = _with_url(State.STORED, State.SAVED)
_ORPHANED = _with_url(State.ORPHANED)

_KEPT = ("url", "object_key", "sha256", "bytes", "content_type", "source_url", "spool")
_HANDLE = ("job_id", "poll_url", "result_url", "cancel_url", "batch_id", "custom_id", "input_file")

# A move is allowed from these states (core.ledger.may_move, as SQL): forward only, never out of
# `saved`, and out of `lost` only to `stored` or `saved` (its image turned up after all).
_ALLOWED = sql.SQL(
    "(l.state IN ('requested', 'received') OR (l.state = 'stored' AND m.state NOT IN "
    "('requested', 'received')) OR (l.state = 'lost' AND m.state IN ('stored', 'saved')))"
)


@dataclass(frozen=True)
class Sighted:
    rows: int
    oldest: float | None


# A batch's line not yet answered: counted in SQL, not read row by row (a batch holds up to
# 50,000 of them, and what waits for it is only how many).
_WAITING_IN_BATCH = sql.SQL("(mode = {batch} AND state = {requested})").format(
    batch=sql.Literal(str(Mode.BATCH)), requested=sql.Literal(str(State.REQUESTED))
)


@dataclass(frozen=True)
class Waiting:
    """The requested rows of one batch of one kind; with no batch id (its create answer was
    lost), of one input file, by which the batch is found in the provider's list."""

    kind: str
    batch_id: str | None
    input_file: str | None
    rows: int


class LedgerRows:
    """The ledger of one database, for one identity."""

    def __init__(self, connector: Connector, db_id: str) -> None:
        self._db = connector
        self.db_id = db_id
        self._table = connector.table(LEDGER)

    async def ensure_table(self) -> None:
        """Create the ledger if it is not there (`imgsave sql` also creates it). If it cannot
        be made, nothing may be bought: the caller stops before any request."""
        name = self._table.as_string(None)
        await self._db.create(
            self._table,
            ledger_table(self._db.schema),
            error=lambda reason: LedgerUnavailable(
                f"cannot create the ledger {name}: {reason}; nothing was bought (run `imgsave "
                "sql --apply` as the table's owner, or grant CREATE on its schema)"
            ),
        )

    async def exists(self) -> bool:
        return await self._db.table_exists(self._table, "look for the ledger")

    # -- writing -------------------------------------------------------------------------------

    async def add(
        self, new: Sequence[NewPurchase], *, run: str, host: str, process: str, kind: str,
        lease: float,
    ) -> list[Purchase]:  # fmt: skip
        """Write `new` (committed, one statement) before anything is bought for it; the rows
        come back in the same order, leased to `run` for `lease` seconds (the run extends the
        lease while it lives; a row whose lease lapses is anyone's to settle)."""
        if not new:
            return []
        records = [_record(p) for p in new]
        try:
            rows = await self._insert(
                records, run=run, host=host, process=process, kind=kind, lease=lease
            )
        except DatabaseUnavailable:
            raise
        except CannotWork as exc:
            raise LedgerUnavailable(f"{exc}; nothing was bought") from None
        made = {(p.project, p.scene, p.slot): p for p in map(_purchase, rows)}
        # Matched by (project, scene, slot), unique within one run's insert: RETURNING's order
        # is PostgreSQL's, not a promise.
        return [made[(p.project, scene_key(p.ref), p.slot)] for p in new]

    async def _insert(
        self, records: list[dict[str, Any]], *, run: str, host: str, process: str, kind: str,
        lease: float,
    ) -> list[Any]:  # fmt: skip
        rows, _ = await self._db.run(
            "record the images about to be bought in the ledger",
            sql.SQL(
                "INSERT INTO {t} (db_id, project, scene, scene_index, scene_id, slot, run, host, "
                "process, kind, mode, state, edit, replaces, job_id, poll_url, result_url, "
                "cancel_url, batch_id, custom_id, input_file, url, object_key, sha256, bytes, "
                "content_type, source_url, spool, error, requested_at, lease_run, lease_process, "
                "lease_until) "
                "SELECT %(db)s, r.project, r.scene, r.scene_index, r.scene_id, r.slot, %(run)s, "
                "%(host)s, %(process)s, coalesce(r.kind, %(kind)s), r.mode, r.state, r.edit, "
                "r.replaces, r.job_id, r.poll_url, r.result_url, r.cancel_url, r.batch_id, "
                "r.custom_id, r.input_file, "
                "r.url, r.object_key, r.sha256, r.bytes, r.content_type, r.source_url, r.spool, "
                "r.error, coalesce(to_timestamp(r.requested_at), now()), %(run)s, %(process)s, "
                "now() + make_interval(secs => %(lease)s) "
                "FROM jsonb_to_recordset(%(rows)s) AS r(project text, scene text, "
                "scene_index integer, scene_id text, slot integer, mode text, state text, "
                "edit text, replaces text[], job_id text, poll_url text, result_url text, "
                "cancel_url text, batch_id text, custom_id text, input_file text, url text, "
                "object_key text, sha256 text, bytes bigint, content_type text, "
                "source_url text, spool text, error text, requested_at float8, kind text) "
                "RETURNING {columns}"
            ).format(t=self._table, columns=_COLUMNS),
            {"db": self.db_id, "run": run, "host": host, "process": process, "kind": kind,
             "lease": lease, "rows": Jsonb(records)},
        )  # fmt: skip
        return rows

    async def move(self, moves: Sequence[Move]) -> set[int]:
        """Rows to their next state (where core.ledger.may_move allows it), in one statement;
        returns the ids moved."""
        if not moves:
            return set()
        rows, _ = await self._db.run(
            "record in the ledger", self._move_sql(), _moves(moves, self.db_id)
        )
        return {row[0] for row in rows}

    async def move_in(self, conn: Conn, moves: Sequence[Move]) -> None:
        """The same, inside the caller's transaction: the locked write that saves the URLs."""
        if moves:
            await conn.execute(self._move_sql(), _moves(moves, self.db_id))

    def _move_sql(self) -> sql.Composed:
        kept = sql.SQL(", ").join(
            sql.SQL("{c} = coalesce(m.{c}, l.{c})").format(c=sql.Identifier(c)) for c in _KEPT
        )
        return sql.SQL(
            "UPDATE {t} AS l SET state = m.state, {kept}, error = coalesce(m.error, l.error), "
            "updated_at = now() FROM jsonb_to_recordset(%(moves)s) AS m(id bigint, state text, "
            "url text, object_key text, sha256 text, bytes bigint, content_type text, "
            "source_url text, spool text, error text) "
            "WHERE l.id = m.id AND l.db_id = %(db)s AND {allowed} RETURNING l.id"
        ).format(t=self._table, kept=kept, allowed=_ALLOWED)

    async def set_handle(self, ids: Sequence[int], handle: Handle) -> None:
        """Where the provider keeps these rows' images (a job's id and URLs; a batch's input
        file, then its id): recorded before anyone waits on it."""
        given = {k: v for k, v in asdict(handle).items() if v is not None}
        if not ids or not given:
            return
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in given
        )
        await self._db.run(
            "record the provider's handle in the ledger",
            sql.SQL(
                "UPDATE {t} SET {a}, updated_at = now() WHERE id = ANY(%(ids)s) AND db_id = %(db)s"
            ).format(t=self._table, a=assignments),
            {**given, "ids": list(ids), "db": self.db_id},
        )

    async def for_batch(self, ids: Sequence[int], *, prefix: str, input_file: str) -> None:
        """These rows' lines went into one batch's input: each is named `prefix` + its id (the
        line's custom_id), and the input file is recorded before the batch is created."""
        await self._db.run(
            "record the batch's input in the ledger",
            sql.SQL(
                "UPDATE {t} SET custom_id = %s || id::text, input_file = %s, updated_at = now() "
                "WHERE id = ANY(%s) AND db_id = %s"
            ).format(t=self._table),
            (prefix, input_file, list(ids), self.db_id),
        )

    # -- leases ----------------------------------------------------------------------------------

    async def lease(
        self, ids: Sequence[int], *, run: str, process: str, seconds: float, dead: Sequence[str]
    ) -> list[Purchase]:
        """Take the settling of these unresolved rows: those whose lease lapsed, is this run's
        already, or is held by one of the `dead` processes (gone, on this host). Returns the
        rows taken; the rest are someone else's to finish."""
        if not ids:
            return []
        rows, _ = await self._db.run(
            "lease rows of the ledger",
            sql.SQL(
                "UPDATE {t} SET lease_run = %(run)s, lease_process = %(process)s, lease_until = "
                "now() + make_interval(secs => %(s)s) WHERE id = ANY(%(ids)s) AND db_id = %(db)s "
                "AND state IN {open} AND (lease_until IS NULL OR lease_until < now() OR "
                "lease_run = %(run)s OR lease_process = ANY(%(dead)s)) RETURNING {columns}"
            ).format(t=self._table, open=_OPEN, columns=_COLUMNS),
            {"run": run, "process": process, "s": seconds, "ids": list(ids),
             "db": self.db_id, "dead": list(dead)},
        )  # fmt: skip
        return [_purchase(row) for row in rows]

    async def extend(self, run: str, seconds: float) -> None:
        await self._db.run(
            "extend the run's leases in the ledger",
            sql.SQL(
                "UPDATE {t} SET lease_until = now() + make_interval(secs => %s) "
                "WHERE lease_run = %s AND state IN {open}"
            ).format(t=self._table, open=_OPEN),
            (seconds, run),
        )

    async def release(self, run: str, ids: Sequence[int] | None = None) -> None:
        """The run lets go of its unresolved rows (all, or these): anyone may settle them now."""
        await self._db.run(
            "release the run's leases in the ledger",
            sql.SQL(
                "UPDATE {t} SET lease_until = now() - interval '1 second' WHERE lease_run = %s "
                "AND state IN {open} AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[]))"
            ).format(t=self._table, open=_OPEN),
            (run, None if ids is None else list(ids), None if ids is None else list(ids)),
        )

    # -- reading -------------------------------------------------------------------------------

    async def unresolved(
        self, projects: Sequence[str] | None = None, *, waiting_in_batches: bool = True
    ) -> list[Purchase]:
        """This database's rows not yet in their scene (of these projects, or all): an indexed
        query whose cost grows with what is pending, never with history. Without
        `waiting_in_batches`, the requested lines of batches are left out (`waiting` counts
        them)."""
        leave_out = sql.SQL("" if waiting_in_batches else "AND NOT {} ").format(_WAITING_IN_BATCH)
        rows, _ = await self._db.run(
            "read the ledger",
            sql.SQL(
                "SELECT {columns} FROM {t} WHERE db_id = %s AND state IN {open} {leave_out}"
                "AND (%s::text[] IS NULL OR project = ANY(%s::text[])) ORDER BY id"
            ).format(t=self._table, open=_OPEN, columns=_COLUMNS, leave_out=leave_out),
            (self.db_id, _list(projects), _list(projects)),
        )
        return [_purchase(row) for row in rows]

    async def waiting(self, projects: Sequence[str] | None = None) -> list[Waiting]:
        """The requested lines of batches (of these projects, or all), counted batch by batch
        (or input file by input file, where the batch id is not known), oldest first."""
        rows, _ = await self._db.run(
            "read the ledger",
            sql.SQL(
                "SELECT kind, batch_id, input_file, count(*) FROM {t} WHERE db_id = %s "
                "AND {waiting} AND (%s::text[] IS NULL OR project = ANY(%s::text[])) "
                "GROUP BY kind, batch_id, input_file ORDER BY min(id)"
            ).format(t=self._table, waiting=_WAITING_IN_BATCH),
            (self.db_id, _list(projects), _list(projects)),
        )
        return [
            Waiting(kind, batch_id, input_file, int(n)) for kind, batch_id, input_file, n in rows
        ]

    async def in_state(self, state: State, projects: Sequence[str] | None = None) -> list[Purchase]:
        """This database's rows in one final state (of these projects, or all)."""
        rows, _ = await self._db.run(
            "read the ledger",
            sql.SQL(
                "SELECT {columns} FROM {t} WHERE db_id = %s AND state = %s "
                "AND (%s::text[] IS NULL OR project = ANY(%s::text[])) ORDER BY id"
            ).format(t=self._table, columns=_COLUMNS),
            (self.db_id, str(state), _list(projects), _list(projects)),
        )
        return [_purchase(row) for row in rows]

    async def of_batch(self, batch_id: str) -> list[Purchase]:
        rows, _ = await self._db.run(
            f"read batch {batch_id}'s rows in the ledger",
            sql.SQL(
                "SELECT {columns} FROM {t} WHERE db_id = %s AND batch_id = %s ORDER BY id"
            ).format(t=self._table, columns=_COLUMNS),
            (self.db_id, batch_id),
        )
        return [_purchase(row) for row in rows]

    async def replaced(self, project: str, urls: Sequence[str]) -> set[str]:
        """Which of `urls` a purchase for `project` replaces (or is on its way to replace): a
        dead link another run has already bought a new image for."""
        if not urls:
            return set()
        rows, _ = await self._db.run(
            "read the ledger",
            sql.SQL(
                "SELECT DISTINCT u FROM {t}, unnest(replaces) AS u WHERE db_id = %s "
                "AND project = %s AND replaces && %s::text[] AND u = ANY(%s::text[]) "
                "AND state IN {taking}"
            ).format(t=self._table, taking=_TAKING),
            (self.db_id, project, list(urls), list(urls)),
        )
        return {row[0] for row in rows}

    async def object_keys(self, project: str, scene: str) -> set[str]:
        """The store's keys the ledger names for one scene: objects that are some purchase's."""
        rows, _ = await self._db.run(
            "read the ledger",
            sql.SQL(
                "SELECT object_key FROM {t} WHERE db_id = %s AND project = %s AND scene = %s "
                "AND object_key IS NOT NULL"
            ).format(t=self._table),
            (self.db_id, project, scene),
        )
        return {row[0] for row in rows}

    async def known(self) -> tuple[set[tuple[str, str]], set[str], set[tuple[str, str]], set[str]]:
        """What the ledger already holds, for an import not to take it twice: (project, URL)
        of every image, job ids, (batch id, custom_id) and spool paths."""
        urls: set[tuple[str, str]] = set()
        jobs: set[str] = set()
        lines: set[tuple[str, str]] = set()
        spools: set[str] = set()
        query = sql.SQL(
            "SELECT project, url, source_url, job_id, batch_id, custom_id, spool FROM {t} "
            "WHERE db_id = %s"
        ).format(t=self._table)
        async for batch in self._db.stream("read the ledger", query, (self.db_id,)):
            for project, url, source, job, batch_id, custom_id, spooled in batch:
                urls.update((project, u) for u in (url, source) if u)
                if job:
                    jobs.add(job)
                if batch_id and custom_id:
                    lines.add((batch_id, custom_id))
                if spooled:
                    spools.add(spooled)
        return urls, jobs, lines, spools

    async def batch_ids(self) -> list[str]:
        """Every batch this database's ledger names, newest first."""
        rows, _ = await self._db.run(
            "read the ledger's batches",
            sql.SQL(
                "SELECT batch_id FROM {t} WHERE db_id = %s AND batch_id IS NOT NULL "
                "GROUP BY batch_id ORDER BY max(id) DESC"
            ).format(t=self._table),
            (self.db_id,),
        )
        return [row[0] for row in rows]

    async def sighted(self, projects: Sequence[str] | None, since: float | None) -> Sighted:
        """How many rows `sightings` gives, and when the oldest was bought (epoch seconds)."""
        rows, _ = await self._db.run(
            "read the ledger",
            sql.SQL(
                "SELECT count(*), extract(epoch FROM min(requested_at))::float8 FROM {t} WHERE {w}"
            ).format(t=self._table, w=_SIGHTED),
            _sighted(self.db_id, projects, since),
        )
        return Sighted(int(rows[0][0]), rows[0][1])

    async def orphaned(
        self, projects: Sequence[str] | None, since: float | None
    ) -> list[tuple[str, int, str | None, str]]:
        """(project, scene index, scene id, URL) of the images whose scene was gone when they
        came: never placed, whatever scene holds that index now."""
        rows, _ = await self._db.run(
            "read the ledger",
            sql.SQL(
                "SELECT project, scene_index, scene_id, url FROM {t} WHERE {w} ORDER BY id"
            ).format(t=self._table, w=_ORPHANED),
            _sighted(self.db_id, projects, since),
        )
        return [tuple(row) for row in rows]

    def sightings(
        self, projects: Sequence[str] | None, since: float | None, *, alone: bool = False
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Every image of this database with a URL its scene should hold (of these projects;
        bought since `since`, epoch), each row the fields of a log's sighting (core/log_history.
        Sighting): what audit reads of imgsave's own history. Its own runs only ever add
        (replacing is false); a rehost's copy is one image with its link. In the table's own
        order, the cheapest (the diff orders a scene's URLs by time); `alone`, where the ledger
        is all the diff reads: a project's rows together (its index), without the run and time
        that only weigh against another system's runs (a third of the read)."""
        return self._db.stream(
            "read the ledger",
            sql.SQL(
                "SELECT project, scene_index, scene_id, url, {run}, false, "
                "coalesce(replaces, '{{}}'), mode = 'copy' FROM {t} WHERE {w}{order}"
            ).format(
                run=sql.SQL(
                    "NULL::text, NULL::float8"
                    if alone
                    else "run, extract(epoch FROM requested_at)::float8"
                ),
                t=self._table,
                w=_SIGHTED,
                order=sql.SQL(" ORDER BY project, id" if alone else ""),
            ),
            _sighted(self.db_id, projects, since),
            binary=True,
        )

    async def prune(self, before: float, *, execute: bool, batch: int = 10_000) -> int:
        """Delete (or count) rows that are resolved and last changed before `before` (epoch):
        a row still on its way to its scene is never pruned, however old."""
        resolved = sql.SQL("db_id = %(db)s AND state NOT IN {open} AND updated_at < "
                           "to_timestamp(%(before)s)").format(open=_OPEN)  # fmt: skip
        params = {"db": self.db_id, "before": before, "n": batch}
        if not execute:
            rows, _ = await self._db.run(
                "count the ledger's old rows",
                sql.SQL("SELECT count(*) FROM {t} WHERE {w}").format(t=self._table, w=resolved),
                params,
            )
            return int(rows[0][0])
        delete = sql.SQL(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE {w} ORDER BY id LIMIT %(n)s)"
        ).format(t=self._table, w=resolved)
        deleted = 0
        while True:
            _, done = await self._db.run("prune the ledger", delete, params)
            deleted += done
            if done < batch:
                return deleted


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def _sighted(db_id: str, projects: Sequence[str] | None, since: float | None) -> dict[str, Any]:
    return {"db": db_id, "projects": _list(projects), "since": since}


def _record(p: NewPurchase) -> dict[str, Any]:
    return {
        "project": p.project,
        "scene": scene_key(p.ref),
        "scene_index": p.ref.index,
        "scene_id": p.ref.id,
        "slot": p.slot,
        "mode": str(p.mode),
        "state": str(p.state),
        "edit": str(p.edit),
        "replaces": list(p.replaces) or None,
        **asdict(p.handle),
        **asdict(p.kept),
        "error": p.error,
        "requested_at": p.requested_at,
        "kind": p.kind,
    }


def _moves(moves: Sequence[Move], db_id: str) -> dict[str, Any]:
    return {
        "moves": Jsonb(
            [{"id": m.id, "state": str(m.state), "error": m.error, **asdict(m.kept)} for m in moves]
        ),
        "db": db_id,
    }


def _purchase(row: Sequence[Any]) -> Purchase:
    (ident, project, index, scene_id, slot, run, host, kind, mode, state, *rest) = row
    handle = Handle(*rest[0:7])
    kept = Kept(*rest[7:14])
    replaces, edit, error, requested_at, lease_run, lease_process, lease_left = rest[14:21]
    return Purchase(
        id=ident,
        project=project,
        ref=SceneRef(index, scene_id),
        slot=slot,
        run=run,
        host=host,
        kind=kind,
        mode=Mode(mode),
        state=State(state),
        handle=handle,
        kept=kept,
        replaces=tuple(replaces or ()),
        edit=Edit(edit),
        error=error,
        requested_at=requested_at,
        lease_run=lease_run,
        lease_process=lease_process,
        lease_left=lease_left,
    )
