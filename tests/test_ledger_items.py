"""Issue 25, item by item: what was paid for lives in the database, so no host, no other database
and no lapse of time makes imgsave pay twice or adopt what is not its own.

Each test failed on the main before the ledger (39b373d) and passes on the ledger's main, against
the real PostgreSQL, the loopback provider (its jobs and its Batch API as real HTTP servers) and,
where a store's listing matters, moto. Where an item involves a kill or a second host, the runs
are real processes: a second host is another log folder and another host name (`other_host`).
"Time passes" by moving imgsave's own timestamps in the database back (`time_passes`): what the
next run sees is what it would see that much later, without the test waiting for it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider

from .conftest import Ran, spawn, wait_for
from .served import Served
from .test_seams import log_records

# The job APIs' facts, written out (the same in every version of imgsave this file runs on).
KEY_VARIABLE = {"replicate": "REPLICATE_API_TOKEN", "fal": "FAL_KEY", "bfl": "BFL_API_KEY"}
MODEL = {"replicate": "black-forest-labs/flux-schnell", "fal": "fal-ai/flux/dev",
         "bfl": "flux-pro-1.1"}  # fmt: skip
# Fast retries and polls; the rest as a user would have it.
CONFIG = (
    "allow_private_network = true\n"
    "[provider]\ntimeout = 10\nbackoff_initial = 0.01\nbackoff_max = 0.05\n"
    "max_billed_retries = 5\nmax_retry_after = 0.2\npoll_interval = 0.02\npoll_timeout = 0.5\n"
    "[database]\nlock_timeout = 1\nmax_attempts = 100\n"
)


# -- hosts, databases, time ----------------------------------------------------------------------


def other_host(tmp_path: Path, name: str) -> dict[str, str]:
    """The environment of a process on another host: its own log folder, and its own host name
    (socket.gethostname, which claims, leases and markers name), set by a sitecustomize."""
    shim = tmp_path / f"host-{name}" / "python"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        f"import socket\nsocket.gethostname = lambda: {name!r}\n"
    )
    return {"PYTHONPATH": str(shim), "IMGSAVE_LOG_DIR": str(tmp_path / f"host-{name}" / "logs")}


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> Ran:
    """`imgsave ARGS` as a process of its own (as cron starts it), to its end."""
    proc = spawn(args, env, cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return Ran(proc.returncode, out, err)


def time_passes(db_url: str, seconds: float) -> None:
    """Every time imgsave wrote into this database moves `seconds` into the past: claims, the
    ledger's leases and request times, the batches table."""
    columns = {
        "imgsave_claims": ("claimed_at", "expires_at"),
        "imgsave_ledger": ("lease_until", "requested_at", "updated_at"),
        "imgsave_batches": ("collected_at", "submitted_at"),
    }
    with psycopg.connect(db_url, autocommit=True) as conn:
        for table, names in columns.items():
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                    (table,),
                )
            }
            moved = [c for c in names if c in present]
            if not moved:
                continue
            conn.execute(
                sql.SQL("UPDATE {} SET {}").format(
                    sql.Identifier(table),
                    sql.SQL(", ").join(
                        sql.SQL("{c} = {c} - make_interval(secs => {s})").format(
                            c=sql.Identifier(c), s=sql.Literal(seconds)
                        )
                        for c in moved
                    ),
                )
            )


def killed_when(proc, ready: Callable[[], bool], timeout: float = 60) -> None:
    """SIGKILL `proc` once `ready()`."""
    wait_for(ready, timeout=timeout)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def count(log_dir: Path, event: str) -> int:
    return sum(r.get("event") == event for r in log_records(log_dir))


def job_env(api: LoopbackProvider, tmp_path: Path, db_url: str) -> dict[str, str]:
    return {
        "IMGSAVE_DATABASE_URL": db_url,
        "IMGSAVE_PROVIDER": api.kind,
        "IMGSAVE_BASE_URL": api.base_url,
        KEY_VARIABLE[api.kind]: f"{api.kind}-key-7",
        "IMGSAVE_MODEL": MODEL[api.kind],
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
        "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1",  # the jobs' images are served on 127.0.0.1
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
    }


def batch_env(api: LoopbackProvider, tmp_path: Path, db_url: str) -> dict[str, str]:
    return {
        "IMGSAVE_DATABASE_URL": db_url,
        "IMGSAVE_BASE_URL": api.base_url,
        "IMGSAVE_API_KEY": "sk-test-7",
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
        "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1",
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
    }


def filled(rows, project: str) -> list[int]:
    return [len(urls) for urls in rows.urls(project).values()]


@pytest.fixture
def config(cli, tmp_path: Path) -> Path:
    """The test's imgsave.toml, in the folder every run starts in (after the `cli` fixture
    wrote its own there)."""
    path = tmp_path / "imgsave.toml"
    path.write_text(CONFIG)
    return path


# -- 1. jobs held by the ledger, whatever time and hosts do ---------------------------------------


def test_jobs_still_running_at_poll_timeout_are_never_bought_again_by_another_host(
    cli, db_url, rows, tmp_path: Path, config: Path
):
    """Item 1: this host's run gives up polling at poll_timeout with 3 jobs running and exits;
    host B (another log folder and host name) must not buy the 3 scenes again, and this host's
    later `repair --execute` saves each job once. On 39b373d B submitted 3 more jobs (the
    claims went with the first run) and the scenes ended with 2 images each for -k 1."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(kind="bfl", job_polls=10**6) as api:
        assert api.jobs is not None
        env = job_env(api, tmp_path, db_url)
        first = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert api.jobs.submitted == 3 and first.json()["saved"] == 0, first.stdout + first.stderr
        b = env | other_host(tmp_path, "host-b")
        second = run(["generate", "p1", "--json", "--allow-http"], b, tmp_path)
        assert api.jobs.submitted == 3, "host B bought the scenes whose jobs are running"
        assert second.json()["requested"] == 0, second.stdout
        api.jobs.polls = 0  # the jobs finish
        repaired = cli("repair", "p1", "--execute", "--json", "--allow-http", env=env)
        assert repaired.code == 0, repaired.stdout + repaired.stderr
        again = run(["generate", "p1", "--json", "--allow-http"], b, tmp_path)
        assert again.code == 0, again.stdout + again.stderr
        assert api.jobs.submitted == 3
    assert filled(rows, "p1") == [1, 1, 1], "each scene's job saved once"


def test_jobs_of_a_killed_host_are_never_bought_again_once_its_claims_expire(
    cli, db_url, rows, tmp_path: Path, config: Path
):
    """Item 1: host A is killed with 3 jobs pending; once its claims have expired, host B must
    poll the jobs (they hold their scenes in the ledger), never submit new ones. On 39b373d B
    submitted 3 new jobs once the claims lapsed."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(kind="replicate", job_polls=10**6) as api:
        assert api.jobs is not None
        env = job_env(api, tmp_path, db_url)
        a = env | other_host(tmp_path, "host-a")
        b = env | other_host(tmp_path, "host-b")
        proc = spawn(["generate", "p1", "-c", "3", "--allow-http"], a, tmp_path)
        logs = Path(a["IMGSAVE_LOG_DIR"])
        killed_when(proc, lambda: count(logs, "image.requested") == 3)
        time_passes(db_url, 3600)  # the dead host's claims (600 s) are long expired
        second = run(["generate", "p1", "--json", "--allow-http"], b, tmp_path)
        assert api.jobs.submitted == 3, "host B bought the scenes whose jobs are running"
        assert second.json()["requested"] == 0, second.stdout
        api.jobs.polls = 0  # the jobs finish: a run on any host saves them
        done = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert done.code == 0, done.stdout + done.stderr
        assert done.json()["recovered"] == 3, done.stdout
        assert api.jobs.submitted == 3
    assert filled(rows, "p1") == [1, 1, 1]


# -- 2, 3. batches held by the ledger: a lost create answer, 25 hours ------------------------

BATCH = ["generate", "p1", "--batch", "--json", "--allow-http"]


def test_a_batch_whose_create_answer_was_lost_while_listing_failed_is_never_submitted_again(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 2: the create made the batch (it bills) and its answer was lost, and the listing
    that looks for it failed too. On 39b373d the run exited 3 and released the claims, and the
    next run on another host submitted the same scenes in a second batch (2 images a scene for
    -k 1)."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, rows.url)
        api.batches.lose_create_answers = 1
        create = api.batches._create

        def create_then_lists_fail(body: bytes):  # from the create on, every list answers 503
            answer = create(body)
            api.batches.failing_lists = 10**6
            return answer

        api.batches._create = create_then_lists_fail  # type: ignore[method-assign]
        first = cli(*BATCH, env=env)
        assert api.batches.created == 1, first.stdout + first.stderr
        api.batches.failing_lists = 0
        # Another host, whose log never saw the batch: the scenes are in a batch, somewhere.
        b = env | other_host(tmp_path, "host-b")
        second = run(BATCH, b, tmp_path)
        assert api.batches.created == 1, "the same scenes were submitted again"
        assert second.json()["in_batches"] == 0, second.stdout + second.stderr
        api.batches.seconds = 0  # it finishes: collected from any host
        third = cli(*BATCH, env=env)
        assert third.code == 0, third.stdout + third.stderr
        assert (third.json()["saved"], third.json()["batches"]["submitted"]) == (3, [])
        assert api.batches.created == 1
    assert filled(rows, "p1") == [1, 1, 1]


def test_a_batch_still_running_after_25_hours_is_not_submitted_again(
    cli, rows, db_url, tmp_path: Path, config: Path
):
    """Item 3: its scenes are held by its ledger rows, not by a claim that lapses. On 39b373d
    the claims lasted 25 h and a --batch run after that submitted the scenes again."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, db_url)
        assert cli(*BATCH, env=env).json()["in_batches"] == 3
        time_passes(db_url, 26 * 3600)
        later = cli(*BATCH, env=env)
        assert later.code == 0, later.stdout + later.stderr
        assert api.batches.created == 1, "a batch still running was submitted again"
        assert later.json()["batches"]["pending"], later.stdout


def test_images_in_a_finished_uncollected_batch_are_not_bought_by_a_plain_generate_25_hours_on(
    cli, rows, db_url, tmp_path: Path, config: Path
):
    """Item 3: a plain (synchronous) generate 26 hours after a batch finished uncollected buys
    nothing: the batch's rows hold the scenes (and it collects them). On 39b373d it bought all
    3 images again once the batch's claims had lapsed."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64") as api:
        env = batch_env(api, tmp_path, db_url)
        assert cli(*BATCH, env=env).json()["in_batches"] == 3
        time_passes(db_url, 26 * 3600)
        plain = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert api.requests == 0, "paid again for images waiting in a finished batch"
        assert plain.code == 0, plain.stdout + plain.stderr
    assert filled(rows, "p1") == [1, 1, 1]


# -- 4. a citext key: the database's own equality decides -----------------------------------------


@pytest.mark.many_connections
def test_a_citext_key_typed_in_upper_case_and_generate_all_on_another_host_pay_once(
    db_url, tmp_path: Path, config: Path
):
    """Item 4: `generate PROJ-1` and `generate --all` (which reads `proj-1`) at once, on two
    hosts: each scene is paid for once. On 39b373d the two spellings claimed separately: 40
    images for 20 scenes."""
    from .conftest import process_env

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("DROP TABLE projects")
        conn.execute(
            "CREATE TABLE projects (id citext PRIMARY KEY, generated_output jsonb, "
            "updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO projects VALUES ('proj-1', %s::jsonb, now())",
            (json.dumps(incident_document(20)),),
        )
    store = {
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
    }
    a_env = other_host(tmp_path, "host-a")
    with (
        LoopbackProvider(answer="b64") as a,
        LoopbackProvider(answer="b64") as b,
        psycopg.connect(db_url) as blocker,
    ):
        # The first run's saves wait behind the app's lock: its images are paid for, not saved,
        # when the second run plans.
        blocker.execute("SELECT 1 FROM projects WHERE id = 'proj-1' FOR UPDATE")
        first = spawn(
            ["generate", "PROJ-1", "-c", "4", "--json"],
            process_env(db_url, a, tmp_path / "a") | store | a_env,
            tmp_path,
        )
        wait_for(lambda: count(Path(a_env["IMGSAVE_LOG_DIR"]), "image.generated") == 20)
        second = spawn(
            ["generate", "--all", "-c", "4", "--json"],
            process_env(db_url, b, tmp_path / "b") | store | other_host(tmp_path, "host-b"),
            tmp_path,
        )
        wait_for(lambda: second.poll() is not None or b.requests >= 20)
        blocker.rollback()
        outs = [p.communicate(timeout=120) for p in (first, second)]
        assert [first.returncode, second.returncode] == [0, 0], outs
        paid = a.requests + b.requests
    assert paid == 20, "each scene paid for once across both hosts"
    with psycopg.connect(db_url) as conn:
        (document,) = conn.execute("SELECT generated_output FROM projects").fetchone()
    assert [len(s["imageUrls"]) for s in document["scenes"]] == [1] * 20


# -- 5. staging and prod on one host: another database's records are never evidence -------------


@pytest.fixture
def staging(_databases) -> Iterator[str]:
    """A second database on the same server (staging, beside the test's own, prod), from the
    same template."""
    from psycopg.conninfo import make_conninfo

    name = _databases.take()
    yield make_conninfo(_databases.server_url, dbname=name)
    _databases.spare.append(name)


def test_prod_audits_and_repairs_nothing_of_what_staging_saved_on_the_same_host(
    cli, rows, staging: str, config: Path
):
    """Item 5: one host, one log folder, staging and prod with the same project keys. On
    39b373d prod's audit listed staging's 3 images as lost and `repair --execute` appended them
    to prod's scenes."""
    from .conftest import Rows

    rows.put("p1", incident_document(3))  # prod's p1: its scenes not generated yet
    rows.put("p0", incident_document(1))
    Rows(staging).put("p1", incident_document(3))
    with LoopbackProvider() as api:
        # Prod has bought before, from this host: its own identity, its own records.
        assert (
            cli("generate", "p0", "--allow-http", env={"IMGSAVE_BASE_URL": api.base_url}).code == 0
        )
        on_staging = {"IMGSAVE_DATABASE_URL": staging, "IMGSAVE_BASE_URL": api.base_url}
        made = cli("generate", "p1", "--json", "--allow-http", env=on_staging)
        assert made.json()["saved"] == 3, made.stdout + made.stderr
        audit = cli("audit", "--json", env={"IMGSAVE_BASE_URL": api.base_url})
        assert audit.json()["summary"]["lost"] == 0, audit.stdout
        assert audit.code == 0, audit.stdout + audit.stderr
        repaired = cli("repair", "--execute", "--json", env={"IMGSAVE_BASE_URL": api.base_url})
        assert repaired.code == 0, repaired.stdout + repaired.stderr
    assert filled(rows, "p1") == [0, 0, 0], "staging's images appended to prod"
    assert filled(Rows(staging), "p1") == [1, 1, 1]


def test_a_staging_run_that_died_is_settled_into_staging_never_into_prod(
    cli, rows, staging: str, tmp_path: Path, log_dir: Path, config: Path
):
    """Item 5: a staging run killed between its images' records and their save; then prod's
    generate on the same host (same log folder) must recover none of them into prod's scenes,
    and staging's next run recovers them all. On 39b373d prod "recovered" staging's 3 images."""
    from .conftest import Rows, process_env
    from .test_seams import _killed_while_the_row_is_held

    rows.put("p1", incident_document(3))
    Rows(staging).put("p1", incident_document(3))
    with LoopbackProvider() as api:
        env = process_env(staging, api, log_dir)
        _killed_while_the_row_is_held(
            staging, tmp_path, env, ["generate", "p1", "-c", "3"], "image.generated", 3
        )
        paid_in_staging = set(api.served)
        assert len(paid_in_staging) == 3
        prod = cli(
            "generate", "p1", "--json", "--allow-http", env={"IMGSAVE_BASE_URL": api.base_url}
        )
        assert prod.code == 0, prod.stdout + prod.stderr
        assert prod.json()["recovered"] == 0, "staging's images recovered into prod"
        prod_urls = {u for urls in rows.urls("p1").values() for u in urls}
        assert not prod_urls & paid_in_staging
        back = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert back.json()["recovered"] == 3, back.stdout + back.stderr
    staging_urls = {u for urls in Rows(staging).urls("p1").values() for u in urls}
    assert staging_urls == paid_in_staging


# -- 6, 7. a saved image removed on purpose, an image whose scene was deleted --------------------


@pytest.mark.parametrize("where", ["same host", "another host"])
def test_an_image_the_app_removed_after_a_kill_is_not_put_back_by_the_rerun(
    cli, rows, tmp_path: Path, log_dir: Path, config: Path, where: str
):
    """Item 6: a run saves 3 of p1's 4 images (image.saved logged; the 4th request hangs) and
    is SIGKILLed; the app then removes one of the saved images on purpose. The rerun, on the
    same host or another (once the dead run's claims expired), must not put it back. On
    39b373d it did (`recovered 1`): the store held an object put after the dead run's claim
    on the scene began."""
    from .conftest import process_env

    rows.put("p1", incident_document(4))
    with LoopbackProvider(answer="b64", faults=lambda n: "hang" if n == 4 else "ok") as api:
        env = process_env(rows.url, api, log_dir) | {
            "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
            "IMGSAVE_PUBLIC_URL": "https://images.example.com",
        }
        proc = spawn(["generate", "p1", "-c", "4"], env, tmp_path)
        killed_when(proc, lambda: count(log_dir, "image.saved") == 3)
        document = rows.doc("p1")
        scene = next(s for s in document["scenes"] if s.get("imageUrls"))
        (removed,) = scene["imageUrls"]
        scene["imageUrls"] = []  # the app removes it, on purpose
        rows.put("p1", document)
        if where == "another host":
            env |= other_host(tmp_path, "host-b")
            time_passes(rows.url, 3600)  # the dead run's claims have expired
        rerun = run(["generate", "p1", "--json"], env, tmp_path)
        assert rerun.json()["recovered"] == 0, rerun.stdout + rerun.stderr
    held = {url for urls in rows.urls("p1").values() for url in urls}
    assert removed not in held, "an image the app removed was put back"


def _indexed(prompts: list[str]) -> dict:
    """A document whose scenes have no id: each is known by its index alone."""
    return {"scenes": [{"index": n, "prompt": p} for n, p in enumerate(prompts, start=1)]}


def _orphaned_by_a_deletion(api: LoopbackProvider, rows, tmp_path: Path, log_dir: Path) -> str:
    """p1's scene 3 is deleted while the run's images wait for the row: its image, paid for,
    is orphaned; then the app adds a new scene at index 3. Returns the orphaned image's URL."""
    from .conftest import process_env

    rows.put("p1", _indexed(["a harbour", "a lighthouse", "a storm"]))
    env = process_env(rows.url, api, log_dir)
    with psycopg.connect(rows.url) as app:
        app.execute("SELECT 1 FROM projects WHERE id = 'p1' FOR UPDATE")
        proc = spawn(["generate", "p1", "-c", "3", "--allow-http"], env, tmp_path)
        wait_for(lambda: count(log_dir, "image.generated") == 3)
        app.execute(
            "UPDATE projects SET generated_output = %s::jsonb WHERE id = 'p1'",
            (json.dumps(_indexed(["a harbour", "a lighthouse"])),),
        )
        app.commit()
    proc.communicate(timeout=60)
    (orphaned,) = [
        r["url"] for r in log_records(log_dir)
        if r.get("event") == "image.generated" and r.get("scene") == 3
    ]  # fmt: skip
    assert filled(rows, "p1") == [1, 1]
    document = rows.doc("p1")
    document["scenes"].append({"index": 3, "prompt": "a calm sea"})  # a new scene 3
    rows.put("p1", document)
    return orphaned


def test_an_image_whose_scene_was_deleted_mid_run_never_goes_into_a_new_scene_at_its_index(
    cli, rows, tmp_path: Path, log_dir: Path, config: Path
):
    """Item 7: scene 3 is deleted while the run's images wait for the row (its image is
    orphaned); the app later adds a new scene 3. The rerun buys the new scene its own image.
    On 39b373d it "recovered" the orphaned image into the new scene, with 0 new requests."""
    with LoopbackProvider() as api:
        orphaned = _orphaned_by_a_deletion(api, rows, tmp_path, log_dir)
        env = {"IMGSAVE_BASE_URL": api.base_url}
        rerun = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert rerun.json()["recovered"] == 0, rerun.stdout + rerun.stderr
        assert rerun.json()["requested"] == 1, rerun.stdout
    (url,) = rows.urls("p1")[3]
    assert url != orphaned, "an orphaned image was put into another scene"


def test_audit_and_repair_never_put_an_orphaned_image_into_a_new_scene_at_its_index(
    cli, rows, tmp_path: Path, log_dir: Path, config: Path
):
    """Item 7, audit's side: the orphaned image is reported orphaned, never lost, and `repair
    --execute` never writes it. On 39b373d (as on the ledger's main) audit called it lost in
    the new scene 3 and repair appended it."""
    with LoopbackProvider() as api:
        orphaned = _orphaned_by_a_deletion(api, rows, tmp_path, log_dir)
    audit = cli("audit", "p1", "--json")
    assert orphaned not in {f["url"] for f in audit.json()["lost"]}, audit.stdout
    assert orphaned in {f["url"] for f in audit.json()["orphaned"]}, audit.stdout
    repaired = cli("repair", "p1", "--execute", "--json")
    assert repaired.json()["repaired"] == 0, repaired.stdout
    assert rows.urls("p1")[3] == []


# -- 8. a restored snapshot ----------------------------------------------------------------------


@pytest.fixture
def snapshot(db_url: str) -> Iterator[Callable[[], str]]:
    """`take()`: a copy of the test's database as it is now (a restored snapshot of prod)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    made: list[str] = []
    source = conninfo_to_dict(db_url)["dbname"]

    def take() -> str:
        name = f"{source}_copy{len(made)}"
        copy = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(str(source))
        )
        with psycopg.connect(make_conninfo(db_url, dbname="postgres"), autocommit=True) as c:
            # A session that just ended may not have left the server yet: the copy waits for it.
            deadline = time.monotonic() + 10
            while True:
                try:
                    c.execute(copy)
                    break
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        made.append(name)
        return make_conninfo(db_url, dbname=name)

    yield take
    with psycopg.connect(make_conninfo(db_url, dbname="postgres"), autocommit=True) as c:
        for name in made:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_a_restored_copy_given_its_own_identity_leaves_prods_batches_alone(
    cli, rows, db_url, snapshot, tmp_path: Path, config: Path
):
    """Item 8: a copy of prod restored from a snapshot (same identity, same ledger rows) is
    given its own identity as the docs say; from then on it lists, counts, cancels and
    collects none of prod's batches, and prod collects its own. On 39b373d the copy listed
    and collected prod's batch into its own documents, then exited 3."""
    from .conftest import Rows

    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, db_url)
        (batch_id,) = cli(*BATCH, env=env).json()["batches"]["submitted"]
        copy = snapshot()
        on_copy = env | {"IMGSAVE_DATABASE_URL": copy}
        renamed = cli("sql", "--new-identity", "--apply", env=on_copy)
        assert renamed.code == 0, renamed.stdout + renamed.stderr
        api.batches.seconds = 0  # prod's batch finishes
        listed = cli("batches", "--json", env=on_copy)
        assert (listed.code, listed.json()["batches"]) == (0, []), listed.stdout
        assert cli("batches", "cancel", batch_id, env=on_copy).code == 2
        audit = cli("audit", "--json", env=on_copy)
        assert audit.json()["summary"]["uncollected"] == 0, audit.stdout
        collected = cli(*BATCH, env=on_copy)
        assert collected.json()["batches"]["collected"] == [], collected.stdout
        assert filled(Rows(copy), "p1") == [0, 0, 0], "prod's batch collected into the copy"
        assert api.batches.batches[batch_id]["status"] not in ("cancelling", "cancelled")
        prod = cli(*BATCH, env=env)
        assert prod.json()["batches"]["collected"] == [batch_id], prod.stdout
    assert filled(rows, "p1") == [1, 1, 1]


# -- 9. batch output lines checked against the batch's input ----------------------------------


def _finished(api: LoopbackProvider, batch_id: str) -> dict:
    """The batch, finished now (as if it had been created two hours ago), its output written."""
    batch = api.batches.batches[batch_id]
    batch["_started"] -= 7200
    api.batches.get(f"/v1/batches/{batch_id}")
    return batch


def _output_lines(api: LoopbackProvider, batch: dict) -> list[dict]:
    return [json.loads(line) for line in api.batches.contents[batch["output_file_id"]].splitlines()]


def _write_output(api: LoopbackProvider, batch: dict, lines: list[dict | bytes]) -> None:
    api.batches.contents[batch["output_file_id"]] = b"".join(
        line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n" for line in lines
    )


def _answer(api: LoopbackProvider, custom_id: str) -> dict:
    """An output line answering `custom_id` with a new image (one the provider made)."""
    body = api._batch_image()
    return {"id": "batch_req_forged", "custom_id": custom_id, "error": None,
            "response": {"status_code": 200, "request_id": "req_forged", "body": body}}  # fmt: skip


def test_a_batch_line_naming_a_scene_the_batch_did_not_ask_for_is_refused(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 9: batch A's output holds a line whose custom_id is one of batch B's (p2's scene,
    B still running). It is refused and reported; p2 gets nothing from A. On 39b373d the
    custom_id alone decided: A's collection wrote an image into p2."""
    rows.put("p1", incident_document(2))
    rows.put("p2", incident_document(1))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, rows.url)
        (b_id,) = cli("generate", "p2", "--batch", "--json", env=env).json()["batches"]["submitted"]
        (a_id,) = cli(*BATCH, env=env).json()["batches"]["submitted"]
        a = _finished(api, a_id)
        (foreign, _), *_ = api.batches.batches[b_id]["_lines"]
        _write_output(api, a, [*_output_lines(api, a), _answer(api, foreign)])
        collected = cli(*BATCH, env=env)
        out = collected.json()
        assert a_id in out["batches"]["collected"], collected.stdout + collected.stderr
        assert out["saved"] == 2 and out["errors"], out
    assert filled(rows, "p2") == [0], "a line of batch A wrote into p2"
    assert filled(rows, "p1") == [1, 1]


def test_a_custom_id_answered_twice_puts_one_image_in_its_scene(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 9: batch A's output answers one custom_id twice, with two different images. The
    second answer is refused and reported: the -k 1 scene holds one image. On 39b373d it held
    two."""
    rows.put("p1", incident_document(2))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, rows.url)
        (a_id,) = cli(*BATCH, env=env).json()["batches"]["submitted"]
        a = _finished(api, a_id)
        lines = _output_lines(api, a)
        _write_output(api, a, [*lines, _answer(api, lines[0]["custom_id"])])
        collected = cli(*BATCH, env=env)
        out = collected.json()
        assert out["saved"] == 2 and out["errors"], collected.stdout + collected.stderr
    assert filled(rows, "p1") == [1, 1], "a scene of -k 1 holds two images"


def _a_batch_with_a_bad_line_and_an_empty_answer(cli, rows, tmp_path: Path) -> Ran:
    """p1's 3 images in one batch, collected: its output's first line is not JSON, its second
    a 200 that holds no image. The collecting run's result."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, rows.url)
        (a_id,) = cli(*BATCH, env=env).json()["batches"]["submitted"]
        a = _finished(api, a_id)
        _, second, third = _output_lines(api, a)
        second["response"]["body"]["data"] = []
        _write_output(api, a, [b"<html>upstream proxy error</html>\n", second, third])
        collected = cli(*BATCH, env=env)
        collected.created = api.batches.created  # type: ignore[attr-defined]
        return collected


def test_unreadable_lines_and_answers_without_an_image_are_reported_exit_1(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 9: of a batch's 3 lines, one is not JSON and one is a 200 that holds no image: both
    are named in the errors and the run exits 1. On 39b373d both were dropped silently, the
    batch marked collected, exit 0."""
    collected = _a_batch_with_a_bad_line_and_an_empty_answer(cli, rows, tmp_path)
    out = collected.json()
    assert collected.code == 1, collected.stdout + collected.stderr
    assert any("cannot be read" in e for e in out["errors"]), out["errors"]
    assert any("scene 2" in e and "no_image" in e for e in out["errors"]), out["errors"]
    assert out["saved"] == 1


def test_unreadable_lines_and_answers_without_an_image_count_one_failure_each(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 9: the 2 images that did not come are 2 failures, no more, no fewer. On 39b373d
    they were 0."""
    out = _a_batch_with_a_bad_line_and_an_empty_answer(cli, rows, tmp_path).json()
    assert out["failed"] == 2, out
    assert out["per_batch"][0]["failed"] == 2, out["per_batch"]


def test_scenes_of_unreadable_or_empty_lines_are_not_bought_again_by_the_run_that_found_them(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 9: the run that finds the two failed lines does not pay for their scenes again in
    the same breath. On 39b373d it submitted them again, silently."""
    collected = _a_batch_with_a_bad_line_and_an_empty_answer(cli, rows, tmp_path)
    assert collected.created == 1, collected.stdout  # type: ignore[attr-defined]
    assert collected.json()["in_batches"] == 0, collected.stdout


# -- 10. the Batch API cannot be read: nothing seen is not nothing found ----------------------


class Answering(Served):
    """An HTTP server on loopback that answers every request with one status (the Batch API
    down, or refusing the key), as the image API's base URL."""

    def __init__(self, status: int):
        body = json.dumps({"error": {"message": f"answered {status}", "type": "server_error",
                                     "param": None, "code": None}}).encode()  # fmt: skip

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

        super().__init__(Handler)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"


# A 503 is retried (as [provider] says: max_attempts, and the tests' short backoff).
@pytest.mark.parametrize(
    ("status", "commands"),
    [(401, (["audit"], ["repair"], ["repair", "--execute"])), (503, (["repair", "--execute"],))],
)
def test_audit_and_repair_say_so_when_the_batch_api_cannot_be_read(
    cli, rows, tmp_path: Path, config: Path, status: int, commands: tuple[list[str], ...]
):
    """Item 10: a finished batch waits uncollected, and the Batch API answers `status`
    (refusing the key, or down): audit, a dry-run repair and `repair --execute` exit 3 and say
    why, never `uncollected: 0` with exit 0. On 39b373d all three said nothing was uncollected
    and exited 0."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64") as api:
        env = batch_env(api, tmp_path, rows.url)
        assert cli(*BATCH, env=env).json()["in_batches"] == 3
    with Answering(status) as down:
        env |= {"IMGSAVE_BASE_URL": down.base_url}
        for args in commands:
            ran = cli(*args, "--json", "--allow-http", env=env)
            assert ran.code == 3, (args, ran.stdout, ran.stderr)
            assert str(status) in ran.stdout + ran.stderr, (args, ran.stdout, ran.stderr)
    assert filled(rows, "p1") == [0, 0, 0]


# -- 11. a --batch run killed before its create ----------------------------------------------


class Interposer(Served):
    """A proxy on loopback in front of the image API, as the network between imgsave and the
    provider: `rule(method, path, headers)` says what becomes of each request: "forward", "hold"
    (it never reaches the provider; no answer until the proxy closes), "forward-hold" (it
    reaches the provider, whose answer never comes back), or seconds to forward it and hold
    the answer that long. `base` is the image API's base URL through it."""

    def __init__(self, upstream: str, rule: Callable[[str, str, dict[str, str]], object]):
        self.upstream = upstream.rstrip("/")
        self.rule = rule
        # Requests held now, their answers never to come (while the proxy lives).
        self.holding = 0
        self._closing = threading.Event()
        self._client = httpx.Client(timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                what = proxy.rule(self.command, self.path, headers)
                if what == "hold":
                    proxy.holding += 1
                    proxy._closing.wait(60)
                    return
                if isinstance(what, tuple):  # (status, body): answered here, never forwarded
                    status, text = what
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                answer = proxy._client.request(
                    self.command, proxy.upstream + self.path, content=body,
                    headers={k: v for k, v in headers.items() if k not in _HOP},
                )  # fmt: skip
                if what == "forward-hold":
                    proxy.holding += 1
                    proxy._closing.wait(60)
                    return
                if isinstance(what, int | float):
                    proxy._closing.wait(what)
                # URLs in the answer (a job's poll URL) name the proxy, as a gateway's would.
                content = answer.content.replace(proxy.upstream.encode(), proxy.origin.encode())
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP | {"content-encoding"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = _forward

        super().__init__(Handler)

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()  # the held requests end first
        super().__exit__(*exc_info)
        self._client.close()


_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


def _creates(method: str, path: str, headers: dict[str, str]) -> bool:
    return method == "POST" and path.split("?")[0] == "/v1/batches"


def _uploads(method: str, path: str, headers: dict[str, str]) -> bool:
    return method == "POST" and path.split("?")[0] == "/v1/files"


@pytest.mark.parametrize("when", ["after the upload", "before the create"])
def test_a_batch_run_killed_before_its_batch_was_created_frees_its_scenes(
    cli, rows, db_url, tmp_path: Path, config: Path, when: str
):
    """Item 11: `generate --batch` on host A is killed once its input is uploaded (its answer
    never came back) or once `batch.submitting` is logged (the create never reached the
    provider): no batch exists. Eleven minutes later host B submits the scenes (one batch in
    all) and they are filled. On 39b373d the scenes stayed claimed for 25 h with nothing in
    flight, and B submitted nothing."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64") as api:
        if when == "after the upload":
            rule = lambda m, p, h: "forward-hold" if _uploads(m, p, h) else "forward"  # noqa: E731
        else:
            rule = lambda m, p, h: "hold" if _creates(m, p, h) else "forward"  # noqa: E731
        with Interposer(api.origin, rule) as proxy:
            a = batch_env(api, tmp_path, db_url) | other_host(tmp_path, "host-a")
            proc = spawn([*BATCH], a | {"IMGSAVE_BASE_URL": proxy.origin + "/v1"}, tmp_path)
            logs = Path(a["IMGSAVE_LOG_DIR"])
            if when == "after the upload":
                killed_when(proc, lambda: len(api.batches.files) == 1)
            else:
                killed_when(proc, lambda: count(logs, "batch.submitting") == 1)
        assert api.batches.created == 0
        time_passes(db_url, 660)
        b = batch_env(api, tmp_path, db_url) | other_host(tmp_path, "host-b")
        submitted = run(BATCH, b, tmp_path)
        assert submitted.code == 0, submitted.stdout + submitted.stderr
        assert submitted.json()["in_batches"] == 3, submitted.stdout
        collected = cli(*BATCH, env=b | {"IMGSAVE_LOG_DIR": str(tmp_path / "host-c")})
        assert collected.json()["saved"] == 3, collected.stdout + collected.stderr
        assert api.batches.created == 1
    assert filled(rows, "p1") == [1, 1, 1]


# -- 12. batches without claims, or after the journal's uninstall ---------------------------


def test_a_batch_run_with_claims_off_collects_and_marks_its_batch_collected(
    cli, rows, db_url, role, tmp_path: Path, config: Path
):
    """Item 12: `[claims] enabled = false`, on a deployment with no claims table whose role
    cannot create tables (the owner ran `imgsave sql --apply`, and the claims table it does not
    use is gone): --batch runs submit and collect, and `batches` says collected. On 39b373d
    every --batch run exited 3 (the batch path used the claims table whatever the setting)."""
    from psycopg.conninfo import make_conninfo

    config.write_text(CONFIG + "[claims]\nenabled = false\n")
    rows.put("p1", incident_document(3))
    assert cli("sql", "--apply").code == 0
    app = role()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE imgsave_claims")
        for (table,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'imgsave%%'"
        ).fetchall():
            conn.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                    sql.Identifier(table), sql.Identifier(app)
                )
            )
    with LoopbackProvider(answer="b64") as api:
        env = batch_env(api, tmp_path, db_url) | {
            "IMGSAVE_DATABASE_URL": make_conninfo(db_url, user=app)
        }
        first = cli(*BATCH, env=env)
        assert first.code == 0, first.stdout + first.stderr
        assert first.json()["in_batches"] == 3
        collected = cli(*BATCH, env=env)
        assert collected.code == 0, collected.stdout + collected.stderr
        assert collected.json()["saved"] == 3
        listed = cli("batches", "--json", env=env)
        assert listed.code == 0, listed.stdout + listed.stderr
        assert [b["collected"] for b in listed.json()["batches"]] == [True]
    assert filled(rows, "p1") == [1, 1, 1]


def test_a_batch_submitted_before_the_journal_was_uninstalled_is_still_collected(
    cli, rows, db_url, tmp_path: Path, config: Path
):
    """Item 12: `sql --journal --uninstall --apply` while a batch runs keeps the ledger and the
    batches table, which hold its unresolved rows (main refuses the uninstall until they are
    resolved, and says why): the batch is collected and marked so. On
    39b373d the uninstall dropped imgsave_batches and imgsave_claims; every --batch run then
    exited 3 and the batch stayed NOT COLLECTED."""
    rows.put("p1", incident_document(3))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, db_url)
        assert cli(*BATCH, env=env).json()["in_batches"] == 3
        assert cli("sql", "--journal", "--apply", env=env).code == 0
        # The uninstall keeps the tables that hold the batch's rows, or refuses until they
        # are resolved: either way nothing the batch paid for is forgotten.
        uninstall = ["sql", "--journal", "--uninstall", "--apply"]
        done = cli(*uninstall, env=env)
        assert done.code in (0, 3), done.stdout + done.stderr
        if done.code == 3:
            assert "imgsave_ledger holds purchases" in done.stderr, done.stderr
        api.batches.seconds = 0
        collected = cli(*BATCH, env=env)
        assert collected.code == 0, collected.stdout + collected.stderr
        assert collected.json()["saved"] == 3
        listed = cli("batches", "--json", env=env)
        assert listed.code == 0, listed.stdout + listed.stderr
        assert [b["collected"] for b in listed.json()["batches"]] == [True]
        if done.code == 3:  # it refused while the batch ran: now it goes through
            assert cli(*uninstall, env=env).code == 0
    assert filled(rows, "p1") == [1, 1, 1]


# -- 13. a job whose image download was refused ----------------------------------------------


def _a_refused_download(cli, rows, tmp_path: Path, api: LoopbackProvider) -> dict[str, str]:
    """A Replicate job whose image is on a private address, which imgsave refuses to download
    by default: the job is paid for and succeeded, its image not fetched. The job's env."""
    rows.put("p1", incident_document(1))
    env = job_env(api, tmp_path, rows.url)
    first = cli("generate", "p1", "--json", "--allow-http", env=refusing(env))
    assert first.code == 1 and first.json()["saved"] == 0, first.stdout + first.stderr
    assert api.jobs is not None and api.jobs.submitted == 1
    return env


def refusing(env: dict[str, str]) -> dict[str, str]:
    return env | {"IMGSAVE_ALLOW_PRIVATE_NETWORK": "0"}


def test_a_job_whose_download_was_refused_is_fetched_later_never_bought_again(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 13: reruns never submit the job again (while downloads are still refused, it waits);
    once downloads may go there, a rerun fetches the image the job still serves, and audit is
    clean. On 39b373d a rerun never polled the job again, a later run called it paid for and
    lost while the provider still served it, and audit exited 1 from then on."""
    with LoopbackProvider(kind="replicate", job_polls=1) as api:
        assert api.jobs is not None
        env = _a_refused_download(cli, rows, tmp_path, api)
        again = cli("generate", "p1", "--json", "--allow-http", env=refusing(env))
        assert (again.json()["requested"], api.jobs.submitted) == (0, 1), again.stdout
        fetched = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert fetched.code == 0, fetched.stdout + fetched.stderr
        assert (fetched.json()["recovered"], fetched.json()["requested"]) == (1, 0)
        assert api.jobs.submitted == 1
        audit = cli("audit", "p1", "--json", env=env)
        assert audit.code == 0, audit.stdout
        assert audit.json()["jobs"] == []
    assert filled(rows, "p1") == [1]


def test_the_record_of_a_refused_download_names_its_job(
    cli, rows, tmp_path: Path, log_dir: Path, config: Path
):
    """Item 13: `image.failed` says which job's image was refused. On 39b373d it did not."""
    with LoopbackProvider(kind="replicate", job_polls=1) as api:
        _a_refused_download(cli, rows, tmp_path, api)
        assert api.jobs is not None
        (job,) = api.jobs.jobs
    failed = [r for r in log_records(log_dir) if r["event"] == "image.failed"]
    assert [r.get("job") for r in failed] == [job], failed


# -- 14. jobs that cannot be polled, jobs lost: one finding, one exit code --------------------


def _pending_jobs(
    cli, rows, tmp_path: Path, api: LoopbackProvider, base_url: str | None = None
) -> dict[str, str]:
    """p1's 3 Replicate jobs, submitted (through `base_url`, else directly) and still running
    when the run gave up polling them (poll_timeout). The jobs' env."""
    rows.put("p1", incident_document(3))
    env = job_env(api, tmp_path, rows.url) | ({"IMGSAVE_BASE_URL": base_url} if base_url else {})
    first = cli("generate", "p1", "--json", "--allow-http", env=env)
    assert first.json()["saved"] == 0, first.stdout + first.stderr
    assert api.jobs is not None and api.jobs.submitted == 3
    return env


def test_jobs_that_cannot_be_polled_without_a_key_are_not_a_clean_run(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 14: a rerun with no key: the pending jobs cannot be polled (401). The run says so
    and exits 3. On 39b373d the 401s were listed in `errors` and the run exited 0."""
    with LoopbackProvider(kind="replicate", job_polls=10**6) as api:
        env = _pending_jobs(cli, rows, tmp_path, api)
        api.jobs.polls = 0  # type: ignore[union-attr]
        keyless = {k: v for k, v in env.items() if k != KEY_VARIABLE["replicate"]}
        rerun = cli("generate", "p1", "--json", "--allow-http", env=keyless)
        assert rerun.code == 3, rerun.stdout + rerun.stderr
        assert "401" in rerun.stdout
        assert api.jobs.submitted == 3  # type: ignore[union-attr]
    assert filled(rows, "p1") == [0, 0, 0]


def test_jobs_that_answer_401_to_their_polls_make_the_run_exit_3(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 14: a rerun whose polls are refused (401: a revoked key): exit 3, never 0, and the
    jobs stay pending for a run whose polls get through. On 39b373d: exit 0."""
    refused = b'{"title": "Unauthenticated", "status": 401, "detail": "no valid token"}'
    refusing = threading.Event()

    def polls_refused(method: str, path: str, headers: dict[str, str]) -> object:
        polled = method == "GET" and "/predictions/" in path
        return (401, refused) if polled and refusing.is_set() else "forward"

    with (
        LoopbackProvider(kind="replicate", job_polls=10**6) as api,
        Interposer(api.origin, polls_refused) as proxy,
    ):
        env = _pending_jobs(cli, rows, tmp_path, api, proxy.origin + "/v1")
        api.jobs.polls = 0  # type: ignore[union-attr]
        refusing.set()
        rerun = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert rerun.code == 3, rerun.stdout + rerun.stderr
        assert "401" in rerun.stdout + rerun.stderr
        refusing.clear()
        right = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert right.code == 0, right.stdout + right.stderr
        assert (right.json()["recovered"], api.jobs.submitted) == (3, 3)  # type: ignore[union-attr]
    assert filled(rows, "p1") == [1, 1, 1]


def test_lost_jobs_give_the_same_exit_code_to_audit_repair_and_repair_execute(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 14: 3 jobs paid for whose results are gone. `repair --execute -q` (the one that
    finds them lost, and again), `audit` and a dry-run `repair` all exit 1. On 39b373d
    `repair --execute -q` exited 0 while audit and the dry run exited 1."""
    with LoopbackProvider(kind="replicate", job_polls=10**6) as api:
        assert api.jobs is not None
        env = _pending_jobs(cli, rows, tmp_path, api)
        api.jobs.gone.update(api.jobs.jobs)
        for args in (["repair", "--execute", "-q"], ["audit"], ["repair"],
                     ["repair", "--execute", "-q"]):  # fmt: skip
            ran = cli(*args, "--allow-http", env=env)
            assert ran.code == 1, (args, ran.code, ran.stdout, ran.stderr)
        assert api.jobs.submitted == 3


# -- 15. Replicate's Prefer: wait -------------------------------------------------------------


def test_a_run_killed_while_replicate_holds_its_requests_is_never_paid_twice(
    cli, rows, tmp_path: Path, config: Path
):
    """Item 15: Replicate holds a `Prefer: wait` request up to 60 s before it answers with the
    prediction's id (here: until the test ends). A run killed during that wait must not leave
    predictions its rerun buys again: the id is asked for without waiting and recorded before
    any wait. On 39b373d the run asked with Prefer: wait, was killed before any id came back,
    and the rerun submitted the 3 predictions again (6 for 3 scenes)."""
    from .conftest import process_env

    rows.put("p1", incident_document(3))

    holds = threading.Event()
    holds.set()

    def replicate_waits(method: str, path: str, headers: dict[str, str]) -> object:
        waits = "wait" in headers.get("prefer", "") and holds.is_set()
        return "forward-hold" if waits else "forward"

    with (
        LoopbackProvider(kind="replicate", job_polls=10**6) as api,
        Interposer(api.origin, replicate_waits) as proxy,
    ):
        assert api.jobs is not None
        env = job_env(api, tmp_path, rows.url) | {"IMGSAVE_BASE_URL": proxy.origin + "/v1"}
        env |= {"IMGSAVE_LOG_DIR": process_env(rows.url, api, tmp_path / "host")["IMGSAVE_LOG_DIR"]}
        logs = Path(env["IMGSAVE_LOG_DIR"])
        proc = spawn(["generate", "p1", "-c", "3", "--allow-http"], env, tmp_path)
        killed_when(proc, lambda: count(logs, "image.requested") == 3 or proxy.holding == 3)
        assert api.jobs.submitted == 3
        api.jobs.polls = 0  # the predictions are done, and answers come at once from now on
        holds.clear()
        rerun = run(["generate", "p1", "--json", "--allow-http"], env, tmp_path)
        assert api.jobs.submitted == 3, "predictions bought again"
        assert rerun.code == 0, rerun.stdout + rerun.stderr
        assert rerun.json()["recovered"] == 3, rerun.stdout
    assert filled(rows, "p1") == [1, 1, 1]


# -- 16. cost that does not grow with history -------------------------------------------------


def test_generate_never_reads_the_log_folder_to_plan(
    cli, rows, tmp_path: Path, log_dir: Path, config: Path
):
    """Item 16: the log folder holds a file no reader could finish (a FIFO with no writer,
    named as a run's log): a `generate` that plans an image never opens it, so it finishes.
    On 39b373d every run that planned anything read the whole folder (here: for ever)."""
    import os

    rows.put("p1", incident_document(1))
    log_dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(log_dir / "20260101T000000Z-0a0a0a.jsonl")
    with LoopbackProvider() as api:
        from .conftest import process_env

        ran = run(["generate", "p1", "--json", "--allow-http"],
                  process_env(rows.url, api, log_dir), tmp_path, timeout=30)  # fmt: skip
    assert ran.code == 0, ran.stdout + ran.stderr
    assert ran.json()["saved"] == 1


def test_audit_reads_imgsaves_own_history_from_the_ledger_not_the_log_folder(
    cli, rows, config: Path
):
    """Item 16: after a run whose records all reached the ledger, audit reads no log file
    (`skipped.files` 0) and still finds the image present. On 39b373d it read the whole
    folder (1M lines: 21-28 s)."""
    rows.put("p1", incident_document(2))
    with LoopbackProvider() as api:
        assert (
            cli("generate", "p1", "--allow-http", env={"IMGSAVE_BASE_URL": api.base_url}).code == 0
        )
    audit = cli("audit", "p1", "--json")
    assert audit.code == 0, audit.stdout + audit.stderr
    assert audit.json()["skipped"]["files"] == 0, audit.json()["skipped"]
    assert audit.json()["summary"]["present"] == 2


PRE_LEDGER = (
    '{"v":1,"ts":"2026-11-25T10:00:00.123Z","run":"20261125T100000Z-0b0b0b",'
    '"event":"run.started","planned":{}}\n'
    '{"v":1,"ts":"2026-11-25T10:00:01.000Z","run":"20261125T100000Z-0b0b0b",'
    '"event":"image.generated","project":"p1","scene":1,"scene_id":"scene-1",'
    '"url":"https://images.example.com/paid-before-the-ledger.png"}\n'
)


def test_ledger_import_takes_the_history_from_before_the_ledger_once(
    cli, rows, log_dir: Path, config: Path
):
    """Item 16: a pre-ledger run's log names an image paid for and never saved. `imgsave ledger
    import` takes it into the ledger once (a second import takes nothing); the next generate
    saves it instead of buying the scene again."""
    rows.put("p1", incident_document(1))
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "20261125T100000Z-0b0b0b.jsonl").write_text(PRE_LEDGER)
    imported = cli("ledger", "import", "--json")
    assert imported.code == 0, imported.stdout + imported.stderr
    again = cli("ledger", "import", "--json")
    assert again.code == 0, again.stdout + again.stderr
    assert (imported.json()["unsaved"], again.json()["unsaved"]) == (1, 0), again.stdout
    with LoopbackProvider() as api:
        ran = cli(
            "generate", "p1", "--json", "--allow-http", env={"IMGSAVE_BASE_URL": api.base_url}
        )
        assert (ran.json()["recovered"], api.requests) == (1, 0), ran.stdout
    assert rows.urls("p1")[1] == ["https://images.example.com/paid-before-the-ledger.png"]


def test_prune_removes_old_saved_ledger_rows_and_never_unresolved_ones(
    cli, rows, db_url, tmp_path: Path, config: Path
):
    """Item 16: 31 days on, `prune --older-than 30d --execute` removes the ledger's saved rows
    and keeps the rows of a batch still running, however old; a dry run removes nothing."""
    rows.put("p1", incident_document(3))
    rows.put("p2", incident_document(2))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_env(api, tmp_path, db_url)
        assert cli("generate", "p1", "--json", "--allow-http", env=env).json()["saved"] == 3
        assert cli("generate", "p2", "--batch", "--json", env=env).json()["in_batches"] == 2

    def states() -> dict[str, int]:
        with psycopg.connect(db_url) as conn:
            return dict(conn.execute(
                "SELECT state, count(*) FROM imgsave_ledger GROUP BY state"
            ).fetchall())  # fmt: skip

    time_passes(db_url, 31 * 86400)
    assert states() == {"saved": 3, "requested": 2}
    dry = cli("prune", "--older-than", "30d", "--json")
    assert dry.code == 0 and states() == {"saved": 3, "requested": 2}, dry.stdout
    done = cli("prune", "--older-than", "30d", "--execute", "--json")
    assert done.code == 0, done.stdout + done.stderr
    assert states() == {"requested": 2}
