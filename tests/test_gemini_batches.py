"""generate --batch with the Gemini API end to end: real PostgreSQL, the loopback provider's
Gemini Batch API emulation (_demo/gemini_batch.py) as a real HTTP server, a store; each run as
cron would start it (a host of its own: its own log folder)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from imgsave._demo.gemini_batch import GeminiBatchEmulation
from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider

from .test_batches import claims, process, scene_of, stored
from .test_many_projects import put_projects, scene_urls

MODEL = "gemini-nano-banana-2.1"


def gemini(**kwargs: object) -> LoopbackProvider:
    return LoopbackProvider(kind="gemini", answer="b64", **kwargs)  # type: ignore[arg-type]


def batches_of(api: LoopbackProvider) -> GeminiBatchEmulation:
    assert api.gemini_batches is not None
    return api.gemini_batches


def host(api: LoopbackProvider, tmp_path: Path, name: str) -> dict[str, str]:
    """The environment of one host: its own log folder; the shared store and provider."""
    return {
        "IMGSAVE_PROVIDER": "gemini",
        "IMGSAVE_BASE_URL": api.base_url,
        "IMGSAVE_API_KEY": "gemini-test-key",
        "IMGSAVE_MODEL": MODEL,
        "IMGSAVE_LOG_DIR": str(tmp_path / name / "logs"),
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
    }


BATCH = ["--batch", "--json", "--allow-http"]


@pytest.mark.many_connections
def test_batches_submitted_by_one_host_are_collected_by_another(cli, db_url, tmp_path: Path):
    put_projects(db_url, 3, 20)
    with gemini(batch_seconds=3600) as api:
        google = batches_of(api)
        out = process(["generate", "--all", "-k", "2", *BATCH, "--batch-size", "60"],
                      host(api, tmp_path, "a"), db_url, tmp_path)  # fmt: skip
        assert (out["in_batches"], len(out["batches"]["submitted"])) == (120, 2), out
        assert all(b.startswith("batches/") for b in out["batches"]["submitted"])
        assert api.requests == 0 and google.created == 2
        google.seconds = 0
        result = process(["generate", "--all", "-k", "2", *BATCH], host(api, tmp_path, "b"),
                         db_url, tmp_path)  # fmt: skip
        sent = list(api.sent)
    assert sorted(result["batches"]["collected"]) == sorted(out["batches"]["submitted"])
    assert (result["saved"], result["batches"]["submitted"]) == (120, []), result
    urls = scene_urls(db_url)
    assert len(urls) == 60 and all(len(u) == 2 for u in urls.values())
    assert stored(tmp_path) == Counter(sent)
    assert claims(db_url) == 0


def run(args: list[str], env: dict[str, str], db_url: str, cwd: Path) -> tuple[int, dict]:
    """`imgsave ARGS` as a process of its own, run to its end: its exit code and JSON."""
    from .conftest import spawn

    ran = spawn(args, env | {"IMGSAVE_DATABASE_URL": db_url}, cwd)
    out, err = ran.communicate(timeout=120)
    assert out, err
    return ran.returncode, json.loads(out)


@pytest.mark.many_connections
@pytest.mark.parametrize("how", ["the create's answer is lost", "the process is killed"])
def test_a_batch_created_and_never_recorded_is_adopted_not_bought_again(
    cli, db_url, tmp_path: Path, how: str
):
    import signal

    from .conftest import spawn, wait_for

    put_projects(db_url, 2, 10)
    with gemini() as api:
        google = batches_of(api)
        args = ["generate", "--all", *BATCH]
        if how == "the process is killed":
            google.create_delay = 30
            ran = spawn(args, host(api, tmp_path, "a") | {"IMGSAVE_DATABASE_URL": db_url},
                        tmp_path)  # fmt: skip
            wait_for(lambda: google.created == 1, timeout=60)
            ran.send_signal(signal.SIGKILL)  # the batch exists; its name never reached the ledger
            ran.communicate(timeout=30)
            google.create_delay = 0
        else:
            google.lose_create_answers = 1
            code, out = run(args, host(api, tmp_path, "a"), db_url, tmp_path)
            assert code == 1, "said: the batch may exist"
            assert out["batches"]["submitted"] == [] and out["in_batches"] == 20, out
            assert any("may have been created" in e for e in out["errors"]), out
        assert google.created == 1
        rerun = cli(*args, env=host(api, tmp_path, "b"))
        out = rerun.json()
        assert rerun.code == 0, rerun.stdout
        assert (out["saved"], out["batches"]["submitted"]) == (20, []), out
        (name,) = google.batches
        assert out["batches"]["collected"] == [name]
        assert google.created == 1, "the batch was adopted, not bought again"
        assert cli(*args, env=host(api, tmp_path, "a")).json()["in_batches"] == 0
    urls = scene_urls(db_url)
    assert len(urls) == 20 and all(len(u) == 1 for u in urls.values()), "each image once"


# How each scene's line ends: a prompt blocked, an image refused, a request that failed, an image.
ENDINGS = {1: "PROHIBITED_CONTENT", 2: "IMAGE_SAFETY", 3: "INVALID_ARGUMENT", 4: None}


def test_blocked_and_failed_lines_are_reported_per_image_and_planned_again(
    cli, rows, db_url, tmp_path: Path
):
    rows.put("p1", incident_document(4))
    with gemini(batch_faults=lambda key: ENDINGS[scene_of(db_url, key) or 4]) as api:
        google = batches_of(api)
        env = host(api, tmp_path, "a")
        assert cli("generate", "p1", *BATCH, env=env).code == 0
        google.faults = lambda _: None  # the batch the next run submits passes
        collected = cli("generate", "p1", *BATCH, env=env)
        out = collected.json()
        assert collected.code == 1, collected.stdout
        assert (out["saved"], out["failed"]) == (1, 3), out
        assert out["refusals"] == {"PROHIBITED_CONTENT": 1, "IMAGE_SAFETY": 1,
                                   "INVALID_ARGUMENT": 1}  # fmt: skip
        for scene in (1, 2, 3):
            (line,) = [e for e in out["errors"] if f"scene {scene}" in e]
            assert str(ENDINGS[scene]) in line, out["errors"]
        assert "refused: INVALID_ARGUMENT" in " ".join(out["errors"]), "the provider's message"
        assert out["per_batch"][0]["failed"] == 3
        # An answer without an image may have been billed: the run that found it reports it,
        # the next one plans its scene again, in a second batch (which passes).
        assert out["in_batches"] == 0, out
        again = cli("generate", "p1", *BATCH, env=env).json()
        assert (again["saved"], again["in_batches"]) == (0, 3), again
        done = cli("generate", "p1", *BATCH, env=env).json()
        assert (done["saved"], done["in_batches"]) == (3, 0), done
        assert google.created == 2
    assert [len(u) for u in rows.urls("p1").values()] == [1, 1, 1, 1]


def test_an_expired_batch_has_no_results_and_every_image_is_planned_again(
    cli, rows, tmp_path: Path
):
    import time

    rows.put("p1", incident_document(4))
    with gemini(batch_seconds=72 * 3600) as api:  # longer than the batches' 48-hour window
        google = batches_of(api)
        env = host(api, tmp_path, "a")
        (first,) = cli("generate", "p1", *BATCH, env=env).json()["batches"]["submitted"]
        google.clock = lambda: time.time() + 49 * 3600  # the window closed: it never ran
        expired = cli("generate", "p1", *BATCH, env=env)
        out = expired.json()
        assert expired.code == 1, expired.stdout
        assert out["batches"]["collected"] == [first], out
        assert out["per_batch"][0]["status"] == "expired"
        assert (out["saved"], out["lost"], out["failed"]) == (0, 0, 4), out
        assert out["errors"] == [
            f"batch {first} expired without an answer for 4 images; their scenes are planned again"
        ]
        assert out["in_batches"] == 4, "every scene is submitted again, in a new batch"
        assert api.sent == [], "nothing was paid for"
        google.seconds = 0
        done = cli("generate", "p1", *BATCH, env=env).json()
        assert (done["saved"], done["errors"]) == (4, []), done
        assert google.created == 2
    assert [len(u) for u in rows.urls("p1").values()] == [1, 1, 1, 1]


def test_max_images_caps_what_a_gemini_batch_run_submits(cli, db_url, tmp_path: Path):
    put_projects(db_url, 2, 10)
    with gemini(batch_seconds=3600) as api:
        google = batches_of(api)
        env = host(api, tmp_path, "a")
        first = cli("generate", "--all", *BATCH, "--max-images", "7", env=env)
        assert first.code == 1, "images were left out: said, as a synchronous run says it"
        assert (first.json()["in_batches"], first.json()["capped"]) == (7, 13), first.stdout
        (name,) = google.batches
        (input_file,) = [f for f in google.contents if google.contents[f]]
        assert google.contents[input_file].count(b"\n") == 7, "seven requests, not twenty"
        assert google.batches[name]["inputConfig"]["fileName"] == input_file
        # The next run's cap counts what it submits, never what is already in a batch.
        second = cli("generate", "--all", *BATCH, "--max-images", "7", env=env).json()
        assert (second["in_batches"], second["pending_scenes"]) == (7, 7), second
        assert google.created == 2
        assert sum(c.count(b"\n") for c in google.contents.values()) == 14
        assert api.sent == []


# What cannot be read, and what each command is asked: Google's 503 (retried, then given up)
# or a proxy's error page in its place, for the list and for a batch.
UNREADABLE = [
    ("audit", "the list answers 503", "the batches could not be listed", "503"),
    ("repair", "the list is a proxy's page", "the batches could not be listed", "not JSON"),
    ("audit", "a batch's read is a proxy's page", "could not be read", "not JSON"),
    ("repair", "a batch's read answers 503", "could not be read", "503"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "fault", "said", "why"), UNREADABLE)
def test_a_batch_api_that_cannot_be_read_is_exit_3_never_nothing_uncollected(
    cli, rows, tmp_path: Path, command: str, fault: str, said: str, why: str
):
    rows.put("p1", incident_document(3))
    with gemini(batch_seconds=3600) as api:
        google = batches_of(api)
        env = host(api, tmp_path, "a")
        for n in range(2):  # a batch for the list to page through, and one to find in it
            google.lose_create_answers = "list" in fault and n == 1
            cli("generate", "p1", *BATCH, "--max-images", "2", env=env)
        assert google.created == 2
        google.seconds = 0  # both finished: what an audit that could read would count
        if "list" in fault:
            google.failing_lists, google.garbled_lists = (100, 0) if "503" in fault else (0, 100)
        else:
            google.failing_reads, google.garbled_reads = (100, 0) if "503" in fault else (0, 100)
        args = [command, "--json", "--allow-http"] + (["--execute"] if command == "repair" else [])
        ran = cli(*args, env=host(api, tmp_path, "b"))
        out = ran.json()
        assert ran.code == 3, ran.stdout
        problems = " ".join(out["errors"] + out.get("unreadable", []))
        assert said in problems and why in problems, problems
        # What could be read is still done: the batch known by its name, when only the list fails.
        readable = 2 if "list" in fault else 0
        first = out["summary"]["uncollected"] if command == "audit" else out["collected"]
        assert first == readable, ran.stdout
        google.failing_lists = google.garbled_lists = 0
        google.failing_reads = google.garbled_reads = 0
        again = cli(*args, env=host(api, tmp_path, "b"))
        out = again.json()
        if command == "audit":
            assert (again.code, out["summary"]["uncollected"]) == (1, 3), again.stdout
        else:
            assert (again.code, out["collected"]) == (0, 3 - readable), again.stdout
    if command == "repair":
        assert [len(u) for u in rows.urls("p1").values()] == [1, 1, 1]


@pytest.mark.many_connections
def test_one_command_from_cron_on_two_hosts_at_once_pays_for_each_image_once(
    db_url, tmp_path: Path
):
    from .conftest import spawn

    put_projects(db_url, 4, 15)
    with gemini(batch_seconds=3600) as api:
        google = batches_of(api)
        args = ["generate", "--all", *BATCH, "--batch-size", "20"]

        def both() -> list[dict]:
            started = [
                spawn(args, host(api, tmp_path, h) | {"IMGSAVE_DATABASE_URL": db_url}, tmp_path)
                for h in ("a", "b")
            ]
            outs = [r.communicate(timeout=120) for r in started]
            assert [r.returncode for r in started] == [0, 0], outs
            return [json.loads(out) for out, _ in outs]

        submitted = both()
        assert sum(o["in_batches"] for o in submitted) == 60, submitted
        names = {b for o in submitted for b in o["batches"]["submitted"]}
        assert len(names) == google.created
        google.seconds = 0
        collected = both()
        assert sum(o["saved"] for o in collected) == 60, collected
        assert sorted(b for o in collected for b in o["batches"]["collected"]) == sorted(names)
        assert all(o["batches"]["submitted"] == [] for o in collected), collected
        again = both()
        assert all(o["in_batches"] == o["saved"] == 0 for o in again), again
        sent = list(api.sent)
    assert len(sent) == 60, "each image paid for once"
    urls = scene_urls(db_url)
    assert len(urls) == 60 and all(len(u) == 1 for u in urls.values())
    assert stored(tmp_path) == Counter(sent)


def test_a_gemini_batch_is_listed_and_cancelled_by_its_name(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(4))
    with gemini(batch_seconds=3600) as api:
        env = host(api, tmp_path, "a")
        (name,) = cli("generate", "p1", *BATCH, env=env).json()["batches"]["submitted"]
        listed = cli("batches", "--json", env=env)
        assert listed.code == 0, listed.stdout
        (row,) = listed.json()["batches"]
        assert (row["id"], row["status"], row["total"], row["collected"]) == (
            name, "validating", 4, False,
        )  # fmt: skip
        assert cli("batches", "cancel", "batches/elsewhere", env=env).code == 2
        cancelled = cli("batches", "cancel", name, "--json", env=env)
        assert cancelled.json() == {"id": name, "status": "cancelled"}, cancelled.stdout
        collected = cli("generate", "p1", *BATCH, env=env).json()
    assert collected["saved"] == 2 and collected["batches"]["collected"] == [name]
    assert collected["in_batches"] == 2, "the cancelled half is submitted again"
