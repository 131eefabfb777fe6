"""Several hosts, no double spend: runs claim scenes in PostgreSQL before paying for them.

Two real processes race on the same projects, each with its own loopback provider so that what
each one paid for is counted apart; the same harness with claims switched off shows two runs
paying for the same scenes. A SIGKILLed run's scenes are finished by a rerun, and nothing is
paid for twice except what the dead process had in flight.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.operations.claims import process_is_gone, this_process

from .conftest import process_env, spawn, wait_for
from .test_generate_cli import events, provider_env
from .test_many_projects import put_projects, scene_urls

# Each provider its own image URLs, as two real answers never share one.
IMAGES = "https://images.imgsave.test/"
CONFIG = (
    "[provider]\ntimeout = 10\nbackoff_initial = 0.01\nbackoff_max = 0.05\n"
    "max_retry_after = 0.2\n[database]\nlock_timeout = 1\n"
)


def two_hosts(db_url: str, tmp_path: Path, config: str, *args: str) -> tuple[int, int, list]:
    """Start two `generate --all` processes at once, each with its own provider; wait for both.
    Returns each provider's request count and both JSON results."""
    (tmp_path / "imgsave.toml").write_text(config)
    with (
        LoopbackProvider(latency=0.05, jitter=0.05, image_base=f"{IMAGES}a/") as a,
        LoopbackProvider(latency=0.05, jitter=0.05, image_base=f"{IMAGES}b/") as b,
    ):
        procs = [
            spawn(
                ["generate", "--all", *args, "--json"],
                process_env(db_url, api, tmp_path / n),
                tmp_path,
            )
            for api, n in ((a, "a"), (b, "b"))
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        for proc, (_, err) in zip(procs, outs, strict=True):
            assert proc.returncode == 0, err
        return a.requests, b.requests, [json.loads(out) for out, _ in outs]


@pytest.mark.many_connections
def test_two_processes_on_the_same_40_projects_generate_each_scene_once(db_url, tmp_path):
    put_projects(db_url, 40, 5)
    a, b, results = two_hosts(db_url, tmp_path, CONFIG, "-c", "8")
    assert a + b == 200, "provider requests == images needed: no scene was paid for twice"
    assert sum(r["saved"] for r in results) == 200
    urls = scene_urls(db_url)
    assert len(urls) == 200 and all(len(u) == 1 for u in urls.values())
    # Whatever one skipped as held, the other did.
    held = sum(r["held_scenes"] for r in results)
    assert sum(r["requested"] for r in results) == 200
    assert held == sum(len(p["held_scenes"]) for r in results for p in r["projects"])


async def test_two_runs_that_plan_at_once_both_buy_unless_claims_or_the_ledger_say_no(
    settings, rows
):
    """The window the process harness above relies on, made deterministic: two runs that both
    plan a scene before either has ordered it would both pay for it (no claims); with claims
    the second is told the scene is held; and once the first has ordered its images (the
    ledger), a run without claims plans nothing for them either."""
    from imgsave.core.ledger import Mode, NewPurchase
    from imgsave.operations.claims import Claims
    from imgsave.operations.planning import Ask, plan_project
    from imgsave.operations.session import opened

    rows.put("p1", incident_document(5))
    ask, shape = Ask(1), settings.shape
    async with opened(settings) as a, opened(settings) as b:
        first = await plan_project(a.db, a.ledger, None, "p1", ask, shape=shape)
        second = await plan_project(b.db, b.ledger, None, "p1", ask, shape=shape)
        assert (first.plan.requested, second.plan.requested) == (5, 5), "the race is real"
        async with (
            Claims(a.db.connector, a.run, 60) as claims_a,
            Claims(b.db.connector, b.run, 60) as claims_b,
        ):
            mine = await plan_project(a.db, a.ledger, claims_a, "p1", ask, shape=shape)
            theirs = await plan_project(b.db, b.ledger, claims_b, "p1", ask, shape=shape)
            assert (mine.plan.requested, theirs.plan.requested, len(theirs.held)) == (5, 0, 5)
            await a.purchases.order(
                [NewPurchase("p1", job.scene.ref, 0, Mode.SYNC) for job in mine.plan.jobs]
            )
        after = await plan_project(b.db, b.ledger, None, "p1", ask, shape=shape)
        assert after.plan.requested == 0 and len(after.plan.pending_scenes) == 5


@pytest.mark.many_connections
def test_a_sigkilled_run_is_finished_by_a_rerun_and_only_its_in_flight_images_are_lost(
    db_url, tmp_path, cli
):
    put_projects(db_url, 20, 5)
    (tmp_path / "imgsave.toml").write_text(CONFIG)
    with (
        LoopbackProvider(latency=0.1, image_base=f"{IMAGES}a/") as a,
        LoopbackProvider(latency=0.1, image_base=f"{IMAGES}b/") as b,
        LoopbackProvider(latency=0.01, image_base=f"{IMAGES}again/") as again,
    ):
        killed = spawn(
            ["generate", "--all", "-c", "4", "--json"],
            process_env(db_url, a, tmp_path / "a"),
            tmp_path,
        )
        # The second host starts once the first is working: on a loaded machine, a second
        # that started first could take every scene before the first claimed any.
        wait_for(lambda: a.requests >= 1, timeout=60)
        other = spawn(
            ["generate", "--all", "-c", "4", "--json"],
            process_env(db_url, b, tmp_path / "b"),
            tmp_path,
        )
        wait_for(lambda: a.requests >= 10, timeout=60)
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err
        assert b.requests == json.loads(out)["requested"]
        # The dead process's claims are taken over at once on this host (it can spend no
        # more); on another host they would wait out their expiry (next test).
        rerun = cli("generate", "--all", "-c", "8", "--json", env=provider_env(again))
        assert rerun.code == 0, rerun.stderr
        assert rerun.json()["held_scenes"] == 0
        paid_by_dead = a.served
    urls = scene_urls(db_url)
    assert len(urls) == 100 and all(len(u) == 1 for u in urls.values()), "all filled, once"
    stored = {u for scene in urls.values() for u in scene}
    saved_by_dead = [u for u in paid_by_dead if u in stored]
    assert b.requests + again.requests + len(saved_by_dead) == 100, "no scene generated twice"
    unsaved = set(paid_by_dead) - stored
    # Those it lived to log are named by audit; the others were in flight when it died.
    logged = {e["url"] for e in events(tmp_path / "a", "image.generated")}
    assert len(unsaved - logged) <= 4, "at most what it had in flight (concurrency 4)"
    audit = cli("audit", "--log", str(tmp_path / "a"), "--json")
    assert {item["url"] for item in audit.json()["lost"]} == unsaved & logged


def claim_rows(db_url: str, rows: list[tuple[str, str, str, str, float]]) -> None:
    """Claims as another run would have made them: (project, scene, host, process, seconds)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for project, scene, host, process, seconds in rows:
            conn.execute(
                "INSERT INTO imgsave_claims (project, scene, run, host, process, expires_at) "
                "VALUES (%s, %s, 'run-elsewhere', %s, %s, now() + make_interval(secs => %s))",
                (project, scene, host, process, seconds),
            )


def test_scenes_another_host_holds_are_skipped_reported_and_taken_once_expired(
    cli, rows, api, db_url, tmp_path
):
    rows.put("p1", incident_document(10))
    # Claims of 3 s are live for runs whose expiry is 4 s (extended every second); against the
    # default 600 s they would be a stopped run's (test_seams).
    with (tmp_path / "imgsave.toml").open("a") as config:
        config.write("[claims]\nexpiry = 4\n")
    assert cli("sql", "--apply").code == 0  # creates the claims table
    claim_rows(
        db_url,
        [("p1", f"id:scene-{n}", "other-host", "other-host|pid:[1]|7|99", 3.0) for n in (1, 2)]
        # A live process on this host (this test) is not taken over, however stale it looks.
        + [("p1", "id:scene-3", "here", this_process(), 3.0)],
    )
    ran = cli("generate", "p1", "--json", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    assert ran.json()["held_scenes"] == [1, 2, 3]
    assert (ran.json()["saved"], api.requests) == (7, 7)
    lines = [line for line in ran.stderr.splitlines() if "claimed by" in line]
    assert len(lines) == 2, "one line per run holding scenes, not one per scene"
    assert "p1: 2 scenes (1, 2) claimed by run run-elsewhere on other-host (for " in lines[0]
    assert lines[0].endswith("s more unless extended); skipped")
    assert "p1: scene 3 claimed by run run-elsewhere on here" in lines[1]
    wait_for(lambda: time.sleep(0.2) or _expired(db_url), timeout=10)
    again = cli("generate", "p1", "--json", env=provider_env(api))
    assert again.code == 0, again.stderr
    assert (again.json()["saved"], again.json()["held_scenes"]) == (3, [])
    assert all(len(u) == 1 for u in rows.urls("p1").values())


def _expired(db_url: str) -> bool:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT bool_and(expires_at < now()) FROM imgsave_claims").fetchone()
    return bool(row and row[0])


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(cli, rows, api, db_url):
    rows.put("p1", incident_document(3))
    assert cli("sql", "--apply").code == 0
    host, namespace, _, _ = this_process().split("|")
    dead = f"{host}|{namespace}|{2**22 + 17}|12345"  # no such PID
    assert process_is_gone(dead) and not process_is_gone(this_process())
    claim_rows(db_url, [("p1", "id:scene-1", host, dead, 600.0)])
    ran = cli("generate", "p1", "--json", env=provider_env(api))
    assert (ran.code, ran.json()["saved"], ran.json()["held_scenes"]) == (0, 3, [])


def test_a_long_run_extends_its_claims_and_releases_them_at_the_end(cli, rows, db_url, tmp_path):
    rows.put("p1", incident_document(30))
    config = tmp_path / "imgsave.toml"
    config.write_text(config.read_text() + "[claims]\nexpiry = 2\n")
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            while not done.is_set():
                try:
                    row = conn.execute(
                        "SELECT extract(epoch FROM max(expires_at)) FROM imgsave_claims"
                    ).fetchone()
                except psycopg.errors.UndefinedTable:
                    row = None
                if row and row[0]:
                    seen.append(float(row[0]))
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with LoopbackProvider(latency=0.15) as api:
            ran = cli("generate", "p1", "-c", "2", "--json", env=provider_env(api))
    finally:
        done.set()
        watcher.join()
    assert ran.code == 0, ran.stderr
    assert ran.json()["saved"] == 30, "2.3 s of work on claims that expire after 2 s"
    assert max(seen) - min(seen) > 0.5, "the expiry was pushed back while the run worked"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM imgsave_claims").fetchone() == (0,)


def test_claims_that_cannot_be_extended_stop_new_requests_in_time(cli, rows, db_url, tmp_path):
    rows.put("p1", incident_document(40))
    config = tmp_path / "imgsave.toml"
    config.write_text(config.read_text() + "[claims]\nexpiry = 1.2\n")
    with LoopbackProvider(latency=0.25) as api:

        def break_claims() -> None:
            wait_for(lambda: api.requests >= 2, timeout=30)
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE imgsave_claims RENAME TO imgsave_claims_gone")

        breaker = threading.Thread(target=break_claims)
        breaker.start()
        ran = cli("generate", "p1", "-c", "2", "--json", env=provider_env(api))
        breaker.join()
    assert ran.code == 1, ran.stderr
    out = ran.json()
    assert out["not_requested"] > 20 and api.requests == 40 - out["not_requested"]
    assert "claim could not be extended in time" in ran.stderr
    # Requests stop before the claims could have expired: within 3/4 of the expiry of the
    # last extension, at two requests per 0.25 s.
    assert api.requests <= 2 + 2 * 4 * 2


def test_a_role_that_cannot_create_imgsaves_tables_is_told_how_before_anything_is_spent(
    cli, rows, api, db_url
):
    rows.put("p1", incident_document(2))
    role = f"app_{os.getpid()}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT, UPDATE ON projects TO {role}")
        conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    try:
        url = psycopg.conninfo.make_conninfo(db_url, user=role)
        ran = cli("generate", "p1", env=provider_env(api, IMGSAVE_DATABASE_URL=url))
        assert ran.code == 3
        assert ran.stderr.count("\n") == 1, ran.stderr
        assert "cannot create" in ran.stderr and "imgsave_" in ran.stderr
        assert "imgsave sql --apply" in ran.stderr
        assert api.requests == 0
        # Once the owner has run the migration, the role needs only rights on the table.
        assert cli("sql", "--apply").code == 0
        with psycopg.connect(db_url, autocommit=True) as conn:
            for table in ("imgsave_claims", "imgsave_ledger", "imgsave_batches", "imgsave_meta"):
                conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")
        ran = cli("generate", "p1", "--json", env=provider_env(api, IMGSAVE_DATABASE_URL=url))
        assert ran.code == 0, ran.stderr
        assert ran.json()["saved"] == 2
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP OWNED BY " + role)
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.usefixtures("rows")
def test_claims_work_through_the_transaction_pooler(cli, pooler_url, db_url, api):
    put_projects(db_url, 6, 4)
    ran = cli(
        "generate",
        "--all",
        "-c",
        "8",
        "--json",
        env=provider_env(api, IMGSAVE_DATABASE_URL=pooler_url),
    )
    assert ran.code == 0, ran.stderr
    assert (ran.json()["saved"], api.requests) == (24, 24)
