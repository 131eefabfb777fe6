"""Durable images: answers in base64 or as expiring URLs end up as bytes in the user's store,
saved as permanent URLs, against a real S3 API (moto) and a real loopback provider."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave._demo.sample_images import sample_png
from imgsave.commands import generate as gen
from imgsave.commands.generate import Wanted
from imgsave.core.settings import Settings, StoreSettings
from imgsave.operations.planning import Ask

from .storage import S3


def saved_urls(rows, project: str = "p1") -> list[str]:
    return [u for urls in rows.urls(project).values() for u in urls]


def served(urls: list[str]) -> Counter[str]:
    """sha256 of what each URL serves, checking each is a stored PNG under its content's hash."""
    digests: Counter[str] = Counter()
    with httpx.Client() as client:
        for url in urls:
            answer = client.get(url)
            assert answer.status_code == 200, url
            digest = hashlib.sha256(answer.content).hexdigest()
            assert url.endswith(f"/{digest}.png"), "the key is the content's own hash"
            digests[digest] += 1
    return digests


def content_type(url: str) -> str:
    return httpx.get(url).headers["content-type"]


def log_records(log_dir: Path) -> list[dict]:
    import json

    return [
        json.loads(line)
        for path in log_dir.glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]


async def test_b64_answers_land_in_s3_and_every_public_url_serves_the_exact_bytes(
    settings: Settings, rows, s3: S3
):
    rows.put("p1", incident_document(20))
    started = time.monotonic()
    with LoopbackProvider(answer="b64", image_bytes=1_000_000) as api:
        conf = replace(settings, base_url=api.base_url, store=s3.settings(), allow_http=True)
        result = await gen.run(conf, Wanted("p1", Ask(2)), concurrency=32)
        sent = list(api.sent)
    elapsed = time.monotonic() - started
    assert (result.requested, result.saved, result.failed) == (40, 40, 0), result.tally.errors
    urls = saved_urls(rows)
    assert len(urls) == len(set(urls)) == 40
    assert all(url.startswith(f"{s3.public_url}/scenes/p1/scene-") for url in urls)
    assert served(urls) == Counter(sent), "every image the provider sent is stored, once"
    assert content_type(urls[0]) == "image/png"
    assert result.tally.usage["output_tokens"] == 40 * 1056
    print(f"40 x 1 MB b64 images through S3 in {elapsed:.1f} s")


async def test_url_answers_are_downloaded_before_they_expire_and_dead_links_fail(
    settings: Settings, rows, s3: S3, log_dir: Path
):
    rows.put("p1", incident_document(4))
    with LoopbackProvider(answer="url", expire_after=5.0) as api:
        api.image_base = api.origin + "/"
        conf = replace(settings, base_url=api.base_url, store=s3.settings(), allow_http=True)
        result = await gen.run(conf, Wanted("p1", Ask(2)), concurrency=4)
        sent = list(api.sent)
    assert (result.saved, result.failed) == (8, 0), result.tally.errors
    urls = saved_urls(rows)
    assert all(u.startswith(s3.public_url + "/") for u in urls), "not the provider's URLs"
    assert served(urls) == Counter(sent)
    generated = [r for r in log_records(log_dir) if r["event"] == "image.generated"]
    assert all(r["source_url"].startswith(api.origin + "/img/") for r in generated)
    assert all(r["key"].startswith("scenes/p1/") and r["bytes"] == 256 for r in generated)

    rows.put("p2", incident_document(2))
    with LoopbackProvider(answer="url", expire_after=0.0) as dead:
        dead.image_base = dead.origin + "/"
        conf = replace(settings, base_url=dead.base_url, store=s3.settings(), allow_http=True)
        result = await gen.run(conf, Wanted("p2", Ask(1)), concurrency=2)
    assert (result.saved, result.failed) == (0, 2)
    assert all("the image URL answered 403" in e for e in result.tally.errors), result.tally.errors
    assert saved_urls(rows, "p2") == []


def test_a_wrong_bucket_or_endpoint_costs_nothing(cli, rows, s3: S3):
    rows.put("p1", incident_document(2))
    with LoopbackProvider(answer="b64") as api:
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_STORE": "s3://no-such-bucket/x",
            "IMGSAVE_PUBLIC_URL": "https://cdn.example",
            "AWS_ENDPOINT_URL": s3.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        }
        wrong_bucket = cli("generate", "p1", "--json", "--allow-http", env=env)
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
        dead_endpoint = cli("generate", "p1", "--json", "--allow-http", env=env)
        requests = api.requests
    assert "NoSuchBucket" in wrong_bucket.stderr or "404" in wrong_bucket.stderr
    assert "builder error" not in wrong_bucket.stderr + dead_endpoint.stderr
    for ran in (wrong_bucket, dead_endpoint):
        assert ran.code == 3, ran.stderr
        assert "does not take writes" in ran.stderr and "nothing was generated" in ran.stderr
        assert "testing-secret-key" not in ran.stderr + ran.stdout
    assert requests == 0, "a store that cannot be written is found before any image is bought"
    env.pop("AWS_ALLOW_HTTP")
    plain_http = cli("generate", "p1", "--json", "--allow-http", env=env)
    assert plain_http.code == 2 and "set [store] allow_http = true" in plain_http.stderr
    assert saved_urls(rows) == []


def test_b64_answers_without_a_store_are_spooled_and_stop_the_run(cli, rows, log_dir: Path):
    rows.put("p1", incident_document(20))
    with LoopbackProvider(answer="b64", latency=0.05) as api:
        ran = cli("generate", "p1", "-c", "4", "--json", env={"IMGSAVE_BASE_URL": api.base_url})
        requests, sent = api.requests, set(api.sent)
    assert ran.code == 3, ran.stderr
    assert "no store is configured" in ran.stderr and "IMGSAVE_STORE" in ran.stderr
    assert requests <= 4 + 1, "at most the requests already in flight are spent"
    spooled = {p.stem.split("-")[0] for p in (log_dir / "spool").glob("*.png")}
    assert spooled == sent, "every image paid for is kept"
    assert saved_urls(rows) == []
    audit = cli("audit", "p1", "--json")
    assert audit.code == 1 and audit.json()["summary"]["spooled"] == len(sent)
    told = cli("audit", "p1")
    assert f"; {len(sent)} paid images wait in the spool (repair uploads them)" in told.stdout
    whole_dir = cli("audit", "p1", "--log", str(log_dir), "--json")
    skipped = whole_dir.json()["summary"]["lines_skipped"]
    assert skipped == 0, "spooled images and their records are not log lines"
    assert ran.json()["spooled"] == len(sent)


async def test_svg_html_unknown_and_oversized_answers_are_refused_not_stored(
    settings: Settings, rows, s3: S3
):
    rows.put("p1", incident_document(2))
    with LoopbackProvider(answer="b64", faults=lambda n: "svg" if n == 1 else "ok") as api:
        conf = replace(settings, base_url=api.base_url, store=s3.settings(), allow_http=True)
        result = await gen.run(conf, Wanted("p1", Ask(1)), concurrency=1)
    assert (result.saved, result.failed) == (1, 1)
    assert any("not a png, jpeg, webp or gif (SVG)" in e for e in result.tally.errors)
    assert len(s3.keys()) == 1

    rows.put("p2", incident_document(1))
    small = replace(s3.settings(), max_image_bytes=100)
    with LoopbackProvider(answer="b64", image_bytes=4096) as api:
        conf = replace(settings, base_url=api.base_url, store=small, allow_http=True)
        result = await gen.run(conf, Wanted("p2", Ask(1)), concurrency=1)
    assert (result.saved, result.failed) == (0, 1)
    assert "4,096 bytes, more than the 100 allowed" in result.tally.errors[0]
    assert len(s3.keys()) == 1, "nothing more was stored"


def test_an_image_of_n_per_answer_is_each_kept_and_saved(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(1))
    root = tmp_path / "store"
    with LoopbackProvider(answer="b64", faults=lambda n: "two") as api:
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_STORE": root.as_uri(),
            "IMGSAVE_PUBLIC_URL": "https://cdn.example.test/img",
        }
        ran = cli("generate", "p1", "--json", env=env)
        sent = list(api.sent)
    assert ran.code == 0, ran.stderr
    out = ran.json()
    assert (out["requested"], out["received"], out["saved"]) == (1, 2, 2)
    assert out["usage"] == {"input_tokens": 12, "output_tokens": 2112, "total_tokens": 2124}
    assert out["possibly_billed_retries"] == 0
    files = sorted(p for p in root.rglob("*.png"))
    assert sorted(p.stem for p in files) == sorted(sent)
    assert all(f.relative_to(root).parts[:2] == ("p1", "scene-1") for f in files)
    assert sorted(saved_urls(rows)) == sorted(
        f"https://cdn.example.test/img/p1/scene-1/{digest}.png" for digest in sent
    )


def test_a_store_that_fails_mid_run_spools_and_repair_uploads_every_spooled_image(
    cli, rows, log_dir: Path, s3: S3
):
    import threading

    rows.put("p1", incident_document(10))
    s3.configure()

    def stop_after_some() -> None:
        deadline = time.monotonic() + 30
        while sum(map(len, rows.urls("p1").values())) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        s3.stop()

    with LoopbackProvider(answer="b64", latency=0.05) as api:
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            **s3.env(),
        }
        stopper = threading.Thread(target=stop_after_some)
        stopper.start()
        ran = cli("generate", "p1", "-c", "2", "--json", "--allow-http", env=env)
        stopper.join()
        sent = set(api.sent)
    out = ran.json()
    assert ran.code == 1, ran.stderr
    assert out["spooled"] > 0 and out["saved"] + out["spooled"] == 10 == len(sent)
    assert "the image is kept in" in ran.stderr
    audit = cli("audit", "p1", "--json")
    assert audit.code == 1 and audit.json()["summary"]["spooled"] == out["spooled"]

    s3.start_again()
    repaired = cli("repair", "--execute", "--json", "--allow-http", env=env)
    assert repaired.code == 0, repaired.stderr
    assert repaired.json()["uploaded"] == out["spooled"]
    urls = saved_urls(rows)
    assert len(urls) == 10
    assert set(served(urls)) == sent, "every paid image is in its scene, served by the store"
    assert not list((log_dir / "spool").glob("*.png")), "the spool is emptied"
    assert cli("audit", "p1", "--json").json()["summary"]["spooled"] == 0


def test_rehost_replaces_live_links_in_place_reports_dead_ones_and_a_second_run_is_a_no_op(
    cli, rows, s3: S3, log_dir: Path
):
    with LoopbackProvider() as host:
        live = [f"{host.origin}/img/{n:06d}.png" for n in (11, 12, 13)]
        dead = f"{host.origin}/img/000099.png"
        host.dead_paths.add("/img/000099.png")
        ours = f"{s3.public_url}/scenes/p1/scene-1/{'0' * 64}.png"
        document = incident_document(2)
        document["scenes"][0]["imageUrls"] = [live[0], ours, dead, live[1]]
        document["scenes"][1]["imageUrls"] = [live[2]]
        rows.put("p1", document)
        before = rows.doc("p1")
        env = {
            **s3.env(),
        }
        s3.configure()
        plan = cli("rehost", "p1", "--json", "--allow-http", env=env)
        assert plan.code == 1 and len(plan.json()["plan"]) == 4 and rows.doc("p1") == before
        ran = cli("rehost", "p1", "--execute", "--json", "--allow-http", env=env)
        again = cli("rehost", "p1", "--execute", "--json", "--allow-http", env=env)
        expected = {url: host.png(int(url[-10:-4])) for url in live}
    out = ran.json()
    assert ran.code == 1, ran.stderr
    assert (out["rehosted"], [e["url"] for e in out["expired"]], out["remaining"]) == (3, [dead], 1)
    after = rows.doc("p1")
    first, second = after["scenes"][0]["imageUrls"], after["scenes"][1]["imageUrls"]
    assert first[1:3] == [ours, dead], "the store's own URL and the dead link stay in place"
    for old, new in ((live[0], first[0]), (live[1], first[3]), (live[2], second[0])):
        assert new.startswith(s3.public_url + "/scenes/p1/")
        assert httpx.get(new).content == expected[old]
    for scene_before, scene_after in zip(before["scenes"], after["scenes"], strict=True):
        assert {k: v for k, v in scene_before.items() if k != "imageUrls"} == {
            k: v for k, v in scene_after.items() if k != "imageUrls"
        }
    assert again.json()["rehosted"] == 0 and rows.doc("p1") == after, "a second run changes nothing"
    rehosted = [r for r in log_records(log_dir) if r["event"] == "image.rehosted"]
    assert sorted(r["replaces"][0] for r in rehosted) == sorted(live)
    audit = cli("audit", "p1", "--json")
    assert audit.json()["summary"]["lost"] == 0, "a rehosted link is superseded, not lost"


def test_audit_with_a_store_finds_an_object_put_and_never_logged_and_repair_saves_it(
    cli, rows, s3: S3, log_dir: Path
):
    import asyncio

    from imgsave.adapters.storage.object_store import Store
    from imgsave.core.documents import SceneRef
    from imgsave.core.image_bytes import checked, object_key
    from imgsave.core.settings import Settings as AppSettings

    from .test_seams import _evidence

    document = incident_document(2)
    document["scenes"][0]["imageUrls"] = ["https://cdn.example.com/earlier.png"]
    rows.put("p1", document)
    # The logs remember further back than the crash (else an object may be a deliberate
    # deletion whose record was pruned).
    _evidence(log_dir, url="https://cdn.example.com/earlier.png")
    store = Store.from_settings(AppSettings(store=s3.settings(), allow_http=True))
    assert store is not None
    # The state a crash leaves between the put and the log line: an object, nothing else.
    crashed = checked(sample_png(b" crashed after the put"), max_bytes=1000)
    gone = checked(sample_png(b" its scene was deleted"), max_bytes=1000)
    for ref, image in ((SceneRef(2, "scene-2"), crashed), (SceneRef(9, "scene-9"), gone)):
        asyncio.run(store.put(object_key(store.prefix, "p1", ref, image), image))
    env = {
        **s3.env(),
    }
    s3.configure()
    audit = cli("audit", "--log", str(log_dir), "p1", "--json", "--allow-http", env=env)
    assert audit.code == 1, audit.stderr
    lost, orphaned = audit.json()["lost"], audit.json()["orphaned"]
    assert [(f["scene"], f["url"].rsplit("/", 1)[1]) for f in lost] == [
        (2, f"{crashed.sha256}.png")
    ]
    assert [f["url"].rsplit("/", 1)[1] for f in orphaned] == [f"{gone.sha256}.png"]
    repaired = cli(
        "repair", "--log", str(log_dir), "p1", "--execute", "--json", "--allow-http", env=env
    )
    assert repaired.code == 0 and repaired.json()["repaired"] == 1, repaired.stderr
    assert rows.urls("p1")[2] == [lost[0]["url"]]
    assert (
        cli("audit", "--log", str(log_dir), "p1", "--json", "--allow-http", env=env).json()[
            "summary"
        ]["lost"]
        == 0
    )


def test_no_write_relies_on_conditional_puts_which_supabase_ignores(settings: Settings, rows):
    """An S3 endpoint that ignores If-None-Match / If-Match (as Supabase Storage's does) and
    records what it was sent: imgsave's probe and puts work and never ask for a condition."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str, dict[str, str]]] = []

    class Lenient(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _ok(self, status: int = 200) -> None:
            seen.append((self.command, self.path, dict(self.headers)))
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            self.send_header("ETag", '"etag"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_PUT(self) -> None:
            self._ok()

        def do_DELETE(self) -> None:
            self._ok(204)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Lenient)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    rows.put("p1", incident_document(2))
    store = StoreSettings(
        url="s3://lenient/scenes",
        public_url="https://cdn.example.test",
        endpoint=endpoint,
        region="us-east-1",
        path_style=True,
        access_key_id="k",
        secret_access_key="lenient-secret-key",
        allow_http=True,
    )
    try:
        with LoopbackProvider(answer="b64") as api:
            conf = replace(settings, base_url=api.base_url, store=store, allow_http=True)
            result = asyncio.run(gen.run(conf, Wanted("p1", Ask(2)), concurrency=2))
    finally:
        server.shutdown()
        server.server_close()
    assert (result.saved, result.failed) == (4, 0), result.tally.errors
    puts = [(path, headers) for method, path, headers in seen if method == "PUT"]
    assert len(puts) == 5, "the probe and four images"
    for path, headers in puts:
        lowered = {k.lower() for k in headers}
        assert not lowered & {"if-none-match", "if-match"}, (path, headers)
    images = [{k.lower(): v for k, v in h.items()} for p, h in puts if p.endswith(".png")]
    assert all(h["content-type"] == "image/png" for h in images), images
    assert all("immutable" in h["cache-control"] for h in images)


def test_rehost_regenerate_puts_a_new_image_where_each_dead_link_was(cli, rows, s3: S3):
    with LoopbackProvider(answer="b64") as api:
        dead = [f"{api.origin}/img/00009{n}.png" for n in (1, 2)]
        api.dead_paths.update({"/img/000091.png", "/img/000092.png"})
        document = incident_document(2)
        document["scenes"][0]["imageUrls"] = [dead[0], "https://keep.test/a.png"]
        document["scenes"][1]["imageUrls"] = [dead[1]]
        rows.put("p1", document)
        s3.configure()
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            **s3.env(),
        }
        ran = cli("rehost", "p1", "--execute", "--regenerate", "--json", "--allow-http", env=env)
        sent = list(api.sent)
    out = ran.json()
    assert (out["regenerated"], len(out["expired"]), out["remaining"]) == (2, 2, 1), ran.stderr
    assert len(out["errors"]) == 1 and "keep.test" in out["errors"][0], "unreachable, not dead"
    first, second = rows.urls("p1")[1], rows.urls("p1")[2]
    assert first[1] == "https://keep.test/a.png", "a link that could not be fetched stays"
    new = [first[0], second[0]]
    assert all(u.startswith(s3.public_url + "/") for u in new), new
    assert set(served(new)) == set(sent) and len(sent) == 2, "one new image per dead link"


def test_a_store_that_refuses_the_keys_costs_nothing_and_says_so(cli, rows):
    """What S3 answers a wrong access key (403 InvalidAccessKeyId), from a server that checks
    nothing else: the probe fails, no image is bought, the secret is not printed."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    refusal = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
        b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message>"
        b"</Error>"
    )

    class Refusing(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(refusal)))
            self.end_headers()
            self.wfile.write(refusal)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows.put("p1", incident_document(2))
    Path("imgsave.toml").write_text(
        Path("imgsave.toml").read_text()
        + f'\n[store]\nendpoint = "http://127.0.0.1:{server.server_address[1]}"\n'
        'region = "us-east-1"\npath_style = true\naccess_key_id = "AKIAWRONG"\n'
        'secret_access_key = "wrong-secret-key-123"\nallow_http = true\n'
    )
    try:
        with LoopbackProvider(answer="b64") as api:
            env = {
                "IMGSAVE_BASE_URL": api.base_url,
                "IMGSAVE_STORE": "s3://images/scenes",
                "IMGSAVE_PUBLIC_URL": "https://cdn.example.test",
            }
            ran = cli("generate", "p1", "--json", "--allow-http", env=env)
            requests = api.requests
    finally:
        server.shutdown()
        server.server_close()
    assert ran.code == 3 and requests == 0, ran.stderr
    assert "does not take writes" in ran.stderr and "InvalidAccessKeyId" in ran.stderr
    assert "wrong-secret-key-123" not in ran.stderr + ran.stdout


def test_rehost_usage_and_unknown_projects(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(1))
    store = {"IMGSAVE_STORE": (tmp_path / "s").as_uri(), "IMGSAVE_PUBLIC_URL": "https://cdn.test"}
    neither = cli("rehost", env=store)
    two_modes = cli("rehost", "p1", "--dry-run", "--execute", env=store)
    assert two_modes.code == 2 and "exclude each other" in two_modes.stderr
    both = cli("rehost", "p1", "--all", env=store)
    no_store = cli("rehost", "p1")
    missing = cli("rehost", "nope", "--json", env=store)
    assert (neither.code, both.code, no_store.code, missing.code) == (2, 2, 2, 3)
    assert "name the projects to rehost, or give --all" in neither.stderr + both.stderr
    assert "rehost copies images into your store: set IMGSAVE_STORE" in no_store.stderr
    assert missing.json() == {"error": "project nope not found", "exit_code": 3}
    clean = cli("rehost", "--all", "--json", env=store)
    assert clean.code == 0 and clean.json()["plan"] == [], "nothing foreign to rehost"


async def test_a_url_answer_that_cannot_be_downloaded_yet_is_kept_as_the_providers_url(
    settings: Settings, rows, s3: S3
):
    """Never dropped: saved as the provider's link (with a warning), and rehost copies it into
    the store once the image host answers again."""
    from imgsave.commands.rehost import run_rehost

    rows.put("p1", incident_document(2))
    with LoopbackProvider(answer="url") as api:
        api.image_base = api.origin + "/"
        api.images_unavailable = True
        conf = replace(settings, base_url=api.base_url, store=s3.settings(), allow_http=True)
        result = await gen.run(conf, Wanted("p1", Ask(1)), concurrency=2)
        kept = saved_urls(rows)
        api.images_unavailable = False
        rehosted = await run_rehost(conf, ["p1"], all_projects=False, execute=True)
        sent = list(api.sent)
    assert (result.saved, result.failed, result.tally.provisional, result.exit_code) == (2, 0, 2, 1)
    assert sorted(kept) == sorted(api.served), "the provider's own links, not nothing"
    assert all(
        "the image URL answered 503" in e and "imgsave rehost" in e for e in result.tally.errors
    )
    assert rehosted.rehosted == 2 and rehosted.remaining == 0
    assert served(saved_urls(rows)) == Counter(sent), "now in the store, the same bytes"


def test_rehost_regenerate_keeps_every_image_an_answer_holds(cli, rows, s3: S3):
    faults = {1: "garbage"}  # an unreadable answer first: a retry that may have been billed
    with LoopbackProvider(answer="b64", faults=lambda n: faults.get(n, "two")) as api:
        dead = f"{api.origin}/img/000091.png"
        api.dead_paths.add("/img/000091.png")
        document = incident_document(1)
        document["scenes"][0]["imageUrls"] = [dead]
        rows.put("p1", document)
        s3.configure()
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            **s3.env(),
        }
        ran = cli("rehost", "p1", "--execute", "--regenerate", "--json", "--allow-http", env=env)
        sent = list(api.sent)
    out = ran.json()
    assert ran.code == 0, ran.stderr
    assert (out["regenerated"], out["added"], out["remaining"]) == (1, 1, 0)
    assert out["possibly_billed_retries"] == 1 and out["usage"]["total_tokens"] == 2124
    urls = rows.urls("p1")[1]
    assert len(urls) == 2 and set(served(urls)) == set(sent), "both paid images are in the scene"


def test_rehost_regenerate_stops_at_a_refusal_with_one_line(cli, rows, tmp_path: Path):
    with LoopbackProvider(answer="b64", faults=lambda n: "401") as api:
        dead = [f"{api.origin}/img/00009{n}.png" for n in (1, 2)]
        api.dead_paths.update({"/img/000091.png", "/img/000092.png"})
        document = incident_document(1)
        document["scenes"][0]["imageUrls"] = dead
        rows.put("p1", document)
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_API_KEY": "sk-refused-0123456789",
            "IMGSAVE_STORE": (tmp_path / "store").as_uri(),
            "IMGSAVE_PUBLIC_URL": "https://cdn.test",
        }
        ran = cli(
            "rehost", "p1", "--execute", "--regenerate", "-c", "1", "--json", "--allow-http",
            env=env,
        )  # fmt: skip
        requests = api.requests
    assert ran.code == 3 and requests == 1, "no request starts after the refusal"
    assert "refused the request with 401" in ran.json()["stopped"]
    assert ran.stderr.count("imgsave: error:") == 1 and "sk-refused" not in ran.stderr + ran.stdout
    assert rows.urls("p1")[1] == dead, "the document is as it was"
