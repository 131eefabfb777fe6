"""Where the features meet (issue: nothing paid twice, nothing adopted that is not ours): each
test here failed on the main it was written against, against the real PostgreSQL, the
loopback provider and moto."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave._demo.sample_images import sample_png

from .storage import S3


def log_records(log_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(log_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]


def test_base64_in_every_form_a_provider_sends_is_decoded_and_saved_once(cli, rows, s3: S3):
    rows.put("p1", incident_document(3))
    s3.configure()
    forms = {1: "mime", 2: "nopad", 3: "ok"}
    with LoopbackProvider(answer="b64", faults=lambda n: forms.get(n, "ok")) as api:
        env = {"IMGSAVE_BASE_URL": api.base_url, **s3.env()}
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        requests = api.requests
    out = ran.json()
    assert ran.code == 0, ran.stderr
    assert (out["saved"], out["possibly_billed_retries"], requests) == (3, 0, 3)


def test_base64_no_decoder_reads_is_spooled_as_sent_not_retried_and_named_by_audit(
    cli, rows, s3: S3, log_dir: Path
):
    rows.put("p1", incident_document(2))
    s3.configure()
    with LoopbackProvider(answer="b64", faults=lambda n: "notb64" if n == 1 else "ok") as api:
        env = {"IMGSAVE_BASE_URL": api.base_url, **s3.env()}
        ran = cli("generate", "p1", "-c", "1", "--json", "--allow-http", env=env)
        requests = api.requests
    out = ran.json()
    assert ran.code == 1
    assert (out["saved"], out["spooled"], out["possibly_billed_retries"]) == (1, 1, 0)
    assert requests == 2, "an answer that was paid for is never asked for again"
    (kept,) = (log_dir / "spool").glob("*.b64")
    assert kept.read_bytes() == b"not*base64*at#all"
    audit = cli("audit", "p1", "--json", "--allow-http", env=env)
    assert audit.code == 1 and audit.json()["summary"]["spooled"] == 1


def test_the_same_bytes_for_five_scenes_are_five_spool_records_and_all_come_back(
    cli, rows, s3: S3, log_dir: Path
):
    rows.put("p1", incident_document(5))
    s3.configure()

    def placeholder_after_the_store_fails(n: int) -> str:
        if n == 1:
            s3.stop()  # after the probe: every put of this run fails
        return "placeholder"

    with LoopbackProvider(answer="b64", faults=placeholder_after_the_store_fails) as api:
        env = {"IMGSAVE_BASE_URL": api.base_url, **s3.env()}
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert ran.json()["spooled"] == 5, ran.stderr
        assert len(list((log_dir / "spool").glob("*.png"))) == 5
        s3.start_again()
        repaired = cli("repair", "--execute", "--json", "--allow-http", env=env)
    assert repaired.code == 0, repaired.stderr
    assert repaired.json()["uploaded"] == 5
    assert [len(urls) for urls in rows.urls("p1").values()] == [1, 1, 1, 1, 1]
    audit = cli("audit", "p1", "--json", "--allow-http", env=env)
    assert audit.code == 0, audit.stdout


def _put_object(s3: S3, key: str, data: bytes) -> None:
    import httpx

    # Anyone who can write to the bucket: a plain S3 PUT, not imgsave's store.
    from botocore.session import Session  # moto's dependency

    client = Session().create_client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret-key",
    )
    client.put_object(Bucket=s3.bucket, Key=key, Body=data)
    assert httpx.get(f"{s3.public_url}/{key}").status_code == 200


def _evidence(log_dir: Path, *, ts: str = "2026-01-01T00:00:00Z", url: str) -> None:
    """A log record older than anything the test stores: the logs remember back to `ts`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "v": 1, "ts": ts, "run": "r0", "event": "image.generated", "project": "p1",
        "scene": 1, "scene_id": None, "url": url,
    }  # fmt: skip
    with (log_dir / "r0.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")


def test_only_objects_provably_imgsaves_images_can_be_lost_the_rest_is_unreferenced(
    cli, rows, s3: S3, log_dir: Path
):
    import hashlib

    png = b"\x89PNG\r\n\x1a\n" + b"a real image" * 10
    digest = hashlib.sha256(png).hexdigest()
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
    held = "https://cdn.example.com/held.png"
    rows.put("p1", {"scenes": [{"prompt": "a", "imageUrls": [held]}, {"prompt": "b"}]})
    _evidence(log_dir, url=held)
    s3.configure()
    planted = {
        "scenes/p1/2/evil.html": b"<script>alert(1)</script>",
        "scenes/p1/2/x.svg": svg,
        "scenes/p1/2/notes.txt": b"hello",
        "scenes/p1/2/index.html": b"<html></html>",
        f"scenes/p1/2/{hashlib.sha256(svg).hexdigest()}.png": svg,  # named right, not a png
        f"scenes/p1/2/{'0' * 64}.png": png,  # a png, but not the bytes its name says
        f"scenes/p1/2/{digest}.png": png,  # the one image imgsave could have put
    }
    for key, data in planted.items():
        _put_object(s3, key, data)
    env = s3.env()
    audit = cli("audit", "--log", str(log_dir), "p1", "--json", "--allow-http", env=env)
    out = audit.json()
    assert [f["url"].rsplit("/", 1)[1] for f in out["lost"]] == [f"{digest}.png"]
    assert out["summary"]["unreferenced"] == 6
    repaired = cli(
        "repair", "--log", str(log_dir), "p1", "--execute", "--json", "--allow-http", env=env
    )
    assert repaired.code == 0, repaired.stderr
    assert rows.urls("p1")[2] == [f"{s3.public_url}/scenes/p1/2/{digest}.png"]


def test_the_store_audit_never_outlives_the_evidence(cli, rows, s3: S3, log_dir: Path):
    import hashlib
    from datetime import UTC, datetime, timedelta

    png = b"\x89PNG\r\n\x1a\n" + b"deleted by the app on purpose"
    held = "https://cdn.example.com/held.png"
    rows.put("p1", {"scenes": [{"prompt": "a", "imageUrls": [held]}, {"prompt": "b"}]})
    _put_object(s3, f"scenes/p1/2/{hashlib.sha256(png).hexdigest()}.png", png)
    # The logs that knew of the deletion were pruned: the oldest one left is newer than the
    # object.
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    _evidence(log_dir, ts=later, url=held)
    s3.configure()
    audit = cli("audit", "p1", "--json", "--allow-http", env=s3.env())
    assert audit.code == 0, audit.stdout
    out = audit.json()
    assert out["lost"] == [] and out["summary"]["unreferenced"] == 1
    repaired = cli("repair", "p1", "--execute", "--json", "--allow-http", env=s3.env())
    assert repaired.code == 0 and "imageUrls" not in rows.doc("p1")["scenes"][1]


def test_scene_id_2_and_the_idless_scene_at_index_2_never_share_a_folder(
    cli, rows, s3: S3, log_dir: Path
):
    import asyncio
    import hashlib

    from imgsave.adapters.storage.object_store import Store
    from imgsave.core.documents import SceneRef
    from imgsave.core.image_bytes import checked, object_key
    from imgsave.core.settings import Settings as AppSettings

    held = "https://cdn.example.com/held.png"
    doc = {"scenes": [{"id": "2", "prompt": "a", "imageUrls": [held]}, {"prompt": "b"}]}
    rows.put("p1", doc)
    _evidence(log_dir, url=held)
    store = Store.from_settings(AppSettings(store=s3.settings(), allow_http=True))
    assert store is not None
    image = checked(sample_png(b" for the id-less scene 2"), max_bytes=1000)
    key = object_key(store.prefix, "p1", SceneRef(2, None), image)
    other = object_key(store.prefix, "p1", SceneRef(1, "2"), image)
    assert key != other and key.split("/")[2] == "2"
    asyncio.run(store.put(key, image))
    s3.configure()
    out = cli("audit", "--log", str(log_dir), "p1", "--json", "--allow-http", env=s3.env()).json()
    assert [(f["scene"], f["scene_id"]) for f in out["lost"]] == [(2, None)]
    assert hashlib.sha256(image.data).hexdigest() in out["lost"][0]["url"]


def test_keys_fit_every_store_however_long_the_project_key_or_scene_id(
    cli, rows, s3: S3, log_dir: Path
):
    project = "🎬" * 60  # 240 bytes, 720 once escaped
    scene_id = "🌅" * 60
    rows.put(project, {"scenes": [{"id": scene_id, "prompt": "dawn"}, {"prompt": "dusk"}]})
    s3.configure()
    with LoopbackProvider(answer="b64") as api:
        env = {"IMGSAVE_BASE_URL": api.base_url, **s3.env()}
        ran = cli("generate", project, "--json", "--allow-http", env=env)
    assert ran.code == 0, ran.stderr
    keys = s3.keys()
    assert len(keys) == 2 and all(len(k.encode()) <= 1024 for k in keys)
    generated = [r for r in log_records(log_dir) if r["event"] == "image.generated"]
    assert {r["project"] for r in generated} == {project}, "the log maps the hashed folder back"
    assert any(r["scene_id"] == scene_id for r in generated)
    assert cli("audit", project, "--json", "--allow-http", env=env).code == 0


def test_a_killed_repair_rerun_counts_each_spooled_image_once(cli, rows, s3: S3, log_dir: Path):
    import asyncio

    from imgsave.adapters.storage.object_store import Store
    from imgsave.core.image_bytes import checked, object_key
    from imgsave.core.settings import Settings as AppSettings

    rows.put("p1", incident_document(6))
    s3.configure()

    def store_down(n: int) -> str:
        if n == 1:
            s3.stop()
        return "ok"

    with LoopbackProvider(answer="b64", faults=store_down) as api:
        env = {"IMGSAVE_BASE_URL": api.base_url, **s3.env()}
        assert cli("generate", "p1", "--json", "--allow-http", env=env).json()["spooled"] == 6
    s3.start_again()
    # What a repair killed half-way leaves: 4 spooled images stored and logged as generated,
    # not yet saved, still in the spool.
    store = Store.from_settings(AppSettings(store=s3.settings(), allow_http=True))
    assert store is not None

    async def killed_repair() -> None:
        """A repair killed between recording its uploads and saving them: 4 spooled images
        stored, their ledger rows `stored` with their URLs, not yet in their scenes."""
        from dataclasses import replace

        from imgsave.adapters.imageapi.kinds import FACTS
        from imgsave.core.ledger import Kept, Move, State
        from imgsave.core.settings import load_settings
        from imgsave.operations.session import opened

        conf = replace(
            load_settings({"database_url": rows.url}, environ=env, kinds=FACTS), log_dir=log_dir,
            allow_http=True,
        )  # fmt: skip
        async with opened(conf) as s:
            spooled = [p for p in await s.ledger.unresolved() if p.kept.spool][:4]
            for p in spooled:
                data = await asyncio.to_thread(Path(p.kept.spool or "").read_bytes)
                image = checked(data, max_bytes=10**6)
                key = object_key(store.prefix, p.project, p.ref, image)
                await store.put(key, image)
                kept = Kept(url=store.public_url(key), object_key=key, sha256=image.sha256)
                await s.ledger.move([Move(p.id, State.STORED, kept)])

    asyncio.run(killed_repair())
    repaired = cli("repair", "--execute", "--json", "--allow-http", env=env)
    out = repaired.json()
    assert repaired.code == 0, repaired.stderr
    assert (out["repaired"], out["uploaded"], out["remaining"]) == (4, 2, 0)
    assert [len(urls) for urls in rows.urls("p1").values()] == [1] * 6
    assert cli("audit", "p1", "--json", "--allow-http", env=env).code == 0


@pytest.mark.many_connections
def test_a_uuid_typed_in_upper_case_and_generate_all_on_another_host_pay_once(
    db_url, tmp_path: Path
):
    from .conftest import process_env, spawn

    key = "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE projects")
        conn.execute(
            "CREATE TABLE projects (id uuid PRIMARY KEY, generated_output jsonb, "
            "updated_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO projects VALUES (%s, %s::jsonb, now())",
            (key, json.dumps(incident_document(20))),
        )
    store = tmp_path / "store"
    (tmp_path / "imgsave.toml").write_text(
        "[provider]\ntimeout = 10\nbackoff_initial = 0.01\n[database]\nlock_timeout = 1\n"
    )
    with (
        LoopbackProvider(answer="b64", latency=0.05, jitter=0.05) as a,
        LoopbackProvider(answer="b64", latency=0.05, jitter=0.05) as b,
    ):
        runs = [
            spawn(
                ["generate", *args, "-c", "4", "--json"],
                {
                    **process_env(db_url, api, tmp_path / host),
                    "IMGSAVE_STORE": f"file://{store}",
                    "IMGSAVE_PUBLIC_URL": "https://images.example.com",
                },
                tmp_path,
            )
            for args, api, host in (([key.upper()], a, "a"), (["--all"], b, "b"))
        ]
        outs = [run.communicate(timeout=120) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outs
        paid = a.requests + b.requests
    assert paid == 20, "each scene paid for once across both hosts"
    folders = [p.name for p in store.iterdir() if not p.name.startswith(".")]
    assert folders == [key], "one store folder, the key's own spelling"
    assert json.loads(outs[0][0])["project"] == key


def test_repair_regenerate_with_another_systems_log_buys_each_lost_image_once(
    cli, rows, tmp_path: Path
):
    document = incident_document(2)
    document["scenes"][1]["imageUrls"] = ["https://cdn.example.com/fine.png"]
    rows.put("p1", document)
    with LoopbackProvider() as api:
        dead = f"{api.origin}/img/999999.png"
        api.dead_paths.add("/img/999999.png")
        app_log = tmp_path / "app.log"
        app_log.write_text(f"[Scene 1] Saved image {dead}\n")
        pattern = r"\[Scene (?P<scene>\d+)\] Saved image (?P<url>\S+)"
        args = [
            "repair", "--execute", "--regenerate", "--check-urls", "--json", "--allow-http",
            "--log", str(app_log), "--pattern", pattern, "--project", "p1",
        ]  # fmt: skip
        env = {"IMGSAVE_BASE_URL": api.base_url}
        first = cli(*args, env=env)
        assert first.code == 0 and first.json()["regenerated"] == 1, first.stderr
        for _ in range(2):
            again = cli(*args, env=env)
            assert again.code == 0 and again.json()["regenerated"] == 0, again.stdout
        paid = api.requests
    assert paid == 1, "imgsave's own log says the expired image was already replaced"
    assert len(rows.urls("p1")[1]) == 1


def _killed_while_the_row_is_held(
    db_url: str, tmp_path: Path, env: dict[str, str], args: list[str], event: str, count: int
) -> None:
    """Run `imgsave ARGS` in a process while the row is held, so no write of it can commit;
    SIGKILL it once `count` `event` records are in its log (fsynced): the crash between the
    log line and the commit."""
    import signal

    from .conftest import spawn, wait_for

    log_dir = Path(env["IMGSAVE_LOG_DIR"])
    with psycopg.connect(db_url) as blocker:
        blocker.execute("SELECT 1 FROM projects WHERE id = 'p1' FOR UPDATE")
        run = spawn(args, env, tmp_path)
        wait_for(
            lambda: sum(r["event"] == event for r in log_records(log_dir)) == count, timeout=60
        )
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        blocker.rollback()


@pytest.mark.many_connections
@pytest.mark.parametrize("host", ["same host", "another host with a store"])
def test_a_rerun_after_a_kill_before_the_saves_pays_nothing_again(
    db_url, rows, cli, tmp_path: Path, log_dir: Path, host: str
):
    from .conftest import process_env, spawn

    rows.put("p1", incident_document(5))
    (tmp_path / "imgsave.toml").write_text(
        "[provider]\ntimeout = 10\nbackoff_initial = 0.01\n"
        "[database]\nlock_timeout = 1\nmax_attempts = 100\n"
    )
    store = {
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
    }
    with LoopbackProvider(answer="b64" if "store" in host else "url") as api:
        env = process_env(db_url, api, log_dir)
        if "store" in host:
            env |= store
        _killed_while_the_row_is_held(
            db_url, tmp_path, env, ["generate", "p1", "-c", "5"], "image.generated", 5
        )
        paid = api.requests
        assert all(not urls for urls in rows.urls("p1").values()), "nothing was saved"
        rerun_env = {"IMGSAVE_BASE_URL": api.base_url}
        if "store" in host:
            # Another host: its own log folder, which knows nothing of the dead run.
            rerun_env |= store | {"IMGSAVE_LOG_DIR": str(tmp_path / "other-host")}
        # The rerun is a process of its own too, as it would be from cron.
        rerun = spawn(["generate", "p1", "--json"], env | rerun_env, tmp_path)
        out, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err
        assert (json.loads(out)["recovered"], json.loads(out)["requested"]) == (5, 0)
        assert api.requests == paid, "no image was paid for twice"
    assert [len(urls) for urls in rows.urls("p1").values()] == [1] * 5
    repaired = cli("repair", "--execute", "--json", env=rerun_env)
    assert repaired.code == 0 and repaired.json()["repaired"] == 0, repaired.stdout
    assert [len(urls) for urls in rows.urls("p1").values()] == [1] * 5, "not filled past -k 1"


@pytest.mark.parametrize(
    ("env", "config", "says"),
    [
        ({"IMGSAVE_STORE": "s3://AKIAEXAMPLEKEY:wJalrXUtnFEMIK7MDENG@bucket/p"}, "", "store URL"),
        (
            {
                "IMGSAVE_STORE": "s3://bucket/p",
                "IMGSAVE_PUBLIC_URL": "https://cdn:wJalrXUtnFEMIK7MDENG@images.example.com",
            },
            "",
            "public URL",
        ),
        (
            {"IMGSAVE_STORE": "s3://bucket/p", "IMGSAVE_PUBLIC_URL": "https://i.example.com"},
            '[store]\nendpoint = "https://k:wJalrXUtnFEMIK7MDENG@s3.example.com"\n',
            "[store] endpoint",
        ),
    ],
)
def test_credentials_in_a_store_url_are_refused_and_never_printed(
    cli, rows, tmp_path: Path, env: dict[str, str], config: str, says: str
):
    rows.put("p1", incident_document(1))
    with (tmp_path / "imgsave.toml").open("a") as handle:
        handle.write(config)
    for command in (["generate", "p1", "--json"], ["audit", "p1", "--json"]):
        ran = cli(*command, env={"IMGSAVE_BASE_URL": "https://api.example.com/v1", **env})
        said = ran.stderr + ran.stdout
        assert ran.code == 2 and says in said, said
        assert "AWS_SECRET_ACCESS_KEY" in said or "serve the objects" in said
        assert "wJalrXUtnFEMIK7MDENG" not in said


def test_a_database_password_with_an_unencoded_question_mark_is_named_never_shown(cli):
    url = "postgresql://app:Qp4?Rt/8Vn3@127.0.0.1:5432/db"
    ran = cli("audit", "--json", env={"IMGSAVE_DATABASE_URL": url})
    assert ran.code == 2, ran.stderr
    assert "percent-encoded" in ran.stderr + ran.stdout
    for fragment in ("Qp4", "Rt/8Vn3", "8Vn3"):
        assert fragment not in ran.stderr + ran.stdout


async def test_downloads_refuse_private_addresses_on_every_hop():
    """A public-looking image host (127.0.0.2 plays the internet here) redirects to an internal
    service (127.0.0.1) and to the cloud metadata address: neither is ever contacted."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from imgsave.adapters.imageapi.downloads import DownloadFailed, Fetcher
    from imgsave.adapters.imageapi.netguard import PublicOnly, is_public

    internal_hits: list[str] = []

    class Internal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            internal_hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"\x89PNG\r\n\x1a\n")

        def log_message(self, *args: object) -> None:
            pass

    internal = ThreadingHTTPServer(("127.0.0.1", 0), Internal)
    target = {"/a": f"http://127.0.0.1:{internal.server_address[1]}/secret",
              "/b": "http://169.254.169.254/latest/meta-data/"}  # fmt: skip

    class Redirector(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    outside = ThreadingHTTPServer(("127.0.0.2", 0), Redirector)
    servers = [internal, outside]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        guard = PublicOnly(public=lambda a: a == "127.0.0.2" or is_public(a))
        async with Fetcher(
            max_bytes=1000, timeout=5, allow_http=True, allow_private_network=True, transport=guard
        ) as fetcher:
            for path, refused in (("/a", "127.0.0.1"), ("/b", "169.254.169.254")):
                with pytest.raises(DownloadFailed, match=f"resolves to {refused}"):
                    await fetcher.download(f"http://127.0.0.2:{outside.server_address[1]}{path}")
        async with Fetcher(max_bytes=1000, timeout=5, allow_http=True) as fetcher:
            with pytest.raises(DownloadFailed, match="private, loopback or link-local"):
                await fetcher.download(f"http://127.0.0.1:{internal.server_address[1]}/direct")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert internal_hits == [], "the internal service was never reached"
    assert not is_public("::ffff:169.254.169.254") and not is_public("10.0.0.1")
    assert is_public("93.184.215.14")


def test_a_url_answer_on_a_private_address_is_not_downloaded_by_default(cli, rows, s3: S3):
    rows.put("p1", incident_document(1))
    s3.configure()
    with LoopbackProvider(image_base="") as api:
        api.image_base = api.origin + "/"
        env = {"IMGSAVE_BASE_URL": api.base_url, **s3.env(), "IMGSAVE_ALLOW_PRIVATE_NETWORK": "0"}
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        served = list(api.served)
    assert ran.code == 1 and "private, loopback or link-local" in ran.stderr, ran.stderr
    stored = s3.keys()
    assert served and not [k for k in stored if not k.startswith("scenes/.imgsave")]
    assert rows.urls("p1") == {1: []}, "an internal URL is not saved as a link either"


def test_an_oversized_b64_answer_is_cut_off_while_read_and_not_bought_again(
    cli, rows, s3: S3, tmp_path: Path
):
    rows.put("p1", incident_document(2))
    s3.configure()
    with (tmp_path / "imgsave.toml").open("a") as handle:
        handle.write("max_image_bytes = 300000\n")  # into [store], which configure() opened
    with LoopbackProvider(answer="b64", image_bytes=3_000_000) as api:
        env = {"IMGSAVE_BASE_URL": api.base_url, **s3.env()}
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        requests = api.requests
    assert ran.code == 1 and ran.json()["failed"] == 2, ran.stderr
    assert "not read further" in ran.stderr
    assert requests == 2, "each answer was paid for once and never asked for again"


def test_scenes_held_by_a_run_that_stopped_are_a_finding_with_when_they_free_up(cli, rows, db_url):
    rows.put("p1", incident_document(3))
    rows.put("warm", incident_document(1))
    with LoopbackProvider() as api:
        env = {"IMGSAVE_BASE_URL": api.base_url}
        assert cli("generate", "warm", env=env).code == 0  # the claims table now exists
        with psycopg.connect(db_url, autocommit=True) as conn:
            # Scene 1: a live run on another host (extended a moment ago); scenes 2 and 3: a run
            # killed on another host 8 minutes ago (600 s expiry, 120 s left, not extended).
            conn.execute(
                "INSERT INTO imgsave_claims (project, scene, run, host, process, claimed_at, "
                "expires_at) VALUES "
                "('p1', 'id:scene-1', 'live', 'web-1', 'web-1|x|1|1', now(), "
                "now() + interval '590 s'), "
                "('p1', 'id:scene-2', 'dead', 'web-2', 'web-2|x|2|2', now() - interval '8 min', "
                "now() + interval '120 s'), "
                "('p1', 'id:scene-3', 'dead', 'web-2', 'web-2|x|2|2', now() - interval '8 min', "
                "now() + interval '120 s')"
            )
        ran = cli("generate", "p1", "--json", env=env)
    out = ran.json()
    assert ran.code == 1, ran.stderr
    assert (out["held_scenes"], out["stalled_scenes"], out["requested"]) == ([1, 2, 3], [2, 3], 0)
    assert "run dead on web-2, which stopped extending its claims" in ran.stderr
    # 120 s were left when the claims were written, a moment before the run read them.
    freed = re.search(r"they free up at 20\S+Z \(in (\d+)s\), when a rerun takes them", ran.stderr)
    assert freed and 60 <= int(freed[1]) <= 120, ran.stderr
    live = re.search(r"run live on web-1 \(for (\d+)s more unless extended\)", ran.stderr)
    assert live and 500 <= int(live[1]) <= 590, ran.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "p1"],
        ["audit", "p1"],
        ["repair", "p1", "--execute"],
        ["rehost", "p1", "--execute"],
        ["prune", "--older-than", "30d", "--execute"],
        ["journal", "prune", "--older-than", "30d"],
        ["sql"],
    ],
)
def test_every_command_takes_q_and_says_nothing_when_all_is_well(
    cli, rows, command, tmp_path: Path
):
    rows.put("p1", {"scenes": [{"prompt": "a", "imageUrls": ["https://cdn.example.com/a.png"]}]})
    env = {
        "IMGSAVE_BASE_URL": "https://api.example.com/v1",
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://cdn.example.com",
    }
    ran = cli(*command, "-q", env=env)
    if command[0] in ("journal", "sql"):
        assert ran.code in (0, 3), ran.stderr  # no journal installed: a clear refusal
        return
    assert (ran.code, ran.stdout) == (0, ""), ran.stderr


def test_a_dry_run_prune_says_would_remove(cli, log_dir: Path):
    import os

    log_dir.mkdir(parents=True)
    old = log_dir / "r-old.jsonl"
    old.write_text("{}\n")
    os.utime(old, (0, 0))
    dry = cli("prune", "--older-than", "30d", "--json").json()
    assert dry["would_remove"] == 1 and "removed" not in dry
    done = cli("prune", "--older-than", "30d", "--execute", "--json").json()
    assert done["removed"] == 1 and "would_remove" not in done


def test_an_http_answer_refused_is_not_said_to_be_in_the_log(cli, rows, log_dir: Path):
    rows.put("p1", incident_document(1))
    with LoopbackProvider(image_base="http://images.example.com/") as api:
        ran = cli("generate", "p1", env={"IMGSAVE_BASE_URL": api.base_url})
    assert ran.code == 1
    assert "1 failed" in ran.stdout and "in the log" not in ran.stdout + ran.stderr
    assert not [r for r in log_records(log_dir) if r.get("url")], "no URL was logged"


@pytest.mark.parametrize("answer", ["url", "b64"])
def test_the_loopback_provider_as_a_user_runs_it_exercises_a_store(
    cli, rows, tmp_path: Path, answer: str
):
    """The README's "try it on your own database" walkthrough, with its own command."""
    import subprocess
    import sys

    rows.put("p1", incident_document(3))
    server = subprocess.Popen(
        [sys.executable, "-m", "imgsave._demo.loopback", "--answer", answer, "--latency", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base = server.stdout.readline().strip().removeprefix("IMGSAVE_BASE_URL=")
        env = {
            "IMGSAVE_BASE_URL": base,
            "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
            "IMGSAVE_PUBLIC_URL": "https://images.example.com",
            "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1",
        }
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
    finally:
        server.terminate()
        server.communicate(timeout=10)  # closes its pipe too
    assert ran.code == 0 and ran.json()["saved"] == 3, ran.stderr
    stored = sorted((tmp_path / "store").rglob("*.png"))
    assert len(stored) == 3 and all(p.read_bytes().startswith(b"\x89PNG") for p in stored)


def _links_saved(cli, rows, api: LoopbackProvider, scenes: int) -> dict[str, str]:
    """A project whose scenes hold the provider's links, as a run without a store saves them
    (logged as generated); returns the env a rehost with a store needs."""
    rows.put("p1", incident_document(scenes))
    api.image_base = api.origin + "/"
    ran = cli("generate", "p1", "--allow-http", env={"IMGSAVE_BASE_URL": api.base_url})
    assert ran.code == 0, ran.stderr
    return {"IMGSAVE_BASE_URL": api.base_url}


def _store_env(tmp_path: Path) -> dict[str, str]:
    return {
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
    }


@pytest.mark.many_connections
def test_a_rehost_killed_before_its_commit_leaves_one_image_per_place(
    cli, rows, db_url, tmp_path: Path, log_dir: Path
):

    from .conftest import process_env

    with LoopbackProvider() as api:
        _links_saved(cli, rows, api, 4)
        links = rows.urls("p1")
        env = process_env(db_url, api, log_dir) | _store_env(tmp_path)
        _killed_while_the_row_is_held(
            db_url,
            tmp_path,
            env,
            ["rehost", "p1", "--execute", "--allow-http"],
            "image.rehosted",
            4,
        )
        assert rows.urls("p1") == links, "the replacement never committed"
        audit = cli("audit", "p1", "--json", env=_store_env(tmp_path))
        assert audit.code == 0 and audit.json()["lost"] == [], audit.stdout
        # The copies are in the ledger, `stored` in place of their links: the next run that
        # settles puts each where its link is (never beside it).
        repaired = cli("repair", "p1", "--execute", "--json", env=_store_env(tmp_path))
        assert repaired.code == 0 and repaired.json()["repaired"] == 4, repaired.stdout
        again = cli("rehost", "p1", "--execute", "--allow-http", "--json", env=env)
        assert again.code == 0 and again.json()["rehosted"] == 0, again.stderr
    urls = rows.urls("p1")
    assert all(
        len(u) == 1 and u[0].startswith("https://images.example.com/") for u in urls.values()
    )
    assert cli("audit", "p1", "--json", env=_store_env(tmp_path)).code == 0


def test_a_rehost_reverted_by_a_naive_writer_is_not_doubled_by_repair(cli, rows, tmp_path: Path):
    with LoopbackProvider() as api:
        env = _links_saved(cli, rows, api, 4) | _store_env(tmp_path)
        stale_copy = rows.doc("p1")  # what the app's racing route read before the rehost
        assert cli("rehost", "p1", "--execute", "--allow-http", env=env).code == 0
        rows.put("p1", stale_copy)  # ... and wrote back afterwards: the links are back
        audit = cli("audit", "p1", "--json", "--allow-http", env=env)
        assert audit.code == 0 and audit.json()["lost"] == [], audit.stdout
        repaired = cli("repair", "p1", "--execute", "--json", "--allow-http", env=env)
        assert repaired.json()["repaired"] == 0
        assert all(len(u) == 1 for u in rows.urls("p1").values()), "never both in a scene"
        assert cli("rehost", "p1", "--execute", "--allow-http", env=env).code == 0
    assert all(
        len(u) == 1 and u[0].startswith("https://images.example.com/")
        for u in rows.urls("p1").values()
    )


def test_a_link_held_twice_is_rehosted_into_one_copy_and_converges(cli, rows, tmp_path: Path):
    with LoopbackProvider() as api:
        env = _links_saved(cli, rows, api, 1) | _store_env(tmp_path)
        (link,) = rows.urls("p1")[1]
        doc = rows.doc("p1")
        doc["scenes"][0]["imageUrls"] = [link, link]
        rows.put("p1", doc)
        first = cli("rehost", "p1", "--execute", "--allow-http", "--json", env=env)
        assert first.code == 0 and first.json()["remaining"] == 0, first.stdout
        second = cli("rehost", "p1", "--execute", "--allow-http", "--json", env=env)
        assert second.code == 0 and second.json()["rehosted"] == 0
    (copy,) = rows.urls("p1")[1]
    assert copy.startswith("https://images.example.com/")


def test_a_url_the_scene_already_held_is_not_recovered_after_the_app_removes_it(
    cli, rows, log_dir: Path
):
    """A provider answered a URL the scene already held (a duplicate): it is in its scene, so
    when the app later removes it on purpose, no rerun puts it back."""
    with LoopbackProvider(faults=lambda n: "repeat") as api:
        # The app itself put the URL there; the provider answers it again.
        document = incident_document(1)
        document["scenes"][0]["imageUrls"] = [f"{api.image_base}img/same.png"]
        rows.put("p1", document)
        env = {"IMGSAVE_BASE_URL": api.base_url}
        assert cli("generate", "p1", "-k", "2", "--allow-http", env=env).code == 1  # duplicate
        doc = rows.doc("p1")
        doc["scenes"][0]["imageUrls"] = []  # the app removes it
        rows.put("p1", doc)
        rerun = cli("generate", "p1", "-k", "1", "--json", "--allow-http", env=env)
    assert rerun.json()["recovered"] == 0
