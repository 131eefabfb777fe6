"""The app's table: its statements (composed once, with the column types the catalog gives) on
top of the connector (connector.py), which owns the pool, retries and error translation.

Every write to a document goes through `Database.locked_update`: one transaction that takes the
row with `SELECT ... FOR UPDATE`, asks a pure function what the new document is, writes it and
commits. Statements of imgsave's own tables may join that transaction (`also`), so a ledger
row says `saved` exactly when its URL is in the committed document.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import psycopg
from psycopg import sql

from imgsave.adapters.postgres import embedded
from imgsave.adapters.postgres.connector import TRANSIENT, Conn, Connector
from imgsave.adapters.postgres.install import Table
from imgsave.core.documents import Shape
from imgsave.core.redaction import database_url_problem
from imgsave.core.settings import DatabaseSettings, Names, Settings
from imgsave.errors import (
    CannotWork,
    DatabaseUnavailable,
    MalformedDocument,
    ProjectNotFound,
    UsageError,
)

T = TypeVar("T")

EMBEDDED = "embedded"

NO_DATABASE = (
    "no database given: set IMGSAVE_DATABASE_URL (or DATABASE_URL, or database_url in "
    "imgsave.toml) to a PostgreSQL URL, or to 'embedded' for imgsave's built-in server"
)

_CASTS = {"jsonb": sql.SQL("jsonb"), "json": sql.SQL("json")}

ChangeFn = Callable[[str | None], tuple[str | None, T]]
# What a locked write does besides the document, in the same transaction: given the
# connection and the change's result.
AlsoFn = Callable[[Conn, T], Awaitable[None]]


@dataclass(frozen=True)
class _Statements:
    select_for_update: sql.Composed
    select_one: sql.Composed
    select_many: sql.Composed
    resolve: sql.Composed
    update: sql.Composed
    keys_first: sql.Composed
    keys_after: sql.Composed
    key_type: str
    # json and text columns keep the document's bytes as written; jsonb normalises them.
    keeps_text: bool
    table: Table
    # Keys of projects with a scene short of K images (jsonb documents; None: every key).
    short_first: sql.Composed | None
    short_after: sql.Composed | None


class Database:
    """The app's table: reading documents, the one locked write, listing projects."""

    def __init__(self, connector: Connector, statements: _Statements):
        self.connector = connector
        self._sql = statements

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

        async def setup(conn: Conn) -> tuple[str, _Statements]:
            if create_table:
                await _create_table(conn, names)
            statements = await _prepare(conn, names, shape or Shape())
            return statements.table.schema, statements

        connector, statements = await Connector.open(url, settings, setup, max_size=max_size)
        return cls(connector, statements)

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
        embedded_asked = settings.database_url.strip().lower() == EMBEDDED
        return await cls.open(
            embedded.start() if embedded_asked else settings.database_url,
            settings.names,
            settings.database,
            max_size=max_size,
            create_table=embedded_asked,
            shape=settings.shape,
        )

    async def close(self) -> None:
        await self.connector.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def keeps_text(self) -> bool:
        """Whether the document column stores text as written (json, text), not jsonb."""
        return self._sql.keeps_text

    @property
    def table(self) -> Table:
        """The app's table as the catalog describes it (what `imgsave sql` writes SQL for)."""
        return self._sql.table

    async def check_readable(self) -> None:
        """CannotWork, in one line, when this role may not read the app's table: said before
        anything else is made or bought."""
        t = self._sql.table
        await self.connector.run(
            f"read table {t.name}",
            sql.SQL("SELECT FROM {t} LIMIT 0").format(t=sql.Identifier(t.schema, t.name)),
        )

    def normalise_key(self, project: str) -> str | None:
        """The project key as the key column's type spells it, or None if it can name no row,
        without asking the database (for log lines by the million). `resolve` asks it, and is
        what a run's keys come from: the database's own equality (a citext column) decides.
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

    async def resolve(self, projects: Sequence[str]) -> dict[str, str]:
        """Each named project's key as the table returns it (one spelling per row, whatever
        spelling named it: a uuid's case, an integer's zeros, a citext's case). Projects that
        name no row are left out."""
        typed = {p: k for p in projects if (k := self.normalise_key(p)) is not None}
        if not typed:
            return {}
        rows, _ = await self.connector.run(
            "look the projects up", self._sql.resolve, (list(dict.fromkeys(typed.values())),)
        )
        found = {given: key for given, key in rows}
        return {p: found[k] for p, k in typed.items() if k in found}

    async def read(self, project: str) -> str | None:
        """The stored text of one project's document, read without a lock."""
        key = self.normalise_key(project)
        rows: list[Any] = []
        if key is not None:
            try:
                rows, _ = await self.connector.run(
                    f"read project {project}", self._sql.select_one, (key,)
                )
            except DatabaseUnavailable:
                raise
            except CannotWork as exc:
                raise CannotWork(f"project {project}: {exc}") from None
        if not rows:
            raise ProjectNotFound(f"project {project} not found")
        text: str | None = rows[0][0]
        return text

    def project_keys(self, *, batch: int = 500) -> AsyncIterator[list[str]]:
        """Every project key in the table, a batch at a time (never all in memory)."""
        return self._keyset(
            self._sql.keys_first, self._sql.keys_after, {"n": batch}, "list projects"
        )

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
        rows, _ = await self.connector.run("read from the database", self._sql.select_many, (keys,))
        return rows

    async def _keyset(
        self, first: sql.Composed, following: sql.Composed, params: dict[str, Any], what: str
    ) -> AsyncIterator[list[str]]:
        """Keys a batch at a time in the key's order, each batch after the last key seen."""
        after: str | None = None
        while True:
            query = first if after is None else following
            rows, _ = await self.connector.run(what, query, {**params, "after": after})
            if not rows:
                return
            yield [row[0] for row in rows]
            after = rows[-1][0]

    async def locked_update(
        self, project: str, change: ChangeFn[T], also: AlsoFn[T] | None = None
    ) -> T:
        """Run `change` on the row's document under `SELECT ... FOR UPDATE`; write what it
        returns; then `also(conn, result)`, in the same transaction.

        `change` gets the stored text and returns (new text or None for "no write", result).
        It is pure and may run more than once: the transaction is retried on lock timeouts,
        serialization failures, deadlocks and lost connections, with backoff.
        """
        key = self.normalise_key(project)
        if key is None:
            raise ProjectNotFound(f"project {project} not found")

        async def body(conn: Conn) -> T:
            cur = await conn.execute(self._sql.select_for_update, (key,))
            row = await cur.fetchone()
            if row is None:
                raise ProjectNotFound(f"project {project} not found")
            new_text, result = change(row[0])
            if new_text is not None:
                await conn.execute(self._sql.update, (new_text, key))
            if also is not None:
                await also(conn, result)
            return result

        try:
            return await self.connector.transact(body)
        except TRANSIENT as exc:
            deadline = self.connector.transaction_deadline
            reason = f"no answer within {deadline:g}s" if isinstance(exc, TimeoutError) else ""
            raise DatabaseUnavailable(
                f"project {project}: could not save after {self.connector.max_attempts} "
                f"attempts: {reason or self.connector.one_line(exc)}"
            ) from None
        except UnicodeEncodeError:
            raise MalformedDocument(
                f"project {project}: the document holds text PostgreSQL cannot store "
                "(a lone surrogate); not written"
            ) from None
        except psycopg.Error as exc:
            raise CannotWork(
                f"project {project}: could not save: {self.connector.one_line(exc)}"
            ) from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _table(names: Names) -> sql.Identifier:
    return sql.Identifier(*names.table.split("."))


async def _create_table(conn: Conn, names: Names) -> None:
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


async def _prepare(conn: Conn, names: Names, shape: Shape) -> _Statements:
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
    key, doc = sql.Identifier(names.key_column), sql.Identifier(names.document_column)
    value = sql.SQL("%s::{}").format(_CASTS[doc_type]) if doc_type in _CASTS else sql.SQL("%s")
    touch: sql.Composable = sql.SQL("")
    has_updated_at = columns.get(names.updated_at_column) in ("timestamptz", "timestamp")
    if has_updated_at:
        touch = sql.SQL(", {} = now()").format(sql.Identifier(names.updated_at_column))
    fmt = {"t": table, "k": key, "d": doc, "v": value, "touch": touch}
    return _Statements(
        select_for_update=sql.SQL("SELECT {d}::text FROM {t} WHERE {k} = %s FOR UPDATE").format(
            **fmt
        ),
        select_one=sql.SQL("SELECT {d}::text FROM {t} WHERE {k} = %s").format(**fmt),
        # By the key type's own equality (a citext key matches in any case), each document
        # under the spelling it was asked for.
        select_many=sql.SQL(
            "SELECT g.given, {d}::text FROM unnest(%s::text[]) AS g(given) "
            "JOIN {t} ON {k} = g.given::{kt}"
        ).format(kt=sql.SQL(formatted[names.key_column]), **fmt),
        # The row's own key for each given spelling, by the column type's own equality.
        resolve=sql.SQL(
            "SELECT g.given, {k}::text FROM unnest(%s::text[]) AS g(given) "
            "JOIN {t} ON {k} = g.given::{kt}"
        ).format(kt=sql.SQL(formatted[names.key_column]), **fmt),
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
