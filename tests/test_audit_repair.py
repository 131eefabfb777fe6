"""`imgsave audit` and `imgsave repair` against a real database and real log files."""

from __future__ import annotations

import asyncio
import gzip
import json
from dataclasses import replace

import psycopg
import pytest

from imgsave._demo.incident import APP_LOG_PATTERN, incident_document, naive_generate, naive_save
from imgsave._demo.loopback import LoopbackProvider
from imgsave._demo.writes import DemoDatabase
from imgsave.adapters.imageapi.client import Provider
from imgsave.commands import generate as gen
from imgsave.commands.generate import Wanted
from imgsave.core.documents import SceneRef, Shape, append_urls, decode, encode
from imgsave.operations.planning import Ask

from .conftest import imgsave_waits_for_a_lock, spawn, wait_for

SHAPE = Shape()


def own_line(run: str, ts: str, project: str, scene: int, url: str, event="image.generated"):
    return json.dumps(
        {
            "v": 1,
            "ts": ts,
            "run": run,
            "event": event,
            "project": project,
            "scene": scene,
            "scene_id": f"scene-{scene}",
            "url": url,
        }
    )


def stored_urls(rows, project: str) -> set[str]:
    return {u for urls in rows.urls(project).values() for u in urls}


def urls_of(findings: list[dict]) -> set[str]:
    return {f["url"] for f in findings}


@pytest.fixture
async def incident(settings, rows, tmp_path):
    """The incident replayed: the route's naive concurrent saves, with its console log."""
    rows.put("p1", incident_document(20))
    app_log = tmp_path / "app-console.log"
    with LoopbackProvider(latency=0.02, jitter=0.05) as api:
        provider = Provider(api.base_url, None, None, settings.provider)
        async with await DemoDatabase.from_settings(settings, max_size=8) as db:
            with app_log.open("w") as log:
                logged = await naive_generate(db, provider, "p1", SHAPE, 2, app_log=log, think=0.01)
        await provider.aclose()
    lost = {url for _, url in logged} - stored_urls(rows, "p1")
    assert len(logged) == 40 and lost, "the replay must lose images"
    return app_log, lost


async def test_incident_audit_finds_exactly_the_lost_and_repair_restores_them(cli, rows, incident):
    app_log, truth = incident
    args = ["--log", str(app_log), "--pattern", APP_LOG_PATTERN]
    before = cli("audit", *args, "--json")
    assert before.code == 1, before.stderr
    report = before.json()
    assert urls_of(report["lost"]) == truth
    assert report["summary"] == {
        "lost": len(truth),
        "stale": 0,
        "orphaned": 0,
        "present": 40 - len(truth),
        "unreferenced": 0,
        "expired": 0,
        "spooled": 0,
        "uncollected": 0,
        "jobs_pending": 0,
        "jobs_lost": 0,
        "in_batches": 0,
        "unanswered": 0,
        "lines_skipped": 0,
    }
    assert all(
        f["project"] == "p1" and f["scene_id"] == f"scene-{f['scene']}" for f in report["lost"]
    )

    plan = cli("repair", *args)
    assert plan.code == 1 and "Run again with --execute" in plan.stdout
    assert stored_urls(rows, "p1").isdisjoint(truth), "a dry run writes nothing"

    fixed = cli("repair", *args, "--execute", "--json")
    assert fixed.code == 0, fixed.stderr
    out = fixed.json()
    assert (out["repaired"], out["regenerated"], out["remaining"], out["lost_before"]) == (
        len(truth),
        0,
        0,
        len(truth),
    )
    assert truth <= stored_urls(rows, "p1")
    assert all(len(u) == 2 for u in rows.urls("p1").values())

    after = cli("audit", *args, "--json")
    assert after.code == 0 and after.json()["summary"]["lost"] == 0
    text_before = rows.text("p1")
    again = cli("repair", *args, "--execute", "--json")
    assert again.code == 0 and again.json()["repaired"] == 0
    assert rows.text("p1") == text_before


def test_an_app_regeneration_makes_older_runs_stale_and_they_are_never_restored(
    cli, rows, log_dir, tmp_path
):
    doc = incident_document(3)
    doc["scenes"][2]["imageUrls"] = ["https://img.test/new-1"]
    rows.put("p1", doc)
    log_dir.mkdir(parents=True)
    (log_dir / "a.jsonl").write_text(
        "\n".join(
            [
                own_line("run-a", "2026-11-20T10:00:00.000Z", "p1", 3, "https://img.test/old-1"),
                own_line("run-a", "2026-11-20T10:00:01.000Z", "p1", 3, "https://img.test/old-2"),
                own_line("run-a", "2026-11-20T10:00:01.000Z", "p1", 2, "https://img.test/two-1"),
            ]
        )
        + "\n"
    )
    # Two hours later the user regenerated scene 3 in the app; its console log says so.
    app_log = tmp_path / "app.log"
    app_log.write_text(
        "2026-11-20T12:00:00Z [p1] [Scene 3] Saved image to database: https://img.test/new-1\n"
        "2026-11-20T12:00:01Z [p1] [Scene 3] Saved image to database: https://img.test/new-2\n"
    )
    both = ["--log", str(log_dir), "--log", str(app_log), "--pattern", APP_LOG_PATTERN]
    # One --pattern applies to every --log; imgsave's own lines are read as its own format.
    audit = cli("audit", *both, "--json")
    assert audit.code == 1, audit.stderr
    report = audit.json()
    assert urls_of(report["lost"]) == {"https://img.test/new-2", "https://img.test/two-1"}
    assert urls_of(report["stale"]) == {"https://img.test/old-1", "https://img.test/old-2"}
    assert report["summary"]["present"] == 1
    repaired = cli("repair", *both, "--execute", "--json")
    assert repaired.json()["repaired"] == 2
    assert rows.urls("p1")[3] == ["https://img.test/new-1", "https://img.test/new-2"]
    assert rows.urls("p1")[2] == ["https://img.test/two-1"]
    audit = cli("audit", *both, "--json")
    assert audit.code == 0
    assert urls_of(audit.json()["stale"]) == {"https://img.test/old-1", "https://img.test/old-2"}


def test_lines_without_run_ids_are_split_into_runs_by_time_gap(cli, rows, tmp_path):
    rows.put("p1", incident_document(2))
    log = tmp_path / "console.log"
    log.write_text(
        "2026-11-20T10:00:00Z [p1] [Scene 1] Saved image to database: https://img.test/a\n"
        "2026-11-20T10:10:00Z [p1] [Scene 1] Saved image to database: https://img.test/b\n"
        "2026-11-20T12:00:00Z [p1] [Scene 1] Saved image to database: https://img.test/c\n"
    )
    args = ["--log", str(log), "--pattern", APP_LOG_PATTERN, "--json"]
    report = cli("audit", *args).json()
    assert urls_of(report["lost"]) == {"https://img.test/c"}
    assert urls_of(report["stale"]) == {"https://img.test/a", "https://img.test/b"}
    report = cli("audit", *args, "--run-gap", "3h").json()
    assert len(report["lost"]) == 3
    report = cli("audit", *args, "--since", "2026-11-20T11:00:00Z").json()
    assert urls_of(report["lost"]) == {"https://img.test/c"} and not report["stale"]


def test_deleted_scenes_and_projects_are_orphaned_and_never_written(cli, rows, log_dir):
    rows.put("p1", incident_document(2))
    before = rows.text("p1")
    log_dir.mkdir(parents=True)
    (log_dir / "r.jsonl").write_text(
        "\n".join(
            [
                own_line(
                    "r", "2026-11-20T10:00:00.000Z", "p1", 5, "https://img.test/deleted-scene"
                ),
                own_line(
                    "r", "2026-11-20T10:00:00.000Z", "gone", 1, "https://img.test/deleted-proj"
                ),
            ]
        )
        + "\n"
    )
    audit = cli("audit", "--log", str(log_dir), "--json")
    assert audit.code == 0
    assert urls_of(audit.json()["orphaned"]) == {
        "https://img.test/deleted-scene",
        "https://img.test/deleted-proj",
    }
    repaired = cli("repair", "--log", str(log_dir), "--execute", "--json")
    assert repaired.code == 0 and repaired.json()["repaired"] == 0
    assert rows.text("p1") == before


def test_refused_garbage_truncated_undecodable_and_gzip_lines_are_counted(cli, rows, tmp_path):
    rows.put("p1", incident_document(2))
    logs = tmp_path / "exports"
    logs.mkdir()
    good = "2026-11-20T10:00:00Z [p1] [Scene 1] Saved image to database: https://img.test/ok"
    lines = [
        good,
        "2026-11-20T10:00:00Z [p1] [Scene 2] Saved image to database: javascript:alert(1)",
        "2026-11-20T10:00:00Z [p1] [Scene 2] Saved image to database: https://x.test/"
        + "a" * 10_000,
        "INFO unrelated line",
    ]
    with gzip.open(logs / "part1.log.gz", "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    (logs / "part2.log").write_bytes(
        b"\xff\xfe not utf-8 [Scene 1]\n"
        + good.replace("/ok", "/ok2").replace("Scene 1", "Scene 2").encode()
        + b"\n"
        + good.replace("/ok", "/cut").encode()[:40]
    )
    ran = cli("audit", "--log", str(logs), "--pattern", APP_LOG_PATTERN, "--json")
    assert ran.code == 1
    report = ran.json()
    assert urls_of(report["lost"]) == {"https://img.test/ok", "https://img.test/ok2"}
    skipped = report["skipped"]
    assert (
        skipped["refused"],
        skipped["unmatched"],
        skipped["undecodable"],
        skipped["garbage"],
    ) == (2, 1, 1, 1)
    assert report["summary"]["lines_skipped"] == 5
    assert len(skipped["truncated_files"]) == 1
    assert "javascript" not in json.dumps(report["lost"])
    human = cli("audit", "--log", str(logs / "*.gz"), "--pattern", APP_LOG_PATTERN)
    assert "4 log lines in 1 file, 3 skipped (1 unmatched, 2 refused URLs)" in human.stdout


def test_check_urls_marks_dead_urls_expired_and_regenerate_replaces_them(cli, rows, log_dir):
    with LoopbackProvider() as host:
        rows.put("p1", incident_document(3))
        alive, gone, forbidden = (f"{host.origin}/img/{n}.png" for n in ("alive", "gone", "sas"))
        host.dead_paths.update({"/img/gone.png"})
        host.forbidden_paths.update({"/img/sas.png"})
        log_dir.mkdir(parents=True)
        (log_dir / "r.jsonl").write_text(
            "\n".join(
                [
                    own_line("r", "2026-11-20T10:00:00.000Z", "p1", 1, alive),
                    own_line("r", "2026-11-20T10:00:00.000Z", "p1", 2, gone),
                    own_line("r", "2026-11-20T10:00:00.000Z", "p1", 3, forbidden),
                ]
            )
            + "\n"
        )
        unchecked = cli("audit", "--log", str(log_dir), "--allow-http", "--json").json()
        assert len(unchecked["lost"]) == 3
        checked = cli("audit", "--log", str(log_dir), "--allow-http", "--check-urls", "--json")
        assert checked.code == 1
        report = checked.json()
        assert urls_of(report["lost"]) == {alive}
        assert urls_of(report["expired"]) == {gone, forbidden}
        assert report["summary"]["expired"] == 2

        env = {"IMGSAVE_BASE_URL": host.base_url}
        plain = cli(
            "repair", "--log", str(log_dir), "--allow-http", "--check-urls", "--execute", "--json",
            env=env,
        )  # fmt: skip
        assert plain.code == 1
        assert (plain.json()["repaired"], plain.json()["remaining"]) == (1, 2)
        assert stored_urls(rows, "p1") == {alive}

        # The first regeneration answer is unreadable: a retry the provider may have billed.
        host.faults = lambda n: "garbage" if n == 1 else "ok"
        redo = cli(
            "repair", "--log", str(log_dir), "--allow-http", "--check-urls", "--execute",
            "--regenerate", "--json", env=env,
        )  # fmt: skip
        assert redo.code == 0, redo.stderr
        out = redo.json()
        assert out["possibly_billed_retries"] == 1 and out["usage"]["total_tokens"] == 2 * 1068
        assert (out["repaired"], out["regenerated"], out["remaining"]) == (0, 2, 0)
        held = rows.urls("p1")
        assert [len(held[i]) for i in (1, 2, 3)] == [1, 1, 1]
        assert gone not in held[2] and forbidden not in held[3]
        # The scenes moved on: their expired URLs are now from an older run.
        final = cli("audit", "--log", str(log_dir), "--allow-http", "--check-urls", "--json")
        assert final.code == 0, final.stdout
        assert urls_of(final.json()["stale"]) == {gone, forbidden}


def test_a_second_repair_exits_4_while_one_is_running(cli, rows, log_dir, db_url, tmp_path):
    rows.put("p1", incident_document(2))
    log_dir.mkdir(parents=True)
    (log_dir / "r.jsonl").write_text(
        own_line("r", "2026-11-20T10:00:00.000Z", "p1", 1, "https://img.test/x") + "\n"
    )
    env = {"IMGSAVE_DATABASE_URL": db_url, "IMGSAVE_LOG_DIR": str(log_dir)}
    (tmp_path / "imgsave.toml").write_text("[database]\nlock_timeout = 30\n")
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url, autocommit=True) as watch:
        holder.execute("SELECT 1 FROM projects WHERE id = 'p1' FOR UPDATE")
        first = spawn(["repair", "--log", str(log_dir), "--execute", "--json"], env, tmp_path)

        wait_for(lambda: imgsave_waits_for_a_lock(watch))
        second = cli("repair", "--log", str(log_dir), "--execute", "--json")
        assert second.code == 4, second.stderr
        assert "another imgsave repair is running" in second.stderr
        assert second.json()["exit_code"] == 4
        dry = cli("repair", "--log", str(log_dir), "--json")
        assert dry.code == 1, "a dry run takes no lock"
        holder.rollback()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert json.loads(out)["repaired"] == 1
    assert rows.urls("p1")[1] == ["https://img.test/x"]


async def test_generate_while_the_naive_writer_clobbers_then_repair_loses_nothing(
    settings, rows, cli, log_dir
):
    rows.put("p1", incident_document(20))
    with LoopbackProvider(latency=0.01, jitter=0.03) as api:
        settings = replace(settings, base_url=api.base_url)
        provider = Provider(api.base_url, None, None, settings.provider)
        async with await DemoDatabase.from_settings(settings, max_size=8) as db:
            # One request of the web route fetched the document before imgsave began...
            stale = await db.read("p1")
            run = asyncio.create_task(gen.run(settings, Wanted("p1", Ask(3)), concurrency=16))
            # (imgsave has planned, its scenes empty, once the provider, a thread, answered)
            while api.requests == 0:  # noqa: ASYNC110 - a counter of another thread
                await asyncio.sleep(0.005)
            n = 0
            while not run.done():  # ...others fetch-modify-write while imgsave saves...
                n += 1
                ref = SceneRef(n % 20 + 1)
                await naive_save(db, "p1", SHAPE, ref, f"https://other.test/{n}", think=0.005)
            result = await run
            # ...and the first one writes its stale copy back after imgsave finished.
            late = append_urls(decode(stale), SHAPE, [(SceneRef(1), "https://other.test/late")])
            await db.overwrite_unlocked("p1", encode(late.document))
        await provider.aclose()
    assert result.saved == result.requested == 60
    before = cli("audit", "--json").json()
    assert before["summary"]["lost"] == 60, "the stale write erased every imgsave URL"
    fixed = cli("repair", "--execute", "--json")
    assert fixed.code == 0 and fixed.json()["remaining"] == 0
    after = cli("audit", "--json")
    assert after.code == 0 and after.json()["summary"]["present"] == 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "--pattern", "(unclosed"], "--pattern is not a valid regular expression"),
        (["audit", "--pattern", r"(?P<url>\S+)"], "needs the named group(s) scene"),
        (["audit", "--pattern", r"(?P<url>\S+) (?P<scene>\d+)"], "say which with --project"),
        (["audit", "--log", "/nonexistent/x.log"], "--log /nonexistent/x.log: no such file"),
        (["audit", "--since", "yesterday"], "--since 'yesterday'"),
        (["audit", "--run-gap", "forever"], "--run-gap 'forever'"),
        (["repair", "--dry-run", "--execute"], "exclude each other"),
    ],
)
def test_audit_and_repair_usage_errors_exit_2(cli, args, message):
    ran = cli(*args)
    assert ran.code == 2
    assert message in ran.stderr
    assert ran.stdout == ""


def test_quiet_repair_prints_nothing_when_all_is_well(cli, rows, log_dir):
    rows.put("p1", incident_document(1))
    ran = cli("repair", "--execute", "-q")
    assert (ran.code, ran.stdout, ran.stderr) == (0, "", "")


async def test_audit_gives_the_same_answer_however_many_partitions(settings, incident, monkeypatch):
    from imgsave.adapters.runlog.reader import LogQuery
    from imgsave.commands.audit import run_audit
    from imgsave.core import log_history as ledger

    app_log, truth = incident
    query = LogQuery(paths=(str(app_log),), pattern=APP_LOG_PATTERN)
    whole = (await run_audit(settings, query, check_urls=False)).report
    monkeypatch.setattr(ledger, "PARTITION_BYTES", 300)
    assert ledger.partition_count([app_log]) > 5
    split = (await run_audit(settings, query, check_urls=False)).report
    assert {f.url for f in split.lost} == {f.url for f in whole.lost} == truth
    assert split.summary() == whole.summary()
