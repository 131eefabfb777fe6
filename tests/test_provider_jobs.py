"""The image APIs that answer with a job to poll (Replicate, fal, BFL), through the CLI against
the loopback provider serving each one's documented shapes (_demo/job_api.py). A job paid for
is logged before it is first polled, and is never paid for again: a run that dies with jobs
pending leaves them to the next run, which polls them instead of submitting new ones."""

from __future__ import annotations

import hashlib
import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.adapters.imageapi.kinds import KINDS as REGISTRY

from .conftest import spawn, wait_for
from .gateway import VIA, Gateway
from .test_seams import log_records as records

# Every kind that answers with a job, as the registry says.
KINDS = sorted(name for name, kind in REGISTRY.items() if kind.facts.has_jobs)
KEY_VARIABLE = {name: REGISTRY[name].facts.key_variable for name in KINDS}
MODEL = {name: REGISTRY[name].example_model for name in KINDS}
# What each API calls the refusal the loopback provider answers with ("refuse").
REFUSAL = {"replicate": "nsfw", "fal": "content_policy_violation", "bfl": "Content Moderated"}


@pytest.fixture(autouse=True)
def quick_polls(cli, tmp_path: Path):
    """Polls every 20 ms, so a job of several polls takes a test no time (after `cli` wrote
    the test's imgsave.toml)."""
    config = tmp_path / "imgsave.toml"
    config.write_text(
        config.read_text().replace("[provider]\n", "[provider]\npoll_interval = 0.02\n")
    )


def env_for(api: LoopbackProvider, tmp_path: Path) -> dict[str, str]:
    return {
        "IMGSAVE_PROVIDER": api.kind,
        "IMGSAVE_BASE_URL": api.base_url,
        KEY_VARIABLE[api.kind]: f"{api.kind}-key-SECRET-7",
        "IMGSAVE_MODEL": MODEL[api.kind],
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
        "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1",  # the jobs' images are served on 127.0.0.1
    }


def stored(tmp_path: Path) -> Counter[str]:
    return Counter(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "store").rglob("*.png")
    )


@pytest.mark.parametrize("kind", KINDS)
def test_each_job_is_logged_before_it_is_polled_and_its_images_saved(
    cli, rows, tmp_path: Path, log_dir: Path, kind: str
):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(kind=kind, job_polls=2) as api:
        assert api.jobs is not None
        ran = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path))
        out = ran.json()
        assert ran.code == 0, ran.stdout + ran.stderr
        assert (out["requested"], out["saved"], out["refusals"]) == (3, 3, {})
        assert api.jobs.submitted == 3
        assert all(job["polls"] >= 3 for job in api.jobs.jobs.values()), "several polls each"
        assert stored(tmp_path) == Counter(api.sent), "every image the jobs made, in the store"
        keys = {key for _, key in api.calls}
    expected_key = {"replicate": "Bearer", "fal": "Key"}.get(kind)
    assert keys == {
        f"{expected_key} {kind}-key-SECRET-7" if expected_key else f"{kind}-key-SECRET-7"
    }
    log = records(log_dir)
    for job in api.jobs.jobs:
        events = [r["event"] for r in log if r.get("job") == job]
        assert events[:2] == ["image.requested", "image.generated"], events
    assert "SECRET" not in ran.stdout + ran.stderr


@pytest.mark.parametrize("kind", ["replicate", "fal"])
def test_a_job_with_several_images_keeps_them_all(cli, rows, tmp_path: Path, kind: str):
    rows.put("p1", incident_document(2))
    with LoopbackProvider(kind=kind, faults=lambda _: "two") as api:
        out = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path)).json()
        assert (out["requested"], out["received"], out["saved"]) == (2, 4, 4), out
        assert stored(tmp_path) == Counter(api.sent)


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_or_failed_job_fails_its_image_with_the_reason_and_is_not_paid_again(
    cli, rows, tmp_path: Path, log_dir: Path, kind: str
):
    rows.put("p1", incident_document(3))
    faults = {1: "refuse", 2: "fail"}
    with LoopbackProvider(kind=kind, faults=lambda n: faults.get(n, "ok")) as api:
        assert api.jobs is not None
        ran = cli("generate", "p1", "--json", "-c", "1", "--allow-http",
                  env=env_for(api, tmp_path))  # fmt: skip
        out = ran.json()
        assert ran.code == 1
        assert (out["saved"], out["failed"], out["refusals"]) == (1, 2, {REFUSAL[kind]: 1})
        assert api.requests == 3, "neither is asked again"
        # The next run does not poll them again: their ends are in the log.
        again = cli("generate", "p1", "--json", "-c", "1", "--allow-http",
                    env=env_for(api, tmp_path)).json()  # fmt: skip
        assert again["jobs_resumed"] == 0
    assert sum(r["event"] == "image.failed" and "job" in r for r in records(log_dir)) == (
        1 if kind == "fal" else 2  # fal refuses at submission: no job was made
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["429:0", "500"])
def test_a_429_or_a_5xx_at_submission_is_retried(cli, rows, tmp_path: Path, kind: str, fault: str):
    rows.put("p1", incident_document(2))
    with LoopbackProvider(kind=kind, faults=lambda n: fault if n == 1 else "ok") as api:
        assert api.jobs is not None
        ran = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path))
        assert ran.code == 0, ran.stdout
        assert (ran.json()["saved"], api.requests, api.jobs.submitted) == (2, 3, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_killed_with_20_jobs_pending_is_finished_by_the_next_without_paying_again(
    cli, db_url, rows, tmp_path: Path, log_dir: Path, kind: str
):
    rows.put("p1", incident_document(21))
    with LoopbackProvider(kind=kind, job_polls=10**6) as api:  # they run until told
        assert api.jobs is not None
        env = env_for(api, tmp_path) | {"IMGSAVE_DATABASE_URL": db_url,
                                          "IMGSAVE_LOG_DIR": str(log_dir)}  # fmt: skip
        run = spawn(["generate", "p1", "-c", "21", "--allow-http"], env, tmp_path)
        wait_for(
            lambda: sum(r["event"] == "image.requested" for r in records(log_dir)) == 21,
            timeout=60,
        )
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        assert api.jobs.submitted == 21
        # Paid for, not yet in their scenes: audit names every one.
        audit = cli("audit", "p1", "--json", env=env_for(api, tmp_path)).json()
        assert (audit["summary"]["jobs_pending"], audit["summary"]["jobs_lost"]) == (21, 0)
        # One job's result is gone before the rerun (BFL keeps them ten minutes).
        lost = next(iter(api.jobs.jobs))
        api.jobs.gone.add(lost)
        api.jobs.polls = 0  # the others are done now
        rerun = spawn(["generate", "p1", "--json", "--allow-http"], env, tmp_path)
        out, err = rerun.communicate(timeout=120)
        result = json.loads(out)
        assert rerun.returncode == 1, err
        assert (result["jobs_resumed"], result["recovered"], result["jobs_lost"]) == (21, 20, 1)
        assert result["requested"] == 0, "the lost job's scene is reported, not re-bought"
        assert any(f"job {lost}" in e and "lost" in e for e in result["errors"]), result
        assert api.jobs.submitted == 21, "zero jobs submitted twice"
    urls = rows.urls("p1")
    assert sorted(len(u) for u in urls.values()) == [0] + [1] * 20, "each image once"
    third = records(log_dir)
    assert sum(r["event"] == "image.failed" and r.get("lost") for r in third) == 1
    after = cli("audit", "p1", "--json")
    assert after.code == 1, "a job paid for and lost is a finding"
    assert (after.json()["summary"]["jobs_pending"], after.json()["summary"]["jobs_lost"]) == (0, 1)
    assert [j["job"] for j in after.json()["jobs"]] == [lost]


def test_the_registry_names_an_emulation_and_a_refusal_for_every_job_kind():
    assert KINDS and set(KINDS) == set(REFUSAL)


@pytest.mark.parametrize("kind", KINDS)
def test_jobs_behind_a_gateway_are_polled_through_it_and_the_key_goes_nowhere_else(
    cli, rows, tmp_path: Path, log_dir: Path, kind: str
):
    """The API answers with poll and result URLs on its own origin (here: another port of the
    same host as the gateway); the key follows none of them: each job is polled at the path
    its API documents under the gateway's base URL, and every image is saved."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(kind=kind, job_polls=2) as api, Gateway(api.origin) as gateway:
        assert api.jobs is not None
        env = env_for(api, tmp_path) | {"IMGSAVE_BASE_URL": gateway.base + REGISTRY[kind].base_path}
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        out = ran.json()
        assert ran.code == 0, ran.stdout + ran.stderr
        assert (out["saved"], api.jobs.submitted) == (3, 3)
        assert all(job["polls"] >= 3 for job in api.jobs.jobs.values())
        keyed = list(api.keyed)
    assert keyed and all(via == VIA for *_, via in keyed), "every keyed request via the gateway"
    assert stored(tmp_path) == Counter(api.sent)
    logged = [r for r in records(log_dir) if r["event"] == "image.requested"]
    assert len(logged) == 3 and all(r["poll"].startswith(gateway.base) for r in logged), logged


def test_a_job_url_on_another_host_name_is_polled_under_the_base_url_instead(
    cli, rows, tmp_path: Path
):
    """`localhost` and `127.0.0.1` are two origins, whatever they resolve to: the key goes to
    the base URL's own, and the job is still had."""
    rows.put("p1", incident_document(2))
    with LoopbackProvider(kind="bfl", job_polls=1) as api:
        base = api.base_url.replace("127.0.0.1", "localhost")
        ran = cli("generate", "p1", "--json", "--allow-http",
                  env=env_for(api, tmp_path) | {"IMGSAVE_BASE_URL": base})  # fmt: skip
        assert ran.json()["saved"] == 2, ran.stdout
        hosts = {host.split(":")[0] for _, host, *_ in api.keyed}
    assert hosts == {"localhost"}, "the polling_url's 127.0.0.1 never got the key"


def test_a_replicate_prediction_is_asked_for_without_waiting_and_logged_before_it_is_polled(
    cli, rows, tmp_path: Path, log_dir: Path
):
    """Prefer: wait would hold the request up to 60 s before the prediction's id came back: a
    run killed meanwhile would never learn it, and the rerun would pay again."""
    rows.put("p1", incident_document(1))
    with LoopbackProvider(kind="replicate", job_polls=2) as api, Gateway(api.origin) as gateway:
        env = env_for(api, tmp_path) | {"IMGSAVE_BASE_URL": gateway.base + "/v1"}
        assert cli("generate", "p1", "--json", "--allow-http", env=env).json()["saved"] == 1
    submissions = [headers for method, _, headers in gateway.forwarded if method == "POST"]
    assert len(submissions) == 1 and "prefer" not in submissions[0]
    (job,) = api.jobs.jobs if api.jobs else []
    events = [r["event"] for r in records(log_dir) if r.get("job") == job]
    assert events[:2] == ["image.requested", "image.generated"]


def test_a_prediction_answered_done_at_once_is_taken_without_a_poll(cli, rows, tmp_path: Path):
    """A gateway that opts its clients into Replicate's sync mode: the creation answer already
    holds the output, and it is taken as it is."""
    rows.put("p1", incident_document(2))
    with (
        LoopbackProvider(kind="replicate") as api,
        Gateway(api.origin, add_headers={"Prefer": "wait"}) as gateway,
    ):
        assert api.jobs is not None
        env = env_for(api, tmp_path) | {"IMGSAVE_BASE_URL": gateway.base + "/v1"}
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert ran.json()["saved"] == 2, ran.stdout
        assert [m for m, *_ in api.keyed] == ["POST", "POST"], "no poll"
        assert stored(tmp_path) == Counter(api.sent)


async def test_a_job_abandoned_at_a_second_ctrl_c_is_cancelled_at_the_provider():
    import asyncio

    from imgsave.adapters.imageapi.client import Provider
    from imgsave.core.settings import ProviderSettings

    with LoopbackProvider(kind="replicate", job_polls=10**6) as api:
        assert api.jobs is not None
        settings = ProviderSettings(kind="replicate", poll_interval=0.01)
        provider = Provider(api.base_url, "r8-key", MODEL["replicate"], settings, allow_http=True)
        started: list[str] = []
        logged_once = asyncio.Event()

        async def logged(job) -> None:
            started.append(job.id)
            logged_once.set()

        task = asyncio.ensure_future(provider.generate("a lighthouse", on_job=logged))
        await logged_once.wait()
        await asyncio.sleep(0.05)  # polling now
        task.cancel()  # what the second Ctrl-C does to a request still waiting
        with pytest.raises(asyncio.CancelledError):
            await task
        await provider.aclose()
        assert api.jobs.cancelled == started, "no one waits for it: the provider stops it"


async def test_a_job_still_running_at_poll_timeout_is_left_for_the_next_run():
    from imgsave.adapters.imageapi.client import ImageFailed, Provider, Seams
    from imgsave.adapters.imageapi.jobs import RemoteJob
    from imgsave.core.settings import ProviderSettings

    with LoopbackProvider(kind="bfl", job_polls=10**6) as api:
        assert api.jobs is not None
        now = [0.0]

        async def sleep(seconds: float) -> None:
            now[0] += seconds  # the clock moves by the polls' pauses alone

        settings = ProviderSettings(kind="bfl", poll_interval=60, poll_timeout=600)
        jobs: list[RemoteJob] = []

        async def logged(job: RemoteJob) -> None:
            jobs.append(job)

        async with Provider(
            api.base_url, "bfl-key", "flux-pro-1.1", settings, allow_http=True,
            seams=Seams(sleep=sleep, clock=lambda: now[0]),
        ) as provider:  # fmt: skip
            with pytest.raises(ImageFailed, match="still running after 600s") as failed:
                await provider.generate("a harbour", on_job=logged)
            assert failed.value.job is None, "not ended: the next run polls it"
            (job,) = jobs
            assert api.jobs.jobs[job.id]["polls"] == 11, "one poll a minute for ten minutes"
            api.jobs.polls = 0
            answer = await provider.resume(job)
        assert answer.job == job.id and len(answer.images) == 1
        assert api.jobs.submitted == 1


def test_rehost_regenerate_through_a_job_api_logs_each_job_and_ends_it(
    cli, rows, tmp_path: Path, log_dir: Path
):
    with LoopbackProvider(kind="replicate", job_polls=1) as api:
        assert api.jobs is not None
        dead = f"{api.origin}/img/000091.png"
        api.dead_paths.add("/img/000091.png")
        document = incident_document(1)
        document["scenes"][0]["imageUrls"] = [dead]
        rows.put("p1", document)
        env = env_for(api, tmp_path)
        ran = cli("rehost", "p1", "--execute", "--regenerate", "--json", "--allow-http", env=env)
        out = ran.json()
        assert out["regenerated"] == 1, ran.stdout + ran.stderr
        assert api.jobs.submitted == 1
        (job,) = api.jobs.jobs
        events = [r["event"] for r in records(log_dir) if r.get("job") == job]
        assert events == ["image.requested", "image.rehosted"], events
        audit = cli("audit", "p1", "--json", env=env).json()
        assert audit["jobs"] == [], "the job ended in its scene: nothing pending"
        again = cli("generate", "p1", "--json", "--allow-http", env=env).json()
        assert (again["jobs_resumed"], api.jobs.submitted) == (0, 1)


def test_repair_execute_polls_the_jobs_a_dead_run_left_and_saves_them(
    cli, db_url, rows, tmp_path: Path, log_dir: Path
):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(kind="fal", job_polls=10**6) as api:
        assert api.jobs is not None
        env = env_for(api, tmp_path) | {"IMGSAVE_DATABASE_URL": db_url,
                                          "IMGSAVE_LOG_DIR": str(log_dir)}  # fmt: skip
        run = spawn(["generate", "p1", "-c", "3", "--allow-http"], env, tmp_path)
        wait_for(
            lambda: sum(r["event"] == "image.requested" for r in records(log_dir)) == 3,
            timeout=60,
        )
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        api.jobs.polls = 0
        polled = {ident: job["polls"] for ident, job in api.jobs.jobs.items()}
        dry = cli("repair", "p1", "--json", env=env_for(api, tmp_path))
        assert dry.json()["summary"]["jobs_pending"] == 3
        assert {i: j["polls"] for i, j in api.jobs.jobs.items()} == polled, "a dry run polls none"
        fixed = cli("repair", "p1", "--execute", "--json", "--allow-http",
                    env=env_for(api, tmp_path))  # fmt: skip
        out = fixed.json()
        assert fixed.code == 0, fixed.stdout
        assert (out["jobs_resumed"], out["resumed"]) == (3, 3)
        assert api.jobs.submitted == 3, "polled, never submitted again"
    assert [len(u) for u in rows.urls("p1").values()] == [1, 1, 1]


def test_a_prediction_whose_files_were_deleted_is_paid_for_and_lost(
    cli, db_url, rows, tmp_path: Path, log_dir: Path
):
    """Replicate keeps a prediction but deletes its output files about an hour after it
    finished: polled again, its URL is dead, and that is said, not re-bought."""
    rows.put("p1", incident_document(2))
    with LoopbackProvider(kind="replicate", job_polls=10**6) as api:
        assert api.jobs is not None
        env = env_for(api, tmp_path) | {"IMGSAVE_DATABASE_URL": db_url,
                                          "IMGSAVE_LOG_DIR": str(log_dir)}  # fmt: skip
        run = spawn(["generate", "p1", "-c", "2", "--allow-http"], env, tmp_path)
        wait_for(
            lambda: sum(r["event"] == "image.requested" for r in records(log_dir)) == 2,
            timeout=60,
        )
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        api.jobs.polls = 0
        first = next(iter(api.jobs.jobs.values()))
        api.dead_paths.update(first["paths"])
        ran = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path))
        out = ran.json()
        assert ran.code == 1, ran.stdout
        assert (out["jobs_resumed"], out["recovered"], out["jobs_lost"]) == (2, 1, 1), out
        assert (out["requested"], api.jobs.submitted) == (0, 2)
    assert sorted(len(u) for u in rows.urls("p1").values()) == [0, 1]
