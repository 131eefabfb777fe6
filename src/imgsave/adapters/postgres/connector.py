"""The connection to PostgreSQL: a small pool of autocommit connections, retries, deadlines, and
every psycopg error translated into imgsave's. The statements live beside it (database.py for
the app's table, *_rows.py for imgsave's own tables); none of them touches a connection except
through `run` (one autocommit statement) and `transact` (one transaction, retried whole).

Nothing depends on session state (no prepared statements, no session settings, no session
advisory locks), so the same code works through Supabase's transaction pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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

from imgsave.core.redaction import mask_url, redact, url_secrets
from imgsave.core.settings import DatabaseSettings
from imgsave.errors import CannotWork, DatabaseUnavailable
from imgsave.logs import logger

R = TypeVar("R")

# Errors after which the same transaction, tried again, can succeed. A dropped connection is
# among them: the outcome of its COMMIT is unknown, but every write is idempotent (append-if-
# absent, state moves that check the state they leave), so running it a second time is harmless.
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

Query = str | sql.SQL | sql.Composed
Params = Sequence[Any] | Mapping[str, Any]
Conn = psycopg.AsyncConnection[Any]

_SET_TIMEOUTS = sql.SQL(
    # set_config(..., true) is SET LOCAL with bound values: gone at COMMIT or ROLLBACK.
    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true), "
    "set_config('idle_in_transaction_session_timeout', %s, true)"
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


class _SessionLost(Exception):
    """The connection was open, and closed under the set-up: not the server refusing."""

    def __init__(self, cause: psycopg.OperationalError) -> None:
        super().__init__(str(cause))
        self.cause = cause


CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "prepare_threshold": None,
    # application_name lets a DBA (and the fault-injection tests) find imgsave's sessions.
    "application_name": "imgsave",
    # A peer that vanished (packets dropped, not refused) is noticed by TCP itself in about
    # idle + interval x count seconds, instead of the kernel's two hours.
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class Connector:
    """The pool, and every statement's retries, deadline and error translation."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: DatabaseSettings,
        *,
        schema: str,
        secrets: tuple[str, ...] = (),
    ):
        self._pool = pool
        self._settings = settings
        # The schema of the app's table: imgsave's own tables live beside it.
        self.schema = schema
        # PostgreSQL's messages may echo connection details: masked as they come in.
        self.secrets = secrets

    @classmethod
    async def open(
        cls,
        url: str,
        settings: DatabaseSettings,
        setup: Callable[[Conn], Awaitable[tuple[str, R]]],
        *,
        max_size: int = 4,
    ) -> tuple[Self, R]:
        """Connect once to run `setup` (which returns the schema imgsave works in, and what the
        caller wants from the catalog), then open the pool."""
        # A session ended under us while we set up (a failover, a restart, an administrator,
        # or a connection that was open and then dropped) is worth another try or two; a server
        # that refuses or a wrong URL is not.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(
                (pg_errors.AdminShutdown, pg_errors.CannotConnectNow, _SessionLost)
            ),
            stop=stop_after_attempt(3),
            wait=wait_exponential_jitter(multiplier=0.2, max=1.0, jitter=0.1),
            reraise=True,
        )

        async def connect() -> tuple[str, R]:
            async with await psycopg.AsyncConnection.connect(
                url, connect_timeout=max(1, int(settings.connect_timeout)), **CONNECTION_KWARGS
            ) as conn:
                try:
                    return await setup(conn)
                except psycopg.OperationalError as exc:
                    if not conn.closed:
                        raise
                    raise _SessionLost(exc) from exc

        secrets = url_secrets(url)
        try:
            schema, found = await retrying(connect)  # type: ignore[var-annotated]
        except _SessionLost as lost:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {mask_url(url)}: "
                f"{one_line(lost.cause, secrets)}"
            ) from None
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {mask_url(url)}: {one_line(exc, secrets)}"
            ) from None
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs=CONNECTION_KWARGS,
            open=False,
            # No `check`: it backs off 1 s, 2 s, 4 s on a dropped connection while the project's
            # one saver waits. A dead connection instead fails its statement at once, the pool
            # discards it, and the transaction's own retry takes a fresh one.
            timeout=settings.connect_timeout,
            reconnect_timeout=max(settings.connect_timeout * 3, 30),
        )
        await pool.open()
        return cls(pool, settings, schema=schema, secrets=secrets), found

    async def close(self) -> None:
        await self._pool.close()

    def one_line(self, exc: BaseException) -> str:
        return one_line(exc, self.secrets)

    def table(self, name: str) -> sql.Identifier:
        """One of imgsave's own tables, in the app table's schema."""
        return sql.Identifier(self.schema, name)

    @property
    def max_attempts(self) -> int:
        return self._settings.max_attempts

    # -- statements ----------------------------------------------------------------------------

    async def run(
        self, what: str, query: Query, params: Params | None = None
    ) -> tuple[list[Any], int]:
        """One autocommit statement, safe to run twice, retried on transient errors: the rows
        it returned (none for a statement without a result) and the rows it touched. Its
        failure is imgsave's: DatabaseUnavailable (transient to the end) or CannotWork."""

        async def once() -> tuple[list[Any], int]:
            async with self._connection() as conn:
                cur = await conn.execute(query, params)
                rows = await cur.fetchall() if cur.description else []
                return rows, cur.rowcount

        try:
            return await self._retrying()(_within, self._read_deadline, once)
        except TRANSIENT as exc:
            raise DatabaseUnavailable(f"cannot {what}: {self.one_line(exc)}") from None
        except psycopg.Error as exc:
            raise CannotWork(f"cannot {what}: {self.one_line(exc)}") from None

    async def transact(self, body: Callable[[Conn], Awaitable[R]]) -> R:
        """`body(conn)` in one transaction with this run's lock and statement timeouts (SET
        LOCAL), retried whole on transient errors, each attempt under a deadline no silent
        network can stretch. Raises psycopg's errors (TRANSIENT ones after the last attempt):
        the caller says what failed, in its own words (`translated`)."""
        s = self._settings
        timeouts = (
            _ms(s.lock_timeout),
            _ms(s.statement_timeout),
            # If the network fails between our statements, the server sees an idle transaction
            # holding its row locks: it ends the session after this long, so the app's own
            # writes are not blocked for the length of the partition.
            _ms(s.statement_timeout),
        )

        async def once() -> R:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(_SET_TIMEOUTS, timeouts)
                return await body(conn)

        return await self._retrying()(_within, self.transaction_deadline, once)

    @property
    def transaction_deadline(self) -> float:
        """The client's side of a transaction's bound: no longer than its statements may take,
        plus a margin, however silent the network."""
        return self._settings.lock_timeout + 2 * self._settings.statement_timeout + 1

    async def stream(
        self,
        what: str,
        query: Query,
        params: Params | None = None,
        *,
        batch: int = 5000,
        binary: bool = False,
    ) -> AsyncIterator[list[Any]]:
        """The rows of one query, `batch` at a time through a server-side cursor in one
        transaction (a pooler in transaction mode keeps it on one server connection): memory
        holds one batch, whatever the result's size. Not retried once rows were handed out.
        `binary`: numbers, times and arrays read without parsing text (a third faster)."""
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT set_config('statement_timeout', '0', true), "
                    "set_config('idle_in_transaction_session_timeout', %s, true)",
                    (_ms(self._settings.statement_timeout),),
                )
                async with conn.cursor(name="imgsave_stream", binary=binary) as cur:
                    await cur.execute(query, params)
                    while rows := await cur.fetchmany(batch):
                        yield rows
        except TRANSIENT as exc:
            raise DatabaseUnavailable(f"cannot {what}: {self.one_line(exc)}") from None
        except psycopg.Error as exc:
            raise CannotWork(f"cannot {what}: {self.one_line(exc)}") from None

    async def table_exists(self, table: sql.Identifier, what: str) -> bool:
        rows, _ = await self.run(
            what, "SELECT to_regclass(%s) IS NOT NULL", (table.as_string(None),)
        )
        return bool(rows and rows[0][0])

    async def create(
        self, table: sql.Identifier, ddl: str, *, error: Callable[[str], CannotWork]
    ) -> None:
        """Run `ddl` (idempotent: IF NOT EXISTS) unless `table` is there already. Two hosts
        starting at once would both try; a lock that ends with the transaction (so the pooler
        is no trouble) lets one do it. `error(reason)` is what a refusal becomes."""
        if await self.table_exists(table, f"look for {table.as_string(None)}"):
            return
        await self.migrate(table, ddl, error=error)

    async def migrate(
        self, table: sql.Identifier, ddl: str, *, error: Callable[[str], CannotWork]
    ) -> None:
        """Run idempotent DDL for `table` under a lock that ends with its transaction: two
        hosts at once would both try, and PostgreSQL's IF NOT EXISTS does not serialise them."""
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (table.as_string(None),)
                )
                await conn.execute(ddl.encode())
        except psycopg.Error as exc:
            # The primary message only: the statement psycopg quotes is the whole DDL.
            reason = exc.diag.message_primary or type(exc).__name__
            raise error(redact(reason, self.secrets)) from None

    async def apply(self, script: str, what: str) -> None:
        """Run a migration in one transaction: all of it, or (on any error) none of it."""
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(script.encode())
        except psycopg.Error as exc:
            raise CannotWork(f"could not {what}: {self.one_line(exc)}") from None

    # -- plumbing ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
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
            self.one_line(exc) if exc else "?",
            state.upcoming_sleep,
        )


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


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def one_line(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """An exception as one line with no secret in it (psycopg may echo connection details)."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__, secrets)
