"""What every benchmark shares: its own database, set-up helpers, and the result it returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from imgsave.core.settings import DatabaseSettings, ProviderSettings, Settings

SERVER = os.environ.get(
    "IMGSAVE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# Its own name per checkout when several share a server (IMGSAVE_BENCH_DB): a run drops and
# recreates it, and another run's audit would find its projects truncated under it.
BENCH_DB = os.environ.get("IMGSAVE_BENCH_DB", "imgsave_bench")
URL = make_conninfo(SERVER, dbname=BENCH_DB)
IMGSAVE = str(Path(sys.executable).with_name("imgsave"))
HERE = Path(__file__).parent


class PipedServer:
    """A loopback server script of ours in a process of its own: it prints its address on its
    first line and stops when its stdin closes."""

    def __init__(self, script: str, *args: str):
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._proc.stdout is None:
            raise RuntimeError(f"no pipe to {script}")
        self.address = self._proc.stdout.readline().strip()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(timeout=10)
        if self._proc.stdout:
            self._proc.stdout.close()


class BenchmarkFailed(Exception):
    """A benchmark's own correctness check failed: its numbers mean nothing."""


def check(condition: bool, message: str) -> None:
    # Not `assert`: a benchmark run with -O must still refuse to report a wrong result.
    if not condition:
        raise BenchmarkFailed(message)


@dataclass
class Result:
    benchmark: str
    imgsave: str
    baseline: str
    ratio: float
    goal: str
    # Raw numbers, for whoever reads the JSON rather than the table.
    measured: dict[str, float] = field(default_factory=dict)


@contextmanager
def bench_database() -> Iterator[str]:
    """A database of the benchmarks' own, created empty and dropped afterwards."""
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB))
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    try:
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE projects (id text PRIMARY KEY, generated_output jsonb, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            )
        yield URL
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(drop)


def load_app_documents(rows: str) -> None:
    """The projects table holding just `rows` (COPY text), in a database as an app's is before
    imgsave: the tables earlier benchmarks' runs made (their ledger rows, whose projects are
    gone now, would be orphaned findings of an audit) are dropped."""
    with psycopg.connect(URL, autocommit=True) as conn:
        made = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE 'imgsave\\_%'"
        ).fetchall()
        for (table,) in made:
            conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(table)))
        conn.execute("TRUNCATE projects")
        with conn.cursor().copy("COPY projects (id, generated_output) FROM STDIN") as copy:
            copy.write(rows.replace("\\", "\\\\"))
        conn.execute("VACUUM ANALYZE projects")


def server_version() -> str:
    with psycopg.connect(SERVER) as conn:
        return conn.info.parameter_status("server_version") or "?"


def put(project: str, document: object) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projects (id, generated_output) VALUES (%s, %s) ON CONFLICT (id) "
            "DO UPDATE SET generated_output = excluded.generated_output",
            (project, json.dumps(document)),
        )


def stored_count(project: str) -> int:
    with psycopg.connect(URL) as conn:
        row = conn.execute(
            "SELECT sum(jsonb_array_length(COALESCE(s->'imageUrls', '[]'))) FROM projects, "
            "jsonb_array_elements(generated_output->'scenes') s WHERE id = %s",
            (project,),
        ).fetchone()
    return int(row[0] or 0) if row else 0


def settings(**extra: object) -> Settings:
    return Settings(
        database_url=URL,
        provider=ProviderSettings(timeout=10, backoff_initial=0.05, backoff_max=0.5),
        database=DatabaseSettings(lock_timeout=5, statement_timeout=30),
        **extra,  # type: ignore[arg-type]
    )
