"""The only module that talks to PostgreSQL, and the only place SQL is written.

Every write goes through `Database.locked_update`: one transaction that takes the row with
`SELECT ... FOR UPDATE`, asks a pure function what the new document is, writes it and commits.
Nothing depends on session state (no prepared statements, no session settings, no session
advisory locks), so the same code works through Supabase's transaction pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from imgsave.adapters.postgres import embedded
from imgsave.adapters.postgres.install import BATCHES, CLAIMS, JOURNAL, Table
from imgsave.core.documents import Shape
from imgsave.core.redaction import database_url_problem, mask_url, redact, url_secrets
from imgsave.core.settings import DatabaseSettings, Names, Settings
from imgsave.errors import (
    CannotWork,
    DatabaseUnavailable,
    MalformedDocument,
    ProjectNotFound,
    UsageError,
)
from imgsave.logs import logger

T = TypeVar("T")
R = TypeVar("R")

# Errors after which the same transaction, tried again, can succeed. A dropped connection is
# among them: the outcome of its COMMIT is unknown, but every write is append-if-absent, so
# running it a second time is harmless.
TRANSIENT = (
    pg_errors.LockNotAvailable,
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.QueryCanceled,
    psycopg.OperationalError,
    PoolTimeout,
    TimeoutError,  # our own deadline on an attempt: the network went silent
)

# After an attempt's deadline, how long a cancelled query may take to stop before its
# connection is closed instead (see _within).
CANCEL_GRACE = 0.5

EMBEDDED = "embedded"

NO_DATABASE = (
    "no database given: set IMGSAVE_DATABASE_URL (or DATABASE_URL, or database_url in "
    "imgsave.toml) to a PostgreSQL URL, or to 'embedded' for imgsave's built-in server"
)

_CASTS = {"jsonb": sql.SQL("jsonb"), "json": sql.SQL("json")}

ChangeFn = Callable[[str | None], tuple[str | None, T]]
Query = str | sql.SQL | sql.Composed
Params = Sequence[Any] | Mapping[str, Any]


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


@dataclass(frozen=True)
class _Statements:
    set_timeouts: sql.Composed | sql.SQL
    select_for_update: sql.Composed
    select_one: sql.Composed
    select_many: sql.Composed
    update: sql.Composed
    upsert: sql.Composed
    keys_first: sql.Composed
    keys_after: sql.Composed
    key_type: str
    # json and text columns keep the document's bytes as written; jsonb normalises them.
    keeps_text: bool
    table: Table
    journal: sql.Identifier
    claims: sql.Identifier
    batches: sql.Identifier
    # Who this database is, for a batch's metadata: host, port, database and table, never a
    # secret (operations/batches.py finds this database's batches by it, from any host).
    fingerprint: str
    # Keys of projects with a scene short of K images (jsonb documents; None: every key).
    short_first: sql.Composed | None
    short_after: sql.Composed | None


class _SessionLost(Exception):
    """The connection was open, and closed under the set-up: not the server refusing."""

    def __init__(self, cause: psycopg.OperationalError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Database:
    """A small pool of autocommit connections plus the statements for one configured table."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        statements: _Statements,
        settings: DatabaseSettings,
        secrets: tuple[str, ...] = (),
    ):
        self._pool = pool
        self._sql = statements
        self._settings = settings
        # PostgreSQL's messages may echo connection details: masked as they come in.
        self._secrets = secrets

    @classmethod
    async def open(
        cls,
        url: str,
        names: Names,
        settings: DatabaseSettings,
        *,
        max_size: int = 4,
        create_table: bool = False,
        shape: Shape | None = None,
    ) -> Self:
        """Connect, check the table and columns exist, and prepare the statements."""
        # application_name lets a DBA (and the fault-injection tests) find imgsave's sessions.
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": None,
            "application_name": "imgsave",
            # A peer that vanished (packets dropped, not refused) is noticed by TCP itself in
            # about idle + interval x count seconds, instead of the kernel's two hours.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        # A session ended under us while we set up (a failover, a restart, an administrator,
        # or a connection that was open and then dropped) is worth another try or two; a server
        # that refuses or a wrong URL is not.
        setup = AsyncRetrying(
            retry=retry_if_exception_type(
                (pg_errors.AdminShutdown, pg_errors.CannotConnectNow, _SessionLost)
            ),
            stop=stop_after_attempt(3),
            wait=wait_exponential_jitter(multiplier=0.2, max=1.0, jitter=0.1),
            reraise=True,
        )

        async def connect() -> _Statements:
            async with await psycopg.AsyncConnection.connect(
                url, connect_timeout=max(1, int(settings.connect_timeout)), **kwargs
            ) as conn:
                try:
                    if create_table:
                        await _create_table(conn, names)
                    return await _prepare(conn, names, shape or Shape())
                except psycopg.OperationalError as exc:
                    if not conn.closed:
                        raise
                    raise _SessionLost(exc) from exc

        try:
            statements: _Statements = await setup(connect)
        except _SessionLost as lost:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {mask_url(url)}: "
                f"{_one_line(lost.cause, url_secrets(url))}"
            ) from None
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {mask_url(url)}: "
                f"{_one_line(exc, url_secrets(url))}"
            ) from None
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs=kwargs,
            open=False,
            # No `check`: it backs off 1 s, 2 s, 4 s on a dropped connection while the project's
            # one saver waits. A dead connection instead fails its statement at once, the pool
            # discards it, and the transaction's own retry takes a fresh one.
            timeout=settings.connect_timeout,
            reconnect_timeout=max(settings.connect_timeout * 3, 30),
        )
        await pool.open()
        return cls(pool, statements, settings, url_secrets(url))

    @classmethod
    async def from_settings(cls, settings: Settings, *, max_size: int = 4) -> Self:
        """The database the settings name: a URL, or the embedded server when asked for by name."""
        # No silent fallback: a cron line that lost its environment must alert, not audit an
        # empty embedded database and report a clean run.
        if not settings.database_url:
            raise UsageError(NO_DATABASE)
        problem = database_url_problem(settings.database_url)
        if problem:
            raise UsageError(problem)
        if settings.database_url.strip().lower() == EMBEDDED:
            return await cls.open(
                embedded.start(),
                settings.names,
                settings.database,
                max_size=max_size,
                create_table=True,
                shape=settings.shape,
            )
        return await cls.open(
            settings.database_url,
            settings.names,
            settings.database,
            max_size=max_size,
            shape=settings.shape,
        )

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection. When one turns out dead (the server restarted, a proxy dropped
        it), the others idle beside it probably are too: they are all checked at once before
        the caller's retry, instead of being found one failed attempt (and back-off) at a time.
        """
        async with self._pool.connection() as conn:
            try:
                yield conn
            except psycopg.OperationalError:
                if conn.broken:
                    await self._pool.check()
                raise

    @property
    def _read_deadline(self) -> float:
        return self._settings.statement_timeout + self._settings.connect_timeout

    def _one_line(self, exc: BaseException) -> str:
        return _one_line(exc, self._secrets)

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self._settings.max_attempts),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.debug(
            "database: attempt %d failed (%s); retrying in %.2fs",
            state.attempt_number,
            self._one_line(exc) if exc else "?",
            state.upcoming_sleep,
        )

    @property
    def keeps_text(self) -> bool:
        """Whether the document column stores text as written (json, text), not jsonb."""
        return self._sql.keeps_text

    def normalise_key(self, project: str) -> str | None:
        """The project key as the key column's type spells it, or None if it can name no row.

        A uuid in upper case and in lower case is one project; so are 007 and 7 in an integer
        column. Text no PostgreSQL value can hold (NUL, lone surrogates) names no row.
        """
        if "\x00" in project or not _encodable(project):
            return None
        if self._sql.key_type == "uuid":
            try:
                return str(uuid.UUID(project))
            except ValueError:
                return None
        if self._sql.key_type in ("int2", "int4", "int8"):
            digits = project.strip()
            if not re.fullmatch(r"-?[0-9]{1,20}", digits):
                return None
            value = int(digits)
            bits = {"int2": 15, "int4": 31, "int8": 63}[self._sql.key_type]
            return str(value) if -(2**bits) <= value < 2**bits else None
        return project

    async def read(self, project: str) -> str | None:
        """The stored text of one project's document, read without a lock."""
        key = self.normalise_key(project)
        row: tuple[str | None] | None = None

        async def once() -> tuple[str | None] | None:
            async with self._connection() as conn:
                cur = await conn.execute(self._sql.select_one, (key,))
                return await cur.fetchone()

        if key is not None:
            try:
                row = await self._retrying()(_within, self._read_deadline, once)
            except psycopg.Error as exc:
                raise CannotWork(f"project {project}: cannot read: {self._one_line(exc)}") from None
        if row is None:
            raise ProjectNotFound(f"project {project} not found")
        text: str | None = row[0]
        return text

    def project_keys(self, *, batch: int = 500) -> AsyncIterator[list[str]]:
        """Every project key in the table, a batch at a time (never all in memory)."""
        return self._keyset(
            self._sql.keys_first, self._sql.keys_after, {"n": batch}, "list projects"
        )

    async def read_many(
        self, projects: Sequence[str]
    ) -> tuple[dict[str, str | None], dict[str, str]]:
        """Documents of the projects that exist among `projects`, in one query; and, by
        project, why one could not be read (the others are still read)."""
        keys = {k: p for p in projects if (k := self.normalise_key(p)) is not None}
        if not keys:
            return {}, {}
        try:
            rows = await self._fetch_many(list(keys))
        except DatabaseUnavailable:
            raise  # the database, not a row: reading one by one would only wait N times longer
        except CannotWork:
            if len(keys) == 1:
                raise
            # One bad row must not hide every other project's losses: read them one by one.
            documents: dict[str, str | None] = {}
            failures: dict[str, str] = {}
            for key, project in keys.items():
                try:
                    found = await self._fetch_many([key])
                except CannotWork as exc:
                    failures[project] = f"project {project}: {exc}"
                    continue
                documents.update((keys[k], text) for k, text in found)
            return documents, failures
        return {keys[key]: text for key, text in rows}, {}

    async def _fetch_many(self, keys: list[str]) -> list[tuple[str, str | None]]:
        rows, _ = await self._run("read from the database", self._sql.select_many, (keys,))
        return rows

    @property
    def fingerprint(self) -> str:
        """This database's table, as a batch's metadata names it (_fingerprint)."""
        return self._sql.fingerprint

    @property
    def table(self) -> Table:
        """The app's table as the catalog describes it (what `imgsave sql` writes SQL for)."""
        return self._sql.table

    async def apply(self, script: str, what: str) -> None:
        """Run a migration in one transaction: all of it, or (on any error) none of it."""
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(script.encode())
        except psycopg.Error as exc:
            raise CannotWork(f"could not {what}: {self._one_line(exc)}") from None

    async def _table_exists(self, table: sql.Identifier, what: str) -> bool:
        query = "SELECT to_regclass(%s) IS NOT NULL"
        rows, _ = await self._run(what, query, (table.as_string(None),))
        return bool(rows and rows[0][0])

    def projects_short_of(self, k: int, *, batch: int = 500) -> AsyncIterator[list[str]]:
        """Keys of the projects that may hold a scene with fewer than `k` images, a batch at a
        time, by one query on the primary key's order: documents stay in the database."""
        if self._sql.short_first is None or self._sql.short_after is None:
            return self.project_keys(batch=batch)
        return self._keyset(
            self._sql.short_first,
            self._sql.short_after,
            {"k": k, "n": batch},
            "list the projects to generate for",
        )

    async def _keyset(
        self, first: sql.Composed, following: sql.Composed, params: dict[str, Any], what: str
    ) -> AsyncIterator[list[str]]:
        """Keys a batch at a time in the key's order, each batch after the last key seen."""
        after: str | None = None
        while True:
            query = first if after is None else following
            rows, _ = await self._run(what, query, {**params, "after": after})
            if not rows:
                return
            yield [row[0] for row in rows]
            after = rows[-1][0]

    async def _run(
        self, what: str, query: Query, params: Params | None = None
    ) -> tuple[list[Any], int]:
        """One autocommit statement, safe to run twice, retried on transient errors: the rows
        it returned (none for a statement without a result) and the rows it touched."""

        async def once() -> tuple[list[Any], int]:
            async with self._connection() as conn:
                cur = await conn.execute(query, params)
                rows = await cur.fetchall() if cur.description else []
                return rows, cur.rowcount

        return await self._reading(what, once)

    async def _reading(self, what: str, once: Callable[[], Awaitable[R]]) -> R:
        """`once()`, a read, retried on transient errors; its failure as imgsave's error: the
        database unavailable (transient to the end), or unable to do this (anything else)."""
        try:
            return await self._retrying()(_within, self._read_deadline, once)
        except TRANSIENT as exc:
            raise DatabaseUnavailable(f"cannot {what}: {self._one_line(exc)}") from None
        except psycopg.Error as exc:
            raise CannotWork(f"cannot {what}: {self._one_line(exc)}") from None

    async def locked_update(self, project: str, change: ChangeFn[T]) -> T:
        """Run `change` on the row's document under `SELECT ... FOR UPDATE`; write what it returns.

        `change` gets the stored text and returns (new text or None for "no write", result).
        It is pure and may run more than once: the transaction is retried on lock timeouts,
        serialization failures, deadlocks and lost connections, with backoff.
        """
        key = self.normalise_key(project)
        if key is None:
            raise ProjectNotFound(f"project {project} not found")
        timeouts = (
            _ms(self._settings.lock_timeout),
            _ms(self._settings.statement_timeout),
            # If the network fails between our statements, the server sees an idle transaction
            # holding the row lock: it ends the session after this long, so the app's own
            # writes are not blocked for the length of the partition.
            _ms(self._settings.statement_timeout),
        )
        # The client's side of the same bound: one attempt may take no longer than its
        # statements may, plus a margin, however silent the network.
        deadline = self._settings.lock_timeout + 2 * self._settings.statement_timeout + 1

        async def once() -> T:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(self._sql.set_timeouts, timeouts)
                cur = await conn.execute(self._sql.select_for_update, (key,))
                row = await cur.fetchone()
                if row is None:
                    raise ProjectNotFound(f"project {project} not found")
                new_text, result = change(row[0])
                if new_text is not None:
                    await conn.execute(self._sql.update, (new_text, key))
            return result

        try:
            return await self._retrying()(_within, deadline, once)
        except TRANSIENT as exc:
            reason = f"no answer within {deadline:g}s" if isinstance(exc, TimeoutError) else ""
            raise DatabaseUnavailable(
                f"project {project}: could not save after {self._settings.max_attempts} "
                f"attempts: {reason or self._one_line(exc)}"
            ) from None
        except UnicodeEncodeError:
            raise MalformedDocument(
                f"project {project}: the document holds text PostgreSQL cannot store "
                "(a lone surrogate); not written"
            ) from None
        except psycopg.Error as exc:
            raise CannotWork(f"project {project}: could not save: {self._one_line(exc)}") from None


async def _within(seconds: float, work: Callable[[], Awaitable[R]]) -> R:
    """`work()` with a deadline psycopg cannot stretch; TimeoutError when it passes.

    Cancelled mid-query, psycopg asks the server to cancel the query and waits up to 5 s for
    that and 5 s more for the query to end: on a silent network, ten seconds past any deadline
    set with `asyncio.timeout`. Cancelled again, it closes the connection at once. So `work`
    runs as a task of its own, cancelled at the deadline and then again after a short grace
    (enough for a healthy server to confirm a cancel, so its connection can be reused).
    """
    task = asyncio.ensure_future(work())
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
        while not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.cancelled():
        raise TimeoutError
    return task.result()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _table(names: Names) -> sql.Identifier:
    return sql.Identifier(*names.table.split("."))


async def _create_table(conn: psycopg.AsyncConnection, names: Names) -> None:
    await conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ({k} text PRIMARY KEY, {d} jsonb, "
            "{u} timestamptz NOT NULL DEFAULT now())"
        ).format(
            t=_table(names),
            k=sql.Identifier(names.key_column),
            d=sql.Identifier(names.document_column),
            u=sql.Identifier(names.updated_at_column),
        )
    )


async def _fingerprint(conn: psycopg.AsyncConnection[Any], table: str) -> str:
    """This database's table, named the same from every host and every route to it (direct,
    or through a pooler on another port): the cluster's system identifier, the database's name
    and the table's. A role that may not read the identifier gets the server's address."""
    try:
        cur = await conn.execute(
            "SELECT system_identifier::text || '/' || current_database() FROM pg_control_system()"
        )
        row = await cur.fetchone()
        where = str(row[0]) if row else ""
    except psycopg.errors.InsufficientPrivilege:
        where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    return hashlib.sha256(f"{where}/{table}".encode()).hexdigest()[:16]


async def _prepare(conn: psycopg.AsyncConnection, names: Names, shape: Shape) -> _Statements:
    """Look the table up once and compose every statement with its real column types."""
    table = _table(names)
    cur = await conn.execute(
        "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod), n.nspname, c.relname "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (table.as_string(conn),),
    )
    found = await cur.fetchall()
    if not found:
        raise CannotWork(f"table {names.table} does not exist")
    columns: dict[str, str] = {row[0]: row[1] for row in found}
    formatted: dict[str, str] = {row[0]: row[2] for row in found}
    for column in (names.key_column, names.document_column):
        if column not in columns:
            raise CannotWork(f"table {names.table} has no column {column}")
    doc_type = columns[names.document_column]
    if doc_type not in ("jsonb", "json", "text", "varchar"):
        raise CannotWork(
            f"column {names.table}.{names.document_column} is {doc_type}; "
            "imgsave reads jsonb, json or text"
        )
    key_type = columns[names.key_column]
    fingerprint = await _fingerprint(conn, f"{found[0][3]}.{found[0][4]}")
    key, doc = sql.Identifier(names.key_column), sql.Identifier(names.document_column)
    value = sql.SQL("%s::{}").format(_CASTS[doc_type]) if doc_type in _CASTS else sql.SQL("%s")
    touch: sql.Composable = sql.SQL("")
    has_updated_at = columns.get(names.updated_at_column) in ("timestamptz", "timestamp")
    if has_updated_at:
        touch = sql.SQL(", {} = now()").format(sql.Identifier(names.updated_at_column))
    fmt = {"t": table, "k": key, "d": doc, "v": value, "touch": touch}
    return _Statements(
        # set_config(..., true) is SET LOCAL with bound values: gone at COMMIT or ROLLBACK.
        set_timeouts=sql.SQL(
            "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, "
            "true), set_config('idle_in_transaction_session_timeout', %s, true)"
        ),
        select_for_update=sql.SQL("SELECT {d}::text FROM {t} WHERE {k} = %s FOR UPDATE").format(
            **fmt
        ),
        select_one=sql.SQL("SELECT {d}::text FROM {t} WHERE {k} = %s").format(**fmt),
        select_many=sql.SQL(
            "SELECT {k}::text, {d}::text FROM {t} WHERE {k}::text = ANY(%s)"
        ).format(**fmt)
        if key_type not in ("uuid", "text", "varchar")
        else sql.SQL("SELECT {k}::text, {d}::text FROM {t} WHERE {k} = ANY(%s::{kt}[])").format(
            kt=sql.Identifier(key_type), **fmt
        ),
        update=sql.SQL("UPDATE {t} SET {d} = {v}{touch} WHERE {k} = %s").format(**fmt),
        # In the key's own order, so the primary key's index serves each batch.
        # (The output is named apart: ORDER BY a bare name would sort by the text.)
        keys_first=sql.SQL("SELECT {k}::text AS project FROM {t} ORDER BY {k} LIMIT %(n)s").format(
            **fmt
        ),
        keys_after=sql.SQL(
            "SELECT {k}::text AS project FROM {t} WHERE {k} > %(after)s::{kt} ORDER BY {k} "
            "LIMIT %(n)s"
        ).format(kt=sql.Identifier(key_type), **fmt),
        upsert=sql.SQL(
            "INSERT INTO {t} ({k}, {d}) VALUES (%s, {v}) ON CONFLICT ({k}) DO UPDATE SET {d} = "
            "excluded.{d}{touch}"
        ).format(**fmt),
        key_type=key_type,
        keeps_text=doc_type != "jsonb",
        table=Table(
            schema=found[0][3],
            name=found[0][4],
            key_column=names.key_column,
            key_type=formatted[names.key_column],
            document_column=names.document_column,
            document_type=formatted[names.document_column],
            updated_at_column=names.updated_at_column if has_updated_at else None,
        ),
        journal=sql.Identifier(found[0][3], JOURNAL),
        claims=sql.Identifier(found[0][3], CLAIMS),
        batches=sql.Identifier(found[0][3], BATCHES),
        fingerprint=fingerprint,
        **_short_statements(fmt, key_type, doc_type, shape),
    )


def _short_statements(
    fmt: dict[str, Any], key_type: str, doc_type: str, shape: Shape
) -> dict[str, sql.Composed | None]:
    """Keys of the projects that may have a scene with fewer than K images, in key order (the
    primary key's index serves each batch). Only a jsonb document can be judged in the query;
    one that cannot be judged there (a JSON string, json or text) is listed, and the plan, which
    reads the document, decides."""
    if doc_type != "jsonb":
        return {"short_first": None, "short_after": None}
    complete = sql.SQL(
        "(jsonb_typeof({d}) = 'object' AND jsonb_typeof({d} -> {sk}) = 'array' AND NOT EXISTS ("
        "SELECT FROM jsonb_array_elements({d} -> {sk}) AS s(scene) "
        "WHERE jsonb_typeof(scene) IS DISTINCT FROM 'object' "
        "OR jsonb_typeof(scene -> {uk}) IS DISTINCT FROM 'array' "
        "OR (SELECT count(*) FROM jsonb_array_elements(scene -> {uk}) AS u(url) "
        "WHERE jsonb_typeof(url) = 'string') < %(k)s)) IS NOT TRUE"
    ).format(d=fmt["d"], sk=sql.Literal(shape.scenes_key), uk=sql.Literal(shape.urls_key))
    return {
        "short_first": sql.SQL(
            "SELECT {k}::text AS project FROM {t} WHERE {c} ORDER BY {k} LIMIT %(n)s"
        ).format(c=complete, **fmt),
        "short_after": sql.SQL(
            "SELECT {k}::text AS project FROM {t} WHERE {k} > %(after)s::{kt} AND {c} "
            "ORDER BY {k} LIMIT %(n)s"
        ).format(c=complete, kt=sql.Identifier(key_type), **fmt),
    }


def _one_line(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """An exception as one line with no secret in it (psycopg may echo connection details)."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__, secrets)
