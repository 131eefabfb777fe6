"""Hardening: driver errors translated, secrets never shown, waits bounded, input capped."""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo

from imgsave._demo.incident import incident_document


def test_permission_denied_on_the_table_is_one_clear_line_not_an_internal_error(cli, rows, db_url):
    rows.put("p1", incident_document(1))
    role = f"imgsave_noperm_{secrets.token_hex(3)}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        url = make_conninfo(db_url, user=role)
        env = {"IMGSAVE_DATABASE_URL": url, "IMGSAVE_BASE_URL": "https://x.test/v1"}
        for command in (["generate", "p1"], ["audit", "p1"], ["repair", "p1", "--execute"]):
            ran = cli(*command, env=env)
            assert ran.code == 3, (command, ran.stderr)
            assert "permission denied for table projects" in ran.stderr
            assert "internal error" not in ran.stderr and len(ran.stderr.splitlines()) == 1
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_key_no_integer_column_can_hold_is_simply_not_found(cli, db_url, tmp_path):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE iprojects (id int8 PRIMARY KEY, generated_output jsonb)")
        conn.execute(
            "INSERT INTO iprojects VALUES (1, %s::jsonb)", (json.dumps(incident_document(1)),)
        )
    with (tmp_path / "imgsave.toml").open("a") as handle:
        handle.write('[names]\ntable = "iprojects"\n')
    env = {"IMGSAVE_BASE_URL": "https://x.test/v1"}
    for key in ("²", "1e3", "99999999999999999999"):
        ran = cli("generate", key, env=env)
        assert ran.code == 3 and f"project {key} not found" in ran.stderr, ran.stderr


def test_a_huge_log_line_is_skipped_and_counted_in_bounded_memory(db_url, rows, tmp_path):
    import gzip
    import os
    import subprocess
    import sys

    from imgsave._demo.incident import APP_LOG_PATTERN

    rows.put("p1", incident_document(1))
    log = tmp_path / "app.log.gz"
    good = "2026-11-20T10:00:00Z [p1] [Scene 1] Saved image to database: https://i.test/ok\n"
    with gzip.open(log, "wb", compresslevel=1) as handle:
        handle.write(good.replace("/ok", "/before").encode())
        chunk = b"a" * (1 << 20)
        for _ in range(256):  # one line of 256 MiB
            handle.write(chunk)
        handle.write(b"\n" + good.encode())
    # Run audit in a process of its own and report that process's peak memory.
    program = (
        "import sys\n"
        "from imgsave.cli.app import main\n"
        "log, pattern = sys.argv[1:]\n"
        "sys.argv = ['imgsave', 'audit', '--log', log, '--pattern', pattern, '--json']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        # VmHWM, not ru_maxrss: Linux carries the parent's peak into a child's ru_maxrss at
        # exec, so a big pytest process would be counted as the audit's own memory.
        "peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(code, peak, file=sys.stderr)\n"
    )
    env = {**os.environ, "IMGSAVE_DATABASE_URL": db_url, "IMGSAVE_LOG_DIR": str(tmp_path)}
    ran = subprocess.run(
        [sys.executable, "-c", program, str(log), APP_LOG_PATTERN],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    code, peak_kib = ran.stderr.split()[-2:]
    report = json.loads(ran.stdout)
    assert int(code) == 1
    assert {f["url"] for f in report["lost"]} == {"https://i.test/before", "https://i.test/ok"}
    assert report["skipped"]["too_long"] == 1 and report["summary"]["lines_skipped"] == 1
    assert int(peak_kib) < 200 * 1024, f"peak {int(peak_kib) // 1024} MiB for a 256 MiB line"


def test_a_catastrophic_pattern_cannot_hold_audit_on_a_hostile_line(cli, rows, tmp_path):
    rows.put("p1", incident_document(1))
    log = tmp_path / "app.log"
    log.write_text("1 " + "a" * 36 + "b\n" + "1 aaa\n")
    # Python's backtracking engine needs about 2**36 steps for the first line.
    pattern = r"^(?P<scene>\d) (?P<url>(?:a+)+)$"
    ran = cli("audit", "--log", str(log), "--pattern", pattern, "--project", "p1")
    # The second line matches, and its URL is refused by the URL rule: both lines counted.
    assert ran.code == 0, ran.stderr
    assert "2 log lines in 1 file, 2 skipped (1 unmatched, 1 refused URLs)" in ran.stdout


def test_a_pattern_re2_cannot_run_in_linear_time_is_refused(cli):
    ran = cli("audit", "--pattern", r"(?<=Scene )(?P<scene>\d+) (?P<url>\S+)", "--project", "p")
    assert ran.code == 2
    assert "lookaround and backreferences are not supported" in ran.stderr
    assert len(ran.stderr.splitlines()) == 1


async def test_dead_idle_pooled_connections_cost_a_retry_not_seconds_of_back_off(
    settings, rows, db_url
):
    import asyncio
    import time

    from imgsave._demo.writes import DemoDatabase
    from imgsave.core.documents import SceneRef, Shape, append_urls, decode, encode

    rows.put("p1", incident_document(1))

    def add(url: str):
        def change(raw):
            edit = append_urls(decode(raw), Shape(), [(SceneRef(1), url)])
            return encode(edit.document), None

        return change

    async with await DemoDatabase.from_settings(settings, max_size=4) as db:

        async def hold() -> None:
            async with db.connector._pool.connection():
                await asyncio.sleep(0.2)

        await asyncio.gather(*(hold() for _ in range(4)))  # four connections, now idle
        started = time.monotonic()
        await db.locked_update("p1", add("https://i.test/a"))
        fault_free = time.monotonic() - started
        with psycopg.connect(db_url, autocommit=True) as conn:
            dropped = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'imgsave' AND datname = current_database()"
            ).fetchone()[0]
        assert dropped >= 3, "the test must leave several dead connections in the pool"
        started = time.monotonic()
        await db.locked_update("p1", add("https://i.test/b"))
        after_drop = time.monotonic() - started
    assert rows.urls("p1")[1] == ["https://i.test/a", "https://i.test/b"]
    # The pool's own check would sleep 1 s, then 2 s, ... between dead connections (3 s and
    # more for three of them): a generous bound still tells the two apart on a loaded machine.
    assert after_drop < max(2.0, 3 * fault_free), (after_drop, fault_free)


class _Trickle:
    """A loopback HTTP server that sends its status line, then one header byte every 0.2 s."""

    def __init__(self) -> None:
        import socket
        import threading

        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(300):  # at most a minute, then it gives up by itself
                    if self._stop.wait(0.2):
                        return
                    conn.sendall(b"a")
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


async def test_a_trickling_provider_gets_a_total_deadline_per_attempt():
    import asyncio
    import time

    from imgsave.adapters.imageapi.client import ImageFailed, Provider
    from imgsave.core.settings import ProviderSettings

    server = _Trickle()
    conf = ProviderSettings(timeout=1.0, max_attempts=2, backoff_initial=0.01, backoff_max=0.02)
    provider = Provider(f"http://127.0.0.1:{server.port}/v1", None, None, conf)
    started = time.monotonic()
    try:
        with pytest.raises(ImageFailed, match="no complete answer within 1s"):
            await asyncio.wait_for(provider.generate("a lighthouse"), 20)
    finally:
        await provider.aclose()
        server.close()
    assert time.monotonic() - started < 5, "two attempts of one second each, not minutes"


async def test_check_urls_gives_a_trickling_host_a_total_deadline():
    import asyncio

    from imgsave.adapters.imageapi.url_check import check_urls

    server = _Trickle()
    url = f"http://127.0.0.1:{server.port}/img/a.png"
    try:
        verdicts = await asyncio.wait_for(check_urls([url], request_timeout=1.0), 10)
    finally:
        server.close()
    assert verdicts == {url: None}, "could not tell: stays lost, never expired"


async def test_a_partition_after_select_for_update_neither_holds_the_lock_nor_the_run(db_url):
    import asyncio
    import time

    from psycopg.conninfo import conninfo_to_dict

    from imgsave.adapters.postgres.database import Database
    from imgsave.core.settings import DatabaseSettings, Names

    from .netproxy import PartitionableProxy

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projects (id, generated_output) VALUES ('p1', %s::jsonb)",
            (json.dumps(incident_document(1)),),
        )
    params = conninfo_to_dict(db_url)
    host, port = params.get("host") or "127.0.0.1", int(params.get("port") or 5432)
    upstream = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
    # An attempt's deadline: lock_timeout + 2 x statement_timeout + 1 = 3.5 s.
    settings = DatabaseSettings(lock_timeout=0.5, statement_timeout=1, connect_timeout=2)
    with PartitionableProxy(upstream) as proxy:
        url = make_conninfo(db_url, host="127.0.0.1", port=str(proxy.port))
        async with await Database.open(url, Names(), settings) as db:
            attempts = []

            def change(raw):
                attempts.append(raw)
                if len(attempts) == 1:
                    proxy.partitioned.set()  # the row is locked; now the network goes silent
                doc = json.loads(raw)
                doc["scenes"][0]["imageUrls"] = ["https://i.test/a"]
                return json.dumps(doc), None

            started = time.monotonic()
            save = asyncio.create_task(db.locked_update("p1", change))
            await asyncio.sleep(0.3)

            def the_apps_own_write() -> float:
                begun = time.monotonic()
                with psycopg.connect(db_url, autocommit=True) as conn:
                    conn.execute("SET lock_timeout = '20s'")
                    conn.execute("UPDATE projects SET updated_at = now() WHERE id = 'p1'")
                return time.monotonic() - begun

            waited = await asyncio.to_thread(the_apps_own_write)
            # The server ends the silent session (idle in transaction) and frees the row.
            assert waited < 3, f"the app's write waited {waited:.1f} s for imgsave's lock"
            # The network heals only once the attempt's deadline has passed.
            await asyncio.sleep(max(0.0, 3.5 - (time.monotonic() - started)))
            proxy.partitioned.clear()
            await asyncio.wait_for(save, 60)
            elapsed = time.monotonic() - started
    assert len(attempts) >= 2, "the silent attempt was given up on and retried"
    # Deadline, then a 0.5 s grace, then one quick attempt (psycopg alone would add 10 s).
    assert elapsed < 6, f"the attempt outlived its 3.5 s deadline: {elapsed:.1f} s"
    with psycopg.connect(db_url) as conn:
        (doc,) = conn.execute("SELECT generated_output FROM projects").fetchone()
    assert doc["scenes"][0]["imageUrls"] == ["https://i.test/a"]


# -- secrets ---------------------------------------------------------------------------------

_SECRET = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=20
)


def _spellings(secret: str) -> set[str]:
    from urllib.parse import quote

    return {secret, quote(secret, safe=""), secret.replace("\\", "\\\\").replace("'", "\\'")}


def _invoke(args: list[str], env: dict[str, str], cwd) -> tuple[int, str, str]:
    import os

    from typer.testing import CliRunner

    from imgsave.cli.app import app

    here = os.getcwd()
    os.chdir(cwd)  # no imgsave.toml of the test's but this one
    try:
        result = CliRunner().invoke(app, args, env=env)
    finally:
        os.chdir(here)
    return result.exit_code, result.stdout, result.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=_SECRET, form=st.sampled_from(["url", "keyvalue"]), json_output=st.booleans())
def test_no_database_password_in_any_output_and_no_other_byte_changed(
    tmp_path, password, form, json_output
):
    from urllib.parse import quote

    port = _closed_port()

    def url(secret: str) -> str:
        if form == "url":
            return f"postgresql://app:{quote(secret, safe='')}@127.0.0.1:{port}/db"
        quoted = secret.replace("\\", "\\\\").replace("'", "\\'")
        return f"host=127.0.0.1 port={port} user=app password='{quoted}' dbname=db"

    args = ["audit", "p1", *(["--json"] if json_output else [])]

    def run(secret: str) -> tuple[int, str, str]:
        env = {"IMGSAVE_DATABASE_URL": url(secret), "IMGSAVE_LOG_DIR": str(tmp_path / "logs")}
        return _invoke(args, env, tmp_path)

    reference = run("REFERENCE-PASSWORD-0")
    assume(not any(s in "".join(map(str, reference)) for s in _spellings(password)))
    got = run(password)
    assert got[0] == 3
    for spelling in _spellings(password):
        assert spelling not in got[1] + got[2]
    assert got == reference, "masking changed something other than the password"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=_SECRET)
def test_an_api_key_the_provider_echoes_is_in_no_output_and_no_log(db_url, rows, tmp_path, key):
    import re

    from imgsave._demo.loopback import LoopbackProvider

    rows.put("p1", incident_document(1))
    logs = tmp_path / "logs"

    def run(secret: str) -> tuple[int, str, str]:
        env = {
            "IMGSAVE_DATABASE_URL": db_url,
            "IMGSAVE_LOG_DIR": str(logs),
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_API_KEY": secret,
        }
        code, out, err = _invoke(["generate", "p1", "--allow-http", "--json"], env, tmp_path)
        # Run ids and timestamps differ between runs; nothing else may.
        return code, re.sub(r"\d{8}T\d{6}Z-[0-9a-f]{6}", "RUN", out), err

    with LoopbackProvider(faults=lambda n: "401") as api:
        reference = run("REFERENCE-KEY-0")
        before = "".join(p.read_text() for p in logs.glob("*.jsonl"))
        # A "key" that is also a word of the output (scene_id, generate) cannot be told apart.
        assume(not any(s in "".join(map(str, reference)) + before for s in _spellings(key)))
        got = run(key)
    assert got[0] == 3 and "Incorrect API key provided: Bearer ***" in got[2]
    logged = "".join(p.read_text() for p in logs.glob("*.jsonl"))
    assert "Incorrect API key provided: Bearer ***" in logged
    for spelling in _spellings(key):
        assert spelling not in got[1] + got[2] + logged
    assert got == reference, "masking changed something other than the key"


def test_a_short_api_key_is_not_masked_in_data_and_is_warned_about(db_url, rows, tmp_path):
    rows.put("abc-project", incident_document(1))
    env = {
        "IMGSAVE_DATABASE_URL": db_url,
        "IMGSAVE_LOG_DIR": str(tmp_path / "logs"),
        "IMGSAVE_BASE_URL": "https://x.test/v1",
        "IMGSAVE_API_KEY": "abc",
    }
    code, out, err = _invoke(["audit", "abc-project", "--json"], env, tmp_path)
    assert json.loads(out)["summary"]["lost"] == 0 and "***" not in out
    assert "the API key is only 3 characters long: it looks wrong" in err
    assert code == 0


# -- the app's document, kept as it was ------------------------------------------------------

ODD_DOCUMENT = (
    '{\n  "title": "caf\\u00e9 \\/ \\ud800",\n  "zero": -0,\n  "huge": 1e400,\n'
    '  "scenes": [\n    {"id": "scene-1", "imagePrompt": "a", "imageUrls": []},\n'
    '    {"id": "scene-2", "imagePrompt": "b"}\n  ]\n}'
)


@pytest.mark.parametrize("column_type", ["json", "text"])
def test_generate_into_a_json_or_text_column_changes_only_the_appended_arrays(
    cli, db_url, column_type
):
    from imgsave._demo.loopback import LoopbackProvider

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE projects ALTER COLUMN generated_output TYPE {}").format(
                sql.SQL(column_type)
            )
        )
        conn.execute(
            "INSERT INTO projects (id, generated_output) VALUES ('p1', %s)", (ODD_DOCUMENT,)
        )
    with LoopbackProvider() as api:
        ran = cli(
            "generate", "p1", "--allow-http", "--json", env={"IMGSAVE_BASE_URL": api.base_url}
        )
        first, second = api.served
    assert ran.code == 0, ran.stderr
    with psycopg.connect(db_url) as conn:
        (stored,) = conn.execute("SELECT generated_output::text FROM projects").fetchone()
    one_of = [
        ODD_DOCUMENT.replace('"imageUrls": []', f'"imageUrls": ["{a}"]').replace(
            '"imagePrompt": "b"}', f'"imagePrompt": "b","imageUrls":["{b}"]}}'
        )
        for a, b in ((first, second), (second, first))
    ]
    assert stored in one_of


def test_a_duplicate_key_that_makes_the_target_ambiguous_is_refused_and_the_image_kept(
    cli, db_url, log_dir
):
    from imgsave._demo.loopback import LoopbackProvider

    ambiguous = (
        '{"scenes":[{"id":"s1","imagePrompt":"a","imageUrls":["https://old.test/1.png"],'
        '"imageUrls":[]}]}'
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE projects ALTER COLUMN generated_output TYPE json")
        conn.execute("INSERT INTO projects (id, generated_output) VALUES ('p1', %s)", (ambiguous,))
    with LoopbackProvider() as api:
        ran = cli(
            "generate", "p1", "--allow-http", "--json", env={"IMGSAVE_BASE_URL": api.base_url}
        )
        (paid,) = api.served
    assert ran.code == 1
    assert "has the key 'imageUrls' 2 times; refusing to guess" in ran.stderr
    with psycopg.connect(db_url) as conn:
        (stored,) = conn.execute("SELECT generated_output::text FROM projects").fetchone()
    assert stored == ambiguous, "nothing written"
    assert paid in "".join(p.read_text() for p in log_dir.glob("*.jsonl")), "the image is logged"


def test_a_jsonb_number_of_5001_digits_is_not_a_reason_to_refuse_the_document(cli, rows):
    from imgsave._demo.loopback import LoopbackProvider

    rows.put("p1", '{"n": ' + "7" * 5001 + ', "scenes": [{"imagePrompt": "a"}]}', raw=True)
    with LoopbackProvider() as api:
        ran = cli("generate", "p1", "--allow-http", env={"IMGSAVE_BASE_URL": api.base_url})
    assert ran.code == 0, ran.stderr
    from imgsave.core.documents import Shape, decode, scenes

    text = rows.text("p1")
    assert '"n": ' + "7" * 5001 in text, "the number kept digit for digit"
    assert len(scenes(decode(text), Shape())[0].urls) == 1


@pytest.mark.parametrize("key_type", ["uuid", "text", "bigint"])
async def test_every_project_key_is_listed_once_a_batch_at_a_time(db_url, key_type):
    """What `rehost --all` walks: every key, in the key's own order, no batch repeating one."""
    import uuid as uuid_module

    from imgsave.adapters.postgres.database import Database
    from imgsave.core.settings import DatabaseSettings, Names

    values = {
        "uuid": [str(uuid_module.uuid4()) for _ in range(7)],
        "text": ["b", "a", "B", "a b", "ä", "z", "0"],
        "bigint": ["10", "9", "-3", "100", "0", "7", "8"],
    }[key_type]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE keyed (k {key_type} PRIMARY KEY, doc jsonb)")
        for value in values:
            conn.execute(f"INSERT INTO keyed VALUES (%s::{key_type}, '{{}}')", (value,))
        expected = [r[0] for r in conn.execute("SELECT k::text FROM keyed ORDER BY keyed.k")]
    names = Names(table="keyed", key_column="k", document_column="doc")
    async with await Database.open(db_url, names, DatabaseSettings()) as db:
        batches = [keys async for keys in db.project_keys(batch=3)]
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [k for b in batches for k in b] == expected


# A job API whose polls answer 150 MB each, and a client that polls it twice: its peak memory.
_HUGE_POLLS = r"""
import asyncio, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from imgsave.adapters.imageapi.client import ImageFailed, Provider
from imgsave.core.settings import ProviderSettings

class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        base = f"http://127.0.0.1:{self.server.server_address[1]}/v1/predictions/p1"
        body = json.dumps({"id": "p1", "status": "starting", "urls": {"get": base}}).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        head, tail = b'{"id": "p1", "status": "processing", "logs": "', b'"}'
        chunk = b"A" * (1 << 20)
        self.send_response(200)
        self.send_header("Content-Length", str(len(head) + 150 * len(chunk) + len(tail)))
        self.end_headers()
        try:
            self.wfile.write(head)
            for _ in range(150):
                self.wfile.write(chunk)
            self.wfile.write(tail)
        except OSError:
            pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
threading.Thread(target=server.serve_forever, daemon=True).start()

async def main():
    settings = ProviderSettings(kind="replicate", poll_interval=0.01)
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    outcomes = []
    async with Provider(base, "r8-key", "o/m", settings, max_image_bytes=1_000_000) as provider:
        for _ in range(2):
            try:
                await provider.generate("a lighthouse")
                outcomes.append("answered")
            except ImageFailed as exc:
                outcomes.append(f"failed job={exc.job}: {exc}")
    return outcomes

outcomes = asyncio.run(main())
peak = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"outcomes": outcomes, "peak_kib": int(peak)}))
"""


def test_job_polls_are_read_within_the_answer_cap_in_bounded_memory():
    """Two polls of 150 MB each: read no further than a submission's answer may be (its
    images as base64 and their JSON), so the process stays small, and the job is over for
    imgsave (no image it could store can be in such an answer)."""
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-c", _HUGE_POLLS], capture_output=True, text=True, timeout=120
    )
    result = json.loads(ran.stdout)
    assert [o.split(":")[0] for o in result["outcomes"]] == ["failed job=p1"] * 2, result
    assert "a poll's answer is over" in result["outcomes"][0]
    assert result["peak_kib"] < 100 * 1024, f"peak {result['peak_kib'] // 1024} MiB"
