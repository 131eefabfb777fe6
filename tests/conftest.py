"""Fixtures: a real PostgreSQL (IMGSAVE_TEST_DATABASE_URL, else the embedded one), a fresh
database per test cloned from a template, and a real loopback image API."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.adapters.imageapi.kinds import KINDS
from imgsave.core.settings import DatabaseSettings, ProviderSettings, Settings

TEMPLATE = f"imgsave_template_{os.getpid()}"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`make test` runs `pytest -n auto`: two workers per core (most tests wait on PostgreSQL,
    HTTP or a sleep, not the CPU), at most 8, on a server given by IMGSAVE_TEST_DATABASE_URL;
    one on the embedded server, which each worker would otherwise start a copy of. Every test
    has its own database and log folder either way."""
    if not os.environ.get("IMGSAVE_TEST_DATABASE_URL"):
        return 1
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `many_connections` run one at a time across the workers (below), so they
    go first: they then queue behind each other while the other workers run the rest, instead
    of trailing the suite one by one at its end."""
    items.sort(key=lambda item: item.get_closest_marker("many_connections") is None)


@pytest.fixture(autouse=True)
def _connection_hungry_one_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Tests marked `many_connections` (64 callers at once, two imgsave processes) run one at a
    time across the parallel workers: together they would pass the server's max_connections
    (100 by default), and a test would fail on "too many clients" for no fault of imgsave's."""
    if request.node.get_closest_marker("many_connections") is None:
        yield
        return
    import fcntl

    # The parent of a worker's base temp is the one every worker of this run shares.
    lock = tmp_path_factory.getbasetemp().parent / "many_connections.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("IMGSAVE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from imgsave.adapters.postgres import embedded

    data = Path(tempfile.mkdtemp(prefix="imgsave-test-pg-"))
    yield embedded.start(data / "pgdata")


PROJECTS_DDL = (
    "CREATE TABLE projects (id text PRIMARY KEY, generated_output jsonb, "
    "updated_at timestamptz NOT NULL DEFAULT now())"
)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    with psycopg.connect(make_conninfo(server_url, dbname=TEMPLATE), autocommit=True) as conn:
        conn.execute(PROJECTS_DDL)
    yield TEMPLATE
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )


@dataclass
class _Databases:
    """This worker's test databases: each test gets one of its own, fresh. Cloning one from
    the template costs the server a checkpoint (about 0.15 s); a database a finished test used
    is reset instead, to what a clone would be, in a few milliseconds."""

    server_url: str
    template: str
    spare: list[str]
    made: list[str]

    def take(self) -> str:
        if self.spare:
            name = self.spare.pop()
            self._reset(name)
            return name
        name = f"imgsave_test_{secrets.token_hex(4)}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            # PostgreSQL 15's default WAL_LOG strategy copies a tiny template in ~150 ms,
            # FILE_COPY in ~50.
            strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}" + strategy).format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        self.made.append(name)
        return name

    def _reset(self, name: str) -> None:
        """Everything the last test made goes: its sessions, and every schema with what is in
        it; `public` comes back as PostgreSQL 15 makes it, with the template's table."""
        with psycopg.connect(make_conninfo(self.server_url, dbname=name), autocommit=True) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            schemas = c.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' "
                "AND nspname <> 'information_schema'"
            ).fetchall()
            with c.transaction():
                for (schema,) in schemas:
                    c.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                c.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
                c.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
                c.execute("COMMENT ON SCHEMA public IS 'standard public schema'")
                c.execute(PROJECTS_DDL)


@pytest.fixture(scope="session")
def _databases(server_url: str, template_db: str) -> Iterator[_Databases]:
    databases = _Databases(server_url, template_db, [], [])
    yield databases
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in databases.made:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def db_url(server_url: str, _databases: _Databases) -> Iterator[str]:
    """A fresh database for each test: cloned from a template (procrastinate's way), or one an
    earlier test of this worker used, reset to the same state."""
    name = _databases.take()
    yield make_conninfo(server_url, dbname=name)
    _databases.spare.append(name)


@pytest.fixture
def pooler_url(server_url: str, db_url: str) -> Iterator[str]:
    """The test database behind PgBouncer in transaction mode, as Supabase's port 6543 is: each
    transaction may run on a different server connection, and prepared statements break."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(binary, os.X_OK):
        # `make test` needs no root: without PgBouncer these tests are skipped, said so in
        # pytest's summary. CI installs it (.ci/run) and must run them.
        reason = (
            "pgbouncer is not installed, so the transaction-pooler tests (Supabase's port 6543) "
            "cannot run: install it (Debian/Ubuntu: sudo apt-get install pgbouncer; macOS: brew "
            "install pgbouncer) and run make test again"
        )
        if os.environ.get("CI"):
            pytest.fail(f"on CI: {reason}")
        pytest.skip(reason)
    params = conninfo_to_dict(server_url)
    # Its own folder: PgBouncer runs as another user, who cannot enter pytest's tmp_path.
    home = Path(tempfile.mkdtemp(prefix="imgsave-pgbouncer-"))
    os.chmod(home, 0o755)
    port = _free_port()
    (home / "users.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={params.get('host') or '127.0.0.1'} port={params.get('port') or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    for child in home.iterdir():
        os.chmod(child, 0o644)
    # PgBouncer refuses to run as root; -u drops to another user after start: one who may
    # reach the server (a Unix socket's directory is its owner's alone, as embedded's is).
    host = str(params.get("host") or "")
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
    user = ["-u", owner] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [binary, *user, str(home / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = make_conninfo(db_url, host="127.0.0.1", port=str(port), user="postgres")
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(url, connect_timeout=1).close()
            break
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"pgbouncer did not start: {proc.stderr.read()!r}") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    proc.stderr.close()
    shutil.rmtree(home, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    """Generation logs in memory when the machine has a tmpfs: every paid image is fsynced
    before it is saved, and on this disk a thousand fsyncs take seconds that prove nothing a
    test looks at (the order of operations is checked from the log's content)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "logs"
        return
    home = Path(tempfile.mkdtemp(prefix="imgsave-logs-", dir=shm))
    yield home / "logs"
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def settings(db_url: str, log_dir: Path) -> Settings:
    return Settings(
        database_url=db_url,
        log_dir=log_dir,
        # The loopback provider's images are on 127.0.0.1; the refusal has its own tests.
        allow_private_network=True,
        provider=ProviderSettings(
            timeout=10.0,
            max_attempts=6,
            # The fault tests answer garbage on purpose, more than once per image.
            max_billed_retries=5,
            backoff_initial=0.01,
            backoff_max=0.05,
            max_retry_after=0.2,
        ),
        database=DatabaseSettings(lock_timeout=1.0, statement_timeout=10.0, max_attempts=8),
    )


@pytest.fixture
def api() -> Iterator[LoopbackProvider]:
    with LoopbackProvider() as provider:
        yield provider


@dataclass
class Rows:
    """Direct access to the test database, bypassing imgsave, to set up and check."""

    url: str

    def put(self, project: str, document: object, *, raw: bool = False) -> None:
        text = document if raw else json.dumps(document)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO projects (id, generated_output, updated_at) "
                "VALUES (%s, %s::jsonb, now() - interval '1 day') ON CONFLICT (id) DO UPDATE "
                "SET generated_output = excluded.generated_output",
                (project, text),
            )

    def text(self, project: str) -> str | None:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT generated_output::text FROM projects WHERE id = %s", (project,)
            ).fetchone()
        return row[0] if row else None

    def doc(self, project: str) -> object:
        text = self.text(project)
        return None if text is None else json.loads(text)

    def urls(self, project: str) -> dict[int, list[str]]:
        doc = self.doc(project)
        if isinstance(doc, str):
            doc = json.loads(doc)
        return {
            s.get("index", i + 1): list(s.get("imageUrls") or [])
            for i, s in enumerate(doc["scenes"])
        }

    def updated_at(self, project: str) -> object:
        with psycopg.connect(self.url) as conn:
            return conn.execute(
                "SELECT updated_at FROM projects WHERE id = %s", (project,)
            ).fetchone()[0]


@pytest.fixture
def rows(db_url: str) -> Rows:
    return Rows(db_url)


@pytest.fixture
def incident_project(rows: Rows) -> str:
    rows.put("p1", incident_document(20))
    return "p1"


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def imgsave_command() -> list[str]:
    script = Path(sys.executable).with_name("imgsave")
    return [str(script)] if script.exists() else [shutil.which("imgsave") or "imgsave"]


@functools.cache
def _cli_runner() -> tuple[Any, Any]:
    """A runner and the app, for every in-process run of this worker. Typer's runner rebuilds
    the click command from the app on every invoke (16 ms of CPU, hundreds of times a suite):
    the command it builds is remembered instead, as the installed script builds it once."""
    import typer.testing

    from imgsave.cli.app import app

    build = typer.testing._get_command
    command = build(app)
    typer.testing._get_command = lambda given: command if given is app else build(given)
    return typer.testing.CliRunner(), app


# What a user's shell could hold that would change a run: every test states its own.
_OUTSIDE = ("DATABASE_URL", *(kind.facts.key_variable for kind in KINDS.values()))


@pytest.fixture
def cli(db_url: str, log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run the `imgsave` command in-process (Typer's CliRunner, sqlite-utils' way): the same
    parsing, settings, exit codes and output as the installed script, without a new interpreter.
    Tests whose point is a signal, a SIGKILL or two processes use `spawn` instead."""
    # Fast retries for tests, through the real config-file path.
    (tmp_path / "imgsave.toml").write_text(
        "allow_private_network = true\n"
        "[provider]\ntimeout = 10\nbackoff_initial = 0.01\nbackoff_max = 0.05\n"
        "max_billed_retries = 5\n"
        "max_retry_after = 0.2\n[database]\nlock_timeout = 1\n"
    )
    monkeypatch.chdir(tmp_path)
    runner, app = _cli_runner()

    def run(*args: str, env: dict[str, str] | None = None) -> Ran:
        environ: dict[str, str | None] = {
            k: None for k in os.environ if k.startswith("IMGSAVE_") or k in _OUTSIDE
        }
        environ.update(
            {
                "IMGSAVE_DATABASE_URL": db_url,
                "IMGSAVE_LOG_DIR": str(log_dir),
                "COLUMNS": "200",
                # The user's own ~/.config/imgsave/imgsave.toml is no test's settings.
                "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
            }
        )
        environ.update(env or {})
        outcome: list[object] = []

        def invoke() -> None:
            outcome.append(runner.invoke(app, list(args), env=environ, catch_exceptions=False))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            invoke()
        else:  # called from an async test: the command's asyncio.run needs a thread of its own
            thread = threading.Thread(target=invoke)
            thread.start()
            thread.join()
        (result,) = outcome
        return Ran(result.exit_code, result.stdout, result.stderr)  # type: ignore[attr-defined]

    return run


def process_env(db_url: str, api: LoopbackProvider, log_dir: Path) -> dict[str, str]:
    """What a spawned `imgsave` needs: this test's database, log folder and provider."""
    return {
        "IMGSAVE_DATABASE_URL": db_url,
        "IMGSAVE_LOG_DIR": str(log_dir),
        "IMGSAVE_BASE_URL": api.base_url,
        "IMGSAVE_API_KEY": "sk-test-SECRET-123",
        "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1",
        "XDG_CONFIG_HOME": str(log_dir.parent / "xdg-config"),
    }


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start the installed `imgsave` in the background, for tests that signal or race it."""
    return subprocess.Popen(
        [*imgsave_command(), *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def imgsave_waits_for_a_lock(watch: psycopg.Connection) -> bool:
    """Whether one of imgsave's sessions in this test's database is blocked on a lock right now
    (seen from `watch`, an autocommit connection: inside a transaction, pg_stat_activity would
    stay one snapshot). Other tests' sessions, running in parallel, are in other databases."""
    row = watch.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'imgsave' "
        "AND wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchone()
    return row is not None and row[0] > 0


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def s3() -> Iterator[object]:
    """An S3-compatible server on loopback (moto) with a public bucket."""
    from .storage import moto_s3

    with moto_s3() as server:
        yield server


@pytest.fixture
def role(db_url):
    """A login role of this test's own (roles are the server's, shared by parallel tests)."""
    made: list[str] = []

    def make(grant_table: bool = True) -> str:
        name = f"imgsave_role_{secrets.token_hex(4)}"
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            if grant_table:
                conn.execute(
                    sql.SQL("GRANT SELECT, UPDATE ON projects TO {}").format(sql.Identifier(name))
                )
        made.append(name)
        return name

    yield make
    with psycopg.connect(db_url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
