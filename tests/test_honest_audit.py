"""Nothing paid for is lost or misreported: top-ups, rotated logs, a full log disk, key
spellings, duplicate answers, hostile input, answers that say nothing, and exit codes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest

from imgsave._demo.incident import APP_LOG_PATTERN, incident_document
from imgsave._demo.loopback import LoopbackProvider

from .conftest import spawn


def own_line(run: str, ts: str, project: str, scene: int, url: str, **extra) -> str:
    return json.dumps(
        {
            "v": 1,
            "ts": ts,
            "run": run,
            "event": "image.generated",
            "project": project,
            "scene": scene,
            "url": url,
            **extra,
        }
    )


def saved_by_imgsave(log_dir: Path) -> set[str]:
    """Every URL imgsave's logs say it saved."""
    urls = set()
    for path in log_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["event"] == "image.saved":
                urls.add(record["url"])
    return urls


def all_urls(rows, project: str) -> list[str]:
    return [u for urls in rows.urls(project).values() for u in urls]


def test_reruns_top_ups_force_and_concurrent_runs_are_all_restored_after_a_wipe(
    cli, rows, log_dir, db_url, tmp_path
):
    original = incident_document(4)
    rows.put("p1", original)
    with LoopbackProvider(latency=0.01) as api:
        env = {"IMGSAVE_BASE_URL": api.base_url}
        assert cli("generate", "p1", "-k", "1", "--allow-http", env=env).code == 0
        assert cli("generate", "p1", "-k", "2", "--allow-http", env=env).code == 0  # top-up
        assert cli("generate", "p1", "-k", "1", "--force", "--allow-http", env=env).code == 0
        # Two generates at once, each topping every scene up from 3 to 5.
        both = {"IMGSAVE_DATABASE_URL": db_url, "IMGSAVE_LOG_DIR": str(log_dir), **env}
        runs = [
            spawn(["generate", "p1", "-k", "5", "--allow-http", "--json"], both, tmp_path)
            for _ in range(2)
        ]
        for run in runs:
            _, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
    saved = saved_by_imgsave(log_dir)
    assert len(saved) == len(all_urls(rows, "p1")) >= 4 * 5
    # Each run recorded what every scene held when it planned, and what it planned to add.
    plans = sorted(
        (record["ts"], [(p["scene"], p["held"], p["planned"]) for p in record["plan"]])
        for path in log_dir.glob("*.jsonl")
        for record in map(json.loads, path.read_text().splitlines())
        if record["event"] == "run.started"
    )
    assert [p for _, p in plans[:3]] == [
        [(n, 0, 1) for n in range(1, 5)],  # -k 1
        [(n, 1, 1) for n in range(1, 5)],  # the top-up to -k 2
        [(n, 2, 1) for n in range(1, 5)],  # --force -k 1
    ]
    # The app's racing route writes back a copy it read before all of it: every URL is gone.
    rows.put("p1", original)

    audit = cli("audit", "--json")
    assert audit.code == 1
    report = audit.json()
    assert {f["url"] for f in report["lost"]} == saved
    assert report["stale"] == []
    fixed = cli("repair", "--execute", "--json")
    assert fixed.code == 0, fixed.stderr
    assert fixed.json()["remaining"] == 0
    held = all_urls(rows, "p1")
    assert sorted(held) == sorted(saved), "every image back, exactly once"
    assert cli("audit").code == 0


def test_one_run_split_across_a_rotated_plain_and_gz_file_is_one_run(cli, rows, tmp_path):
    rows.put("p1", incident_document(2))
    line = "2026-11-20T10:{m:02d}:00Z [p1] [Scene {s}] Saved image to database: https://i.test/{n}"
    older = [line.format(m=m, s=1 + m % 2, n=f"a{m}") for m in range(0, 20, 2)]
    newer = [line.format(m=m, s=1 + m % 2, n=f"b{m}") for m in range(20, 40, 2)]
    logs = tmp_path / "rotated"
    logs.mkdir()
    (logs / "app.log").write_text("\n".join(newer) + "\n")
    with gzip.open(logs / "app.log.1.gz", "wt") as handle:
        handle.write("\n".join(older) + "\n")
    report = cli("audit", "--log", str(logs), "--pattern", APP_LOG_PATTERN, "--json").json()
    assert report["summary"]["lost"] == 20 and report["summary"]["stale"] == 0
    fixed = cli("repair", "--log", str(logs), "--pattern", APP_LOG_PATTERN, "--execute", "--json")
    assert fixed.json()["repaired"] == 20
    assert len(all_urls(rows, "p1")) == 20


@pytest.fixture
def tiny_log_disk(tmp_path: Path):
    """A 16 KiB tmpfs for the log directory: it fills after some tens of records."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_log_disk_loses_no_image_and_leaves_no_torn_record(cli, rows, tiny_log_disk):
    rows.put("p1", incident_document(40))
    with LoopbackProvider(latency=0.01, jitter=0.01) as api:
        env = {"IMGSAVE_BASE_URL": api.base_url, "IMGSAVE_LOG_DIR": str(tiny_log_disk)}
        ran = cli("generate", "p1", "-k", "3", "-c", "8", "--allow-http", "--json", env=env)
        served = set(api.served)
    assert ran.code == 1, ran.stderr
    out = ran.json()
    assert out["stopped"] and "generation log" in out["stopped"]
    assert 0 < len(served) < 120, "the run stopped requesting once the log failed"
    stored = set(all_urls(rows, "p1"))
    printed = {u["url"] for u in out["unlogged"]}
    assert served <= stored | printed, "every paid image is saved or printed"
    assert all(u["url"] in ran.stderr for u in out["unlogged"])
    assert all(u["saved"] == (u["url"] in stored) for u in out["unlogged"])
    assert out["saved"] == len(stored)
    # Nothing torn: every line on the full disk is a whole record.
    for path in tiny_log_disk.glob("*.jsonl"):
        data = path.read_bytes()
        assert data.endswith(b"\n")
        for line in data.splitlines():
            json.loads(line)
    # What the log did record, and the database lost afterwards, the next audit finds.
    rows.put("p1", incident_document(40))
    audit = cli("audit", "--json", env={"IMGSAVE_LOG_DIR": str(tiny_log_disk)}).json()
    assert audit["summary"]["lines_skipped"] == 0
    found = {f["url"] for f in audit["lost"]}
    # An image whose line reached the file but whose fsync could not be confirmed is both
    # logged and printed: the printout errs on the side of saying too much.
    assert stored - printed <= found <= stored


def test_a_uuid_key_in_two_spellings_is_one_project(cli, rows, db_url, log_dir, tmp_path):
    key = "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE uprojects (id uuid PRIMARY KEY, generated_output jsonb, "
            "updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO uprojects VALUES (%s, %s::jsonb, now())",
            (key, json.dumps(incident_document(2))),
        )
    with (tmp_path / "imgsave.toml").open("a") as handle:
        handle.write('[names]\ntable = "uprojects"\n')
    log_dir.mkdir(parents=True)
    (log_dir / "r.jsonl").write_text(
        own_line("r", "2026-11-20T10:00:00.000Z", key.upper(), 1, "https://i.test/upper")
        + "\n"
        + own_line("r", "2026-11-20T10:00:00.000Z", key, 2, "https://i.test/lower")
        + "\n"
    )
    report = cli("audit", "--log", str(log_dir), "--json").json()
    assert {f["url"] for f in report["lost"]} == {"https://i.test/upper", "https://i.test/lower"}
    assert report["orphaned"] == [] and {f["project"] for f in report["lost"]} == {key}
    assert cli("repair", "--log", str(log_dir), "--execute").code == 0
    with psycopg.connect(db_url) as conn:
        (doc,) = conn.execute("SELECT generated_output FROM uprojects").fetchone()
    assert [s.get("imageUrls") for s in doc["scenes"]] == [
        ["https://i.test/upper"],
        ["https://i.test/lower"],
    ]


def test_a_url_the_scene_already_holds_is_not_a_save(cli, rows):
    rows.put("p1", incident_document(1))
    with LoopbackProvider(faults=lambda n: "repeat") as api:
        env = {"IMGSAVE_BASE_URL": api.base_url}
        ran = cli("generate", "p1", "-k", "3", "-c", "1", "--allow-http", "--json", env=env)
    assert ran.code == 1
    out = ran.json()
    assert (out["requested"], out["saved"], out["duplicates"], out["failed"]) == (3, 1, 2, 0)
    assert len(all_urls(rows, "p1")) == 1


def test_hostile_lines_and_documents_are_counted_and_the_healthy_project_still_repaired(
    cli, rows, log_dir
):
    rows.put("good", incident_document(1))
    deep = '{"scenes":[{"index":1}],"x":' + '{"d":' * 5000 + "{}" + "}" * 5000 + "}"
    rows.put("deep", deep, raw=True)
    log_dir.mkdir(parents=True)
    ts = "2026-11-20T10:00:00.000Z"
    lines = [
        '{"v":1,"event":"image.generated","x":' + "[" * 100_000 + "]" * 100_000 + "}",
        own_line("r", ts, "nul\u0000project", 1, "https://i.test/nul"),
        own_line("r", ts, "sur\ud800rogate", 1, "https://i.test/sur"),
        own_line("r", ts, "good", 1, "https://i.test/bad\udc80url"),
        own_line("r", ts, "deep", 1, "https://i.test/deep"),
        own_line("r", ts, "good", 1, "https://i.test/healthy"),
    ]
    (log_dir / "r.jsonl").write_text("\n".join(lines) + "\n")
    audit = cli("audit", "--log", str(log_dir), "--json")
    assert audit.code == 3, audit.stderr  # one project could not be audited
    report = audit.json()
    assert [f["url"] for f in report["lost"]] == ["https://i.test/healthy"]
    assert report["summary"]["lines_skipped"] == 4
    assert report["skipped"]["invalid"] == 4
    assert any("deep" in e and "nested too deeply" in e for e in report["errors"])
    human = cli("audit", "--log", str(log_dir))
    assert human.code == 3 and "Traceback" not in human.stderr
    fixed = cli("repair", "--log", str(log_dir), "--execute", "--json")
    assert fixed.code == 3
    assert fixed.json()["repaired"] == 1
    assert all_urls(rows, "good") == ["https://i.test/healthy"]


def test_a_surrogate_in_a_document_still_prints_valid_json(cli, rows, db_url, log_dir):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE projects ALTER COLUMN generated_output TYPE json")
        conn.execute(
            "INSERT INTO projects VALUES ('p1', %s::json, now())",
            ('{"scenes":[{"id":"s\\ud800","index":1}]}',),
        )
    log_dir.mkdir(parents=True)
    (log_dir / "r.jsonl").write_text(
        own_line("r", "2026-11-20T10:00:00.000Z", "p1", 1, "https://i.test/a") + "\n"
    )
    ran = cli("audit", "--log", str(log_dir), "--json")
    assert ran.code == 1, ran.stderr
    assert json.loads(ran.stdout)["lost"][0]["scene_id"] == "s\ud800"


@pytest.mark.parametrize(
    "command", [["audit"], ["repair", "--execute", "--json"], ["generate", "p"]]
)
def test_no_database_url_is_a_usage_error_not_an_empty_database(cli, command):
    ran = cli(*command, env={"IMGSAVE_DATABASE_URL": "", "IMGSAVE_BASE_URL": "https://x.test/v1"})
    assert ran.code == 2
    assert "IMGSAVE_DATABASE_URL" in ran.stderr and "embedded" in ran.stderr


def test_sources_that_yield_nothing_are_errors(cli, rows, tmp_path, log_dir):
    rows.put("p1", incident_document(1))
    log = tmp_path / "app.log"
    log.write_text("2026-11-20T10:00:00Z something else entirely\n" * 3)
    nothing = cli("audit", "--log", str(log), "--pattern", APP_LOG_PATTERN, "--json")
    assert nothing.code == 2
    assert "--pattern matched none of the 3 lines" in nothing.stderr
    log.write_text("[p1] [Scene 1] Saved image to database: https://i.test/a\n")
    untimed = cli(
        "audit",
        "--log",
        str(log),
        "--pattern",
        APP_LOG_PATTERN.replace("^(?P<ts>\\S+) ", ""),
        "--since",
        "2h",
    )
    assert untimed.code == 2 and "--since cannot be applied" in untimed.stderr
    log_dir.mkdir(parents=True)
    (log_dir / "r.jsonl").write_text(
        own_line("r", "2026-11-20T10:00:00.000Z", "elsewhere", 1, "https://i.test/x") + "\n"
    )
    wrong_db = cli("audit", "--log", str(log_dir))
    assert wrong_db.code == 3 and "none of the 1 projects the logs name exists" in wrong_db.stderr
    quiet = cli("repair", "--log", str(log_dir), "--execute", "-q")
    assert quiet.code == 3 and quiet.stderr
    glob = cli("audit", "--log", str(tmp_path / "none-*.log"), "--pattern", APP_LOG_PATTERN)
    assert glob.code == 2 and "matches no file" in glob.stderr


def test_exit_codes_agree_with_the_alert_table(cli, rows, log_dir):
    rows.put("p1", incident_document(2))
    missing = cli("audit", "nope", "--json")
    assert missing.code == 3 and "project nope not found" in missing.json()["errors"][0]
    assert cli("repair", "nope", "--execute").code == 3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    down = cli("generate", "p1", "--allow-http", "--json", env={"IMGSAVE_BASE_URL": closed})
    assert down.code == 3
    assert f"cannot reach the image API at {closed}/images/generations" in down.stderr
    assert down.json()["stopped"] and down.json()["errors"]

    with LoopbackProvider(faults=lambda n: "401") as api:
        env = {"IMGSAVE_BASE_URL": api.base_url}
        refused = cli("generate", "p1", "--allow-http", "--json", env=env)
        assert refused.code == 3
        out = refused.json()
        assert "401" in out["stopped"] and any("401" in e for e in out["errors"])
        finished = [
            json.loads(line)
            for line in Path(out["log"]).read_text().splitlines()
            if '"run.finished"' in line
        ]
        assert "401" in finished[0]["stopped"]
        # Two empty scenes, never logged: --regenerate is asked to fill them and cannot.
        regen = cli("repair", "p1", "--execute", "--regenerate", "--allow-http", "--json", env=env)
        assert regen.code == 3
        assert regen.json()["remaining"] == 2 and "401" in regen.json()["stopped"]


def test_a_cron_repair_with_nothing_to_do_writes_no_log_and_prune_keeps_the_window(
    cli, rows, log_dir
):
    rows.put("p1", incident_document(1))
    log_dir.mkdir(parents=True)
    old = log_dir / "20250101T000000Z-aaaaaa.jsonl"
    old.write_text(own_line("r", "2025-01-01T00:00:00.000Z", "p1", 1, "https://i.test/a") + "\n")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    (log_dir / "repair.lock").write_text("1\n")
    assert (
        cli("repair", "--log", str(log_dir), "--execute").code == 0
    )  # restores the one lost image
    files = set(log_dir.iterdir())
    for _ in range(3):
        ran = cli("repair", "--log", str(log_dir), "--execute", "--json")
        assert ran.code == 0 and ran.json()["repaired"] == 0
    assert set(log_dir.iterdir()) == files, "nothing to do, nothing written"
    # The lock file is not a log line.
    report = cli("audit", "--log", str(log_dir), "--json").json()
    assert report["summary"]["lines_skipped"] == 0

    listed = cli("prune", "--older-than", "30d", "--json")
    assert listed.code == 0 and listed.json()["would_remove"] == 1 and old.exists()
    pruned = cli("prune", "--older-than", "30d", "--execute")
    assert pruned.code == 0 and "removed 1 run logs older than 30d" in pruned.stdout
    assert not old.exists() and len(list(log_dir.glob("*.jsonl"))) == 1


def test_pattern_help_and_hints(cli):
    js = cli("audit", "--pattern", r"(?<url>\S+) (?<scene>\d+)", "--project", "p")
    assert js.code == 2 and "(?P<name>...)" in js.stderr
    unknown = cli(
        "audit", "--pattern", r"(?P<url>\S+) (?P<scene>\d+) (?P<id>\w+)", "--project", "p"
    )
    assert unknown.code == 2 and "the groups imgsave reads are url, scene" in unknown.stderr
    helped = cli("audit", "--help")
    assert "(?P<name>...)" in helped.stdout and "epoch" in helped.stdout


def test_the_loopback_provider_starts_from_the_command_line():
    import sys

    import httpx

    with subprocess.Popen(
        [sys.executable, "-m", "imgsave._demo.loopback", "--latency", "0", "--answer", "url"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            first = proc.stdout.readline()
            assert first.startswith("IMGSAVE_BASE_URL=http://127.0.0.1:")
            base = first.strip().split("=", 1)[1]
            answer = httpx.post(f"{base}/images/generations", json={"prompt": "a", "n": 1})
            # Its own URLs: it serves the images it answers with.
            url = answer.json()["data"][0]["url"]
            assert url.startswith(base.removesuffix("/v1") + "/img/")
            assert httpx.get(url).content.startswith(b"\x89PNG")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_regenerating_two_expired_urls_when_one_fails_leaves_the_other_reported(cli, rows, log_dir):
    rows.put("p1", incident_document(1))
    # The first regeneration request is rejected; the second succeeds.
    with LoopbackProvider(faults=lambda n: "400" if n == 1 else "ok") as host:
        dead = [f"{host.origin}/img/dead-{n}.png" for n in (1, 2)]
        host.dead_paths.update({"/img/dead-1.png", "/img/dead-2.png"})
        log_dir.mkdir(parents=True)
        (log_dir / "r.jsonl").write_text(
            "".join(own_line("r", "2026-11-20T10:00:00.000Z", "p1", 1, u) + "\n" for u in dead)
        )
        env = {"IMGSAVE_BASE_URL": host.base_url}
        args = ["--allow-http", "--check-urls", "--json"]
        ran = cli(
            "repair", "--log", str(log_dir), "--execute", "--regenerate", "-c", "1", *args, env=env
        )
        assert ran.code == 1, ran.stderr
        out = ran.json()
        assert (out["regenerated"], out["remaining"]) == (1, 1)
        after = cli("audit", "--log", str(log_dir), *args, env=env).json()
        # One new image stands in for exactly one dead URL; the other is still reported.
        assert len(after["expired"]) == 1 and len(after["stale"]) == 1
        assert {f["url"] for f in after["expired"] + after["stale"]} == set(dead)


def test_a_pattern_beside_imgsave_logs_is_judged_only_on_the_lines_it_was_given(
    cli, rows, log_dir, tmp_path
):
    rows.put("p1", incident_document(1))
    log_dir.mkdir(parents=True)
    (log_dir / "r.jsonl").write_text(
        own_line("r", "2026-11-20T10:00:00.000Z", "p1", 1, "https://i.test/a") + "\n"
    )
    empty_app_log = tmp_path / "app.log"
    empty_app_log.write_text("")
    ran = cli(
        "audit",
        "--log",
        str(log_dir),
        "--log",
        str(empty_app_log),
        "--pattern",
        APP_LOG_PATTERN,
        "--json",
    )
    assert ran.code == 1, ran.stderr
    assert [f["url"] for f in ran.json()["lost"]] == ["https://i.test/a"]


def test_integer_keys_are_normalised_and_out_of_range_ones_name_no_project(
    cli, rows, db_url, log_dir, tmp_path
):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE iprojects (id int4 PRIMARY KEY, generated_output jsonb)")
        conn.execute(
            "INSERT INTO iprojects VALUES (7, %s::jsonb)", (json.dumps(incident_document(1)),)
        )
    with (tmp_path / "imgsave.toml").open("a") as handle:
        handle.write('[names]\ntable = "iprojects"\n')
    log_dir.mkdir(parents=True)
    ts = "2026-11-20T10:00:00.000Z"
    (log_dir / "r.jsonl").write_text(
        own_line("r", ts, "007", 1, "https://i.test/seven")
        + "\n"
        + own_line("r", ts, "99999999999", 1, "https://i.test/too-big")
        + "\n"
    )
    report = cli("audit", "--log", str(log_dir), "--json")
    assert report.code == 1, report.stderr
    out = report.json()
    assert [(f["project"], f["url"]) for f in out["lost"]] == [("7", "https://i.test/seven")]
    assert [f["url"] for f in out["orphaned"]] == ["https://i.test/too-big"]
    assert out["errors"] == []


def test_the_database_url_flag_beats_the_environment_and_help_names_both(cli, rows, db_url):
    rows.put("p1", incident_document(1))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"postgresql://u@127.0.0.1:{sock.getsockname()[1]}/db"
    assert cli("audit", "p1", env={"IMGSAVE_DATABASE_URL": nowhere}).code == 3
    ran = cli("audit", "p1", "--database-url", db_url, env={"IMGSAVE_DATABASE_URL": nowhere})
    assert ran.code == 0, ran.stderr
    for command in ("generate", "audit", "repair", "rehost", "prune", "demo"):
        helped = cli(command, "--help").stdout
        lines = helped.splitlines()
        example = next(i for i, line in enumerate(lines) if line.strip().startswith("Example"))
        assert lines[example + 1].strip().startswith(f"imgsave {command}"), helped
        assert "<bool>" not in helped, "flags show no type placeholder"
        assert "IMGSAVE_DEBUG" in helped and "Exit codes: 0 done" in helped
        if command not in ("prune", "demo"):  # neither touches the database
            assert "[env var: IMGSAVE_DATABASE_URL, DATABASE_URL]" in " ".join(helped.split())
            assert "[env var: IMGSAVE_STORE]" in " ".join(helped.split())
