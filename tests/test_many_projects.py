"""generate over many projects: --all, one concurrency bound shared fairly, --max-images, and
the JSON and text a run over several projects gives. (Pace: test_pace.py; claims and several
hosts: test_claims.py.)"""

from __future__ import annotations

import json
import signal

import psycopg
import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider

from .conftest import process_env, spawn, wait_for
from .test_generate_cli import events, provider_env


def put_projects(db_url: str, count: int, scenes: int, *, prefix: str = "p") -> list[str]:
    """`count` projects of `scenes` empty scenes, in one statement."""
    names = [f"{prefix}{n:05d}" for n in range(count)]
    document = json.dumps(incident_document(scenes))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projects (id, generated_output) "
            "SELECT n, %s::jsonb FROM unnest(%s::text[]) n",
            (document, names),
        )
    return names


def scene_urls(db_url: str) -> dict[tuple[str, int], list[str]]:
    """Every scene of every project: its URLs."""
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT id, (s ->> 'index')::int, coalesce(s -> 'imageUrls', '[]') FROM projects, "
            "jsonb_array_elements(generated_output -> 'scenes') s"
        ).fetchall()
    return {(p, i): urls for p, i, urls in found}


def test_all_fills_every_scene_of_20_projects_exactly_once_and_still_commits_in_batches(
    cli, db_url
):
    names = put_projects(db_url, 20, 20)
    with LoopbackProvider(latency=0.03, jitter=0.03) as api:
        ran = cli("generate", "--all", "-k", "2", "-c", "32", "--json", env=provider_env(api))
        assert ran.code == 0, ran.stderr
        out = ran.json()
        assert (out["requested"], out["saved"], out["failed"]) == (800, 800, 0)
        assert api.requests == 800, "one request per image: none paid twice"
        assert sorted(p["project"] for p in out["projects"]) == names
        assert all(p["saved"] == 40 and p["stopped"] is None for p in out["projects"])
        urls = scene_urls(db_url)
        assert len(urls) == 400 and all(len(u) == 2 for u in urls.values())
        every = [u for scene in urls.values() for u in scene]
        assert len(set(every)) == 800
        # Group commits still batch per project: far fewer transactions than images.
        assert out["transactions"] == sum(p["transactions"] for p in out["projects"])
        assert out["transactions"] < 800 / 3, out["transactions"]

        again = cli("generate", "--all", "-k", "2", "--json", env=provider_env(api))
        assert again.code == 0, again.stderr
        assert (again.json()["projects"], again.json()["requested"]) == ([], 0)
        assert api.requests == 800


def test_all_reads_only_the_projects_with_a_scene_short_of_k(cli, rows, db_url, api):
    full = incident_document(3)
    for scene in full["scenes"]:
        scene["imageUrls"] = ["https://i.test/a.png", "https://i.test/b.png"]
    rows.put("complete", full)
    short = json.loads(json.dumps(full))
    short["scenes"][1]["imageUrls"] = ["https://i.test/only.png"]
    rows.put("short", short)
    # A JSON string inside jsonb: the query cannot judge it, the plan does (and finds it full).
    rows.put("encoded", json.dumps(json.dumps(full)), raw=True)
    rows.put("empty", {"scenes": []})
    ran = cli("generate", "--all", "-k", "2", "--json", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    projects = {p["project"]: p for p in ran.json()["projects"]}
    assert sorted(projects) == ["encoded", "short"]
    assert projects["short"]["saved"] == 1 and projects["encoded"]["requested"] == 0
    assert projects["encoded"]["skipped_scenes"] == [1, 2, 3]
    assert api.requests == 1


def test_a_big_project_does_not_keep_small_ones_waiting(cli, rows, log_dir):
    rows.put("big", incident_document(300))
    small = [f"small{n}" for n in range(8)]
    for name in small:
        rows.put(name, incident_document(5))
    with LoopbackProvider(latency=0.02) as api:
        ran = cli("generate", "big", *small, "-c", "4", "--json", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    order = [e["project"] for e in events(log_dir, "image.saved")]
    assert len(order) == 340
    last_small = max(i for i, p in enumerate(order) if p != "big")
    # First come, first served would save all 300 of big's images first: last_small == 339.
    assert last_small < 120, last_small


def test_several_projects_give_one_json_object_with_each_projects_keys(cli, rows, api):
    rows.put("a", incident_document(2))
    rows.put("b", incident_document(3))
    ran = cli("generate", "a", "b", "nope", "a", "--json", env=provider_env(api))
    assert ran.code == 3, "the worst project decides: nope does not exist"
    out = ran.json()
    single_keys = {"project", "run", "requested", "saved", "failed", "skipped_scenes"}
    assert single_keys | {"usage", "possibly_billed_retries", "projects", "pace"} <= set(out)
    assert (out["project"], out["requested"], out["saved"]) == (None, 5, 5)
    by_name = {p["project"]: p for p in out["projects"]}
    assert sorted(by_name) == ["a", "b", "nope"], "a project named twice is done once"
    assert all(single_keys <= set(p) and p["run"] == out["run"] for p in out["projects"])
    assert by_name["nope"]["stopped"] == "project nope not found"
    assert out["pace"] == {
        "asked_per_minute": None,
        "achieved_per_minute": out["pace"]["achieved_per_minute"],
        "requests": 5,
        "throttled": 0,
    }


def test_several_projects_print_the_troubled_ones_and_one_summary(cli, rows, api):
    rows.put("a", incident_document(1))
    rows.put("b", {"scenes": [{"id": "x"}]})  # no prompt
    ran = cli("generate", "a", "b", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    lines = [line.rsplit(" (run ", 1)[0] for line in ran.stdout.splitlines()]
    assert lines == [
        "generate: 2 projects, 1 of 1 images saved in 1 transaction, "
        "1 scenes without a prompt, 1,068 tokens",
    ]
    strict = cli("generate", "--all", "--force", "--strict", "--json", env=provider_env(api))
    assert strict.code == 1 and strict.json()["unprompted_scenes"] == 1
    assert all(line.endswith(")") and " (run " in line for line in ran.stdout.splitlines())
    assert cli("generate", "a", "--json", env=provider_env(api)).json()["requested"] == 0
    assert "project b: scene 1 has no prompt; skipped" in ran.stderr


def test_max_images_stops_at_n_requests_and_reports_the_rest(cli, db_url):
    put_projects(db_url, 10, 20)
    with LoopbackProvider(latency=0.01) as api:
        ran = cli(
            "generate", "--all", "--max-images", "50", "-c", "8", "--json", env=provider_env(api)
        )
        assert ran.code == 1, ran.stderr
        assert api.requests == 50
    out = ran.json()
    assert out["saved"] == 50
    left = out["not_requested"] + 20 * out["projects_not_started"]
    assert out["requested"] - out["saved"] == out["not_requested"]
    assert 50 + left == 200, "every image not paid for is accounted for"
    assert "--max-images 50 reached; not requested" in ran.stderr
    urls = scene_urls(db_url)
    assert sum(len(u) for u in urls.values()) == 50


@pytest.mark.parametrize("force", [False, True])
def test_force_with_all_asks_k_more_of_every_scene(cli, rows, api, force):
    rows.put("a", incident_document(2))
    args = ["generate", "--all", "--json", *(["--force"] if force else [])]
    assert cli(*args, env=provider_env(api)).code == 0
    second = cli(*args, env=provider_env(api))
    assert second.json()["saved"] == (2 if force else 0)


def test_a_refusing_provider_stops_the_whole_run_with_exit_3(cli, db_url):
    put_projects(db_url, 12, 5)
    with LoopbackProvider(faults=lambda n: "401" if n > 3 else "ok") as api:
        ran = cli("generate", "--all", "-c", "2", "--json", env=provider_env(api))
        requests = api.requests
    assert ran.code == 3, ran.stderr
    out = ran.json()
    assert "401" in out["stopped"] and "sk-test-SECRET-123" not in ran.stdout + ran.stderr
    assert requests <= 3 + 2, "no new request after the refusal"
    assert out["saved"] == 3
    assert out["projects_not_started"] > 0


def test_ctrl_c_over_many_projects_finishes_what_is_in_flight_and_exits_130(
    db_url, log_dir, tmp_path
):
    put_projects(db_url, 30, 5)
    with LoopbackProvider(latency=0.3) as api:
        env = process_env(db_url, api, log_dir)
        proc = spawn(["generate", "--all", "-c", "8", "--json"], env, tmp_path)
        wait_for(lambda: api.requests >= 16, timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        requests = api.requests
    assert proc.returncode == 130, err
    result = json.loads(out)
    assert result["interrupted"] is True and result["saved"] == requests < 150
    stored = {u for urls in scene_urls(db_url).values() for u in urls}
    assert {e["url"] for e in events(log_dir, "image.generated")} == stored
    assert len(stored) == requests, "every answer that came back was saved"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM imgsave_claims").fetchone() == (0,)


def test_one_progress_bar_for_the_run_names_the_projects_in_flight(monkeypatch):
    import io

    from rich.console import Console

    from imgsave.terminal import progress

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100, highlight=False)
    monkeypatch.setattr(progress, "stderr_console", lambda: terminal)
    display = progress.ProgressReporter()
    views = [display.project(name) for name in ("alpha", "beta", "gamma", "delta", "omega")]
    for view in views:
        view.start(10, "ignored")
    assert display._total == 50
    assert display._flight() == "projects in flight: alpha, beta, gamma +2"
    for view in views[:4]:
        for _ in range(10):
            view.advance(ok=True)
        view.finish()
    assert display._flight() == "projects in flight: omega"
    views[4].advance(ok=False)
    views[4].finish()
    display.finish()
    shown = screen.getvalue()
    assert "41/50" in shown and "1 failed" in shown


def test_scenes_over_many_projects_takes_the_selected_scenes_each_project_has(cli, rows, api):
    rows.put("short", incident_document(2))
    rows.put("long", incident_document(5))
    ran = cli("generate", "--all", "--scenes", "2-4", "--json", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    assert {p["project"]: p["saved"] for p in ran.json()["projects"]} == {"short": 1, "long": 3}
    assert [len(u) for u in rows.urls("long").values()] == [0, 1, 1, 1, 0]
