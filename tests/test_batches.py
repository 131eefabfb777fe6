"""generate --batch end to end: real PostgreSQL, the loopback provider's Batch API as a real
HTTP server, a store; each run as cron would start it (a host of its own: its own log folder)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider

from .test_many_projects import put_projects, scene_urls


def host(api: LoopbackProvider, tmp_path: Path, name: str) -> dict[str, str]:
    """The environment of one host: its own log folder; the shared store and provider."""
    return {
        "IMGSAVE_BASE_URL": api.base_url,
        "IMGSAVE_LOG_DIR": str(tmp_path / name / "logs"),
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
    }


def stored(tmp_path: Path) -> Counter[str]:
    """sha256 of every stored object, each checked to be its own key's hash."""
    found: Counter[str] = Counter()
    for path in (tmp_path / "store").rglob("*.png"):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.name == f"{digest}.png"
        found[digest] += 1
    return found


def process(args: list[str], env: dict[str, str], db_url: str, cwd: Path) -> dict[str, object]:
    """`imgsave ARGS` as a process of its own, run to its end; its JSON."""
    from .conftest import spawn

    run = spawn(args, env | {"IMGSAVE_DATABASE_URL": db_url}, cwd)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.many_connections
def test_300_images_in_2_batches_submitted_by_one_host_are_collected_by_another(
    cli, db_url, tmp_path: Path
):
    put_projects(db_url, 3, 50)
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        args = ["generate", "--all", "-k", "2", "--batch", "--json", "--allow-http"]
        out: dict = process([*args, "--batch-size", "150"], host(api, tmp_path, "a"), db_url,
                            tmp_path)  # fmt: skip
        assert (out["in_batches"], len(out["batches"]["submitted"])) == (300, 2)
        assert out["saved"] == 0 and set(out["batches"]["pending"]) == set(
            out["batches"]["submitted"]
        )
        assert api.requests == 0 and api.batches.created == 2
        # The same run again, while the batches run: nothing is submitted twice.
        again = cli("generate", "--all", "-k", "2", "--batch", "--json", "--allow-http",
                    env=host(api, tmp_path, "a"))  # fmt: skip
        assert again.code == 0 and again.json()["batches"]["submitted"] == [], again.stdout
        assert again.json()["pending_scenes"] == 150 and api.batches.created == 2

        api.batches.seconds = 0  # they finish
        result: dict = process(args, host(api, tmp_path, "b"), db_url, tmp_path)
        sent = list(api.sent)
        # A third run, on either host: nothing left to collect, nothing to submit.
        third = cli("generate", "--all", "-k", "2", "--batch", "--json", "--allow-http",
                    env=host(api, tmp_path, "a"))  # fmt: skip
        assert third.json()["batches"] == {"submitted": [], "collected": [], "pending": []}
        assert api.batches.created == 2
    assert sorted(result["batches"]["collected"]) == sorted(out["batches"]["submitted"])
    assert (result["saved"], result["batches"]["submitted"]) == (300, [])
    assert result["usage"]["output_tokens"] == 300 * 1056
    per_batch = sorted((b["total"], b["received"], b["saved"]) for b in result["per_batch"])
    assert sum(b[0] for b in per_batch) == 300 and all(len(set(b)) == 1 for b in per_batch)
    urls = scene_urls(db_url)
    assert len(urls) == 150 and all(len(u) == 2 for u in urls.values()), "each image once"
    assert stored(tmp_path) == Counter(sent), "every image paid for is in the store, once"
    assert claims(db_url) == 0, "every claim released once collected"


def test_a_provider_without_a_batch_api_costs_nothing_and_claims_nothing(
    cli, rows, db_url, tmp_path: Path
):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(batch_api=False) as api:
        ran = cli("generate", "p1", "--batch", "--json", "--allow-http",
                  env=host(api, tmp_path, "a"))  # fmt: skip
        assert api.requests == 0 and api.batches.created == 0
    assert ran.code == 3 and "has no Batch API" in ran.stdout + ran.stderr
    assert claims(db_url) == 0


def scene_of(db_url: str, custom_id: str) -> int | None:
    """The scene a batch line is for: its custom_id names its ledger row."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT scene_index FROM imgsave_ledger WHERE custom_id = %s", (custom_id,)
        ).fetchone()
    return row[0] if row else None


def claims(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        if conn.execute("SELECT to_regclass('imgsave_claims') IS NULL").fetchone() == (True,):
            return 0
        return conn.execute("SELECT count(*) FROM imgsave_claims").fetchone()[0]


@pytest.mark.many_connections
def test_a_run_killed_between_creating_a_batch_and_logging_it_is_adopted_not_paid_again(
    cli, db_url, tmp_path: Path
):
    import signal

    from .conftest import spawn, wait_for

    put_projects(db_url, 2, 10)
    with LoopbackProvider(answer="b64", batch_create_delay=30) as api:
        env = host(api, tmp_path, "a") | {"IMGSAVE_DATABASE_URL": db_url,
                                           "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1"}  # fmt: skip
        run = spawn(["generate", "--all", "--batch", "--allow-http", "--json"], env, tmp_path)
        wait_for(lambda: api.batches.created == 1, timeout=60)
        run.send_signal(signal.SIGKILL)  # the batch exists; its id never reached the log
        run.communicate(timeout=30)
        api.batches.create_delay = 0
        rerun = cli("generate", "--all", "--batch", "--json", "--allow-http",
                    env=host(api, tmp_path, "b"))  # fmt: skip
        out = rerun.json()
        assert rerun.code == 0, rerun.stderr
        assert out["batches"]["submitted"] == [] and out["saved"] == 20, out
        assert api.batches.created == 1, "the dead run's batch was adopted, not bought again"
    urls = scene_urls(db_url)
    assert len(urls) == 20 and all(len(u) == 1 for u in urls.values())


def test_a_synchronous_run_never_pays_for_scenes_waiting_in_a_batch(cli, db_url, tmp_path: Path):
    put_projects(db_url, 2, 10)
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        batch = cli("generate", "--all", "--batch", "--json", "--allow-http",
                    env=host(api, tmp_path, "a"))  # fmt: skip
        assert batch.json()["in_batches"] == 20
        sync = cli("generate", "--all", "--json", "--allow-http", env=host(api, tmp_path, "b"))
        assert sync.code == 0, sync.stderr
        assert (sync.json()["requested"], sync.json()["pending_scenes"]) == (0, 20)
        assert api.requests == 0, "no scene paid for twice"


def test_failed_and_expired_lines_are_reported_released_and_planned_again(
    cli, rows, db_url, tmp_path: Path
):
    rows.put("p1", incident_document(4))

    def refuse_scene_2(custom_id: str) -> str | None:
        return "moderation_blocked" if scene_of(db_url, custom_id) == 2 else None

    with LoopbackProvider(answer="b64", batch_faults=refuse_scene_2) as api:
        env = host(api, tmp_path, "a")
        assert cli("generate", "p1", "--batch", "--allow-http", env=env).code == 0
        collected = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env)
        out = collected.json()
        assert collected.code == 1, collected.stderr
        assert (out["saved"], out["failed"], out["refusals"]) == (3, 1, {"moderation_blocked": 1})
        assert any("scene 2" in e and "moderation_blocked" in e for e in out["errors"])
        # Scene 2 is free again: the next run submits it (and this time it passes).
        api.batches.faults = lambda _: None
        again = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env)
        assert again.json()["in_batches"] == 1, again.stdout
        done = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env)
        assert done.json()["saved"] == 1
    assert [len(u) for u in rows.urls("p1").values()] == [1, 1, 1, 1]

    rows.put("p2", incident_document(4))
    with LoopbackProvider(answer="b64", batch_expire=True) as api:
        env = host(api, tmp_path, "c")
        cli("generate", "p2", "--batch", "--allow-http", env=env)
        expired = cli("generate", "p2", "--batch", "--json", "--allow-http", env=env).json()
        assert expired["saved"] == 2, expired  # what finished before the window closed
        # ... and the rest is free for the next run.
        assert expired["in_batches"] == 2, expired


def test_a_finished_batch_never_collected_is_named_by_audit_and_collected_by_repair(
    cli, rows, db_url, tmp_path: Path
):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64") as api:
        env = host(api, tmp_path, "a")
        submitted = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env).json()
        (batch_id,) = submitted["batches"]["submitted"]
        listed = cli("batches", "--json", env=env)
        assert listed.code == 1, "a finished batch waits to be collected: paid for, not saved"
        (row,) = listed.json()["batches"]
        assert (row["id"], row["status"], row["completed"], row["collected"]) == (
            batch_id, "completed", 3, False,
        )  # fmt: skip
        assert isinstance(row["output_expires_at"], int)
        audit = cli("audit", "--json", "--allow-http", env=host(api, tmp_path, "b"))
        assert audit.code == 1 and audit.json()["summary"]["uncollected"] == 3, audit.stdout
        repaired = cli(
            "repair", "--execute", "--json", "--allow-http", env=host(api, tmp_path, "b")
        )
        assert repaired.code == 0 and repaired.json()["collected"] == 3, repaired.stdout
        after = cli("audit", "--json", "--allow-http", env=env)
        assert after.code == 0 and after.json()["summary"]["uncollected"] == 0
        assert cli("batches", "--json", env=env).json()["batches"][0]["collected"] is True
    assert [len(u) for u in rows.urls("p1").values()] == [1, 1, 1]


def test_a_batch_is_cancelled_by_id_and_what_finished_is_still_collected(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(4))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = host(api, tmp_path, "a")
        (batch_id,) = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env).json()[
            "batches"
        ]["submitted"]
        assert cli("batches", "cancel", "batch_elsewhere", env=env).code == 2
        cancelled = cli("batches", "cancel", batch_id, "--json", env=env)
        assert cancelled.json() == {"id": batch_id, "status": "cancelling"}, cancelled.stdout
        collected = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env).json()
    assert collected["saved"] == 2 and batch_id in collected["batches"]["collected"]
    assert collected["in_batches"] == 2, "the cancelled half is submitted again"


@pytest.mark.many_connections
def test_a_collection_killed_half_way_is_done_again_saving_nothing_twice(
    cli, rows, db_url, tmp_path: Path
):
    import signal

    from .conftest import spawn, wait_for

    rows.put("p1", incident_document(6))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        submitted = cli("generate", "p1", "--batch", "--json", "--allow-http",
                        env=host(api, tmp_path, "a")).json()  # fmt: skip
        api.batches.seconds = 0
        env = host(api, tmp_path, "b") | {"IMGSAVE_DATABASE_URL": db_url,
                                           "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1"}  # fmt: skip
        logs = tmp_path / "b" / "logs"

        def generated() -> int:
            return sum(
                json.loads(line).get("event") == "image.generated"
                for path in logs.glob("*.jsonl")
                for line in path.read_text().splitlines()
            )

        with psycopg.connect(db_url) as blocker:  # no save of the collection can commit
            blocker.execute("SELECT 1 FROM projects WHERE id = 'p1' FOR UPDATE")
            run = spawn(["generate", "p1", "--batch", "--allow-http"], env, tmp_path)
            wait_for(lambda: generated() >= 3, timeout=60)
            run.send_signal(signal.SIGKILL)
            run.communicate(timeout=30)
            blocker.rollback()
        rerun = cli("generate", "p1", "--batch", "--json", "--allow-http",
                    env=host(api, tmp_path, "c"))  # fmt: skip
        out = rerun.json()
        assert rerun.code == 0, rerun.stderr
        assert out["batches"]["collected"] == submitted["batches"]["submitted"]
        assert (out["saved"], out["batches"]["submitted"]) == (6, []), out
        assert api.batches.created == 1
    assert [len(u) for u in rows.urls("p1").values()] == [1] * 6, "each image once"


def test_a_refused_upload_is_exit_3_with_nothing_left_claimed(cli, rows, db_url, tmp_path: Path):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64") as api:
        api.batches.max_file_bytes = 10
        ran = cli("generate", "p1", "--batch", "--json", "--allow-http",
                  env=host(api, tmp_path, "a"))  # fmt: skip
        assert api.batches.created == 0 and api.requests == 0
    assert ran.code == 3 and "File is too large" in ran.stdout + ran.stderr
    assert claims(db_url) == 0, "nothing half-submitted is left claimed"


def test_wait_stays_until_what_it_submitted_is_collected(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(3))
    config = tmp_path / "imgsave.toml"
    config.write_text(config.read_text().replace("[provider]\n", "[provider]\nbatch_poll = 0.2\n"))
    with LoopbackProvider(answer="b64", batch_seconds=0.5) as api:
        ran = cli("generate", "p1", "--batch", "--wait", "--json", "--allow-http",
                  env=host(api, tmp_path, "a"))  # fmt: skip
    out = ran.json()
    assert ran.code == 0, ran.stderr
    assert out["saved"] == 3 and out["batches"]["pending"] == []
    assert out["batches"]["collected"] == out["batches"]["submitted"]
    assert out["per_batch"][0]["saved"] == 3


@pytest.mark.many_connections
def test_a_synchronous_run_and_a_batch_run_at_once_pay_for_each_scene_once(
    db_url, tmp_path: Path, cli
):
    from .conftest import spawn

    put_projects(db_url, 4, 10)
    (tmp_path / "imgsave.toml").write_text(
        "allow_private_network = true\n[provider]\ntimeout = 10\nbackoff_initial = 0.01\n"
    )
    with (
        LoopbackProvider(answer="b64", batch_seconds=3600, latency=0.02) as api,
    ):
        base = {"IMGSAVE_DATABASE_URL": db_url}
        runs = [
            spawn(["generate", "--all", "--batch", "--json", "--allow-http"],
                  base | host(api, tmp_path, "batch"), tmp_path),
            spawn(["generate", "--all", "-c", "4", "--json", "--allow-http"],
                  base | host(api, tmp_path, "sync"), tmp_path),
        ]  # fmt: skip
        outs = [run.communicate(timeout=120) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outs
        batch, sync = (json.loads(out) for out, _ in outs)
        assert batch["in_batches"] + sync["requested"] == 40, (batch, sync)
        api.batches.seconds = 0
        collected = cli("generate", "--all", "--batch", "--json", "--allow-http",
                        env=host(api, tmp_path, "batch"))  # fmt: skip
        assert collected.json()["saved"] == batch["in_batches"]
        assert api.requests == sync["requested"], "every synchronous request was needed"
    urls = scene_urls(db_url)
    assert len(urls) == 40 and all(len(u) == 1 for u in urls.values()), "each scene once"


def test_an_output_gone_before_anyone_collected_it_is_money_lost_said_in_one_line(
    cli, rows, tmp_path: Path
):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64") as api:
        env = host(api, tmp_path, "a")
        (batch_id,) = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env).json()[
            "batches"
        ]["submitted"]
        batch = api.batches.batches[batch_id]
        api.batches.get(f"/v1/batches/{batch_id}")  # it completes, its output is written ...
        del api.batches.contents[batch["output_file_id"]]  # ... and is gone before collection
        ran = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env)
    out = ran.json()
    assert ran.code == 1 and out["lost"] == 3, out
    (line,) = [e for e in out["errors"] if "paid for and are lost" in e]
    assert batch_id in line
    # It is said once: the batch is marked collected, and no later run reports it again.


def test_a_collection_cut_short_is_resumed_on_its_host_where_it_stopped(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(6))
    with LoopbackProvider(answer="b64") as api:
        env = host(api, tmp_path, "a")
        cli("generate", "p1", "--batch", "--allow-http", env=env)  # submits; nothing finished
        api.batches.cut_output_after = 3
        first = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env)
        assert first.code == 1, first.stderr
        assert first.json()["saved"] == 3
        assert "collected on the next run" in first.json()["errors"][0]
        api.batches.cut_output_after = None
        second = cli("generate", "p1", "--batch", "--json", "--allow-http", env=env)
        assert second.code == 0, second.stderr
        out = second.json()
        assert (out["saved"], out["batches"]["submitted"]) == (3, []), out
        assert out["per_batch"][0]["resumed"] == 3
        assert api.batches.created == 1
    events = [
        json.loads(line)["event"]
        for path in (tmp_path / "a" / "logs").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert events.count("image.generated") == 6, "the first three lines were not taken again"
    assert [len(u) for u in rows.urls("p1").values()] == [1] * 6
    assert sum(stored(tmp_path).values()) == 6


@pytest.mark.many_connections
@pytest.mark.parametrize("where", ["same host", "another host with a store"])
def test_a_batch_run_saves_what_a_killed_run_received_instead_of_buying_it_again(
    db_url, rows, tmp_path: Path, log_dir: Path, where: str
):
    from .conftest import process_env
    from .test_seams import _killed_while_the_row_is_held

    rows.put("p1", incident_document(5))
    (tmp_path / "imgsave.toml").write_text(
        "[provider]\ntimeout = 10\nbackoff_initial = 0.01\n"
        "[database]\nlock_timeout = 1\nmax_attempts = 100\n"
    )
    store = {
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
    }
    with LoopbackProvider(answer="b64" if "store" in where else "url") as api:
        env = process_env(db_url, api, log_dir)
        if "store" in where:
            env |= store
        _killed_while_the_row_is_held(
            db_url, tmp_path, env, ["generate", "p1", "-c", "5"], "image.generated", 5
        )
        paid = api.requests
        assert all(not urls for urls in rows.urls("p1").values()), "nothing was saved"
        if "store" in where:
            env |= {"IMGSAVE_LOG_DIR": str(tmp_path / "other-host")}
        out = process(["generate", "p1", "--batch", "--json"], env, db_url, tmp_path)
        assert (out["recovered"], out["in_batches"], out["held_scenes"]) == (5, 0, 0), out
        assert (api.requests, api.batches.created) == (paid, 0), "nothing bought again"
    assert [len(urls) for urls in rows.urls("p1").values()] == [1] * 5


def test_repair_regenerate_never_buys_a_scene_a_batch_is_paying_for(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        submitted = cli("generate", "p1", "--batch", "--json", "--allow-http",
                        env=host(api, tmp_path, "a")).json()  # fmt: skip
        assert submitted["in_batches"] == 3
        # Another host, whose log never saw the batch: to it the scenes are empty, never logged.
        other = host(api, tmp_path, "b")
        repaired = cli("repair", "p1", "--execute", "--regenerate", "--json", "--allow-http",
                   env=other)  # fmt: skip
        out = repaired.json()
        assert (repaired.code, out["regenerated"], out["remaining"]) == (1, 0, 3), repaired.stdout
        assert "3 scenes not regenerated: their images are on their way" in out["errors"][0]
        assert api.requests == 0, "nothing bought beside the batch"
        api.batches.seconds = 0
        collected = cli("generate", "p1", "--batch", "--json", "--allow-http", env=other).json()
        assert collected["saved"] == 3
    assert [len(u) for u in rows.urls("p1").values()] == [1, 1, 1]
