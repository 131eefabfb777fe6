"""Runs report where operators look: healthchecks.io pings (a real receiver on loopback) and
the Prometheus textfile collector's file (read back with prometheus_client's own parser)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgsave.adapters.monitor import ping as ping_module
from imgsave.adapters.monitor.metrics import RunOutcome, image_counts, write_metrics
from imgsave.adapters.monitor.ping import MAX_BODY_BYTES, Pinger, ping_body

from .test_generate_cli import provider_env

CHECK = "5bf6d1a2-0c3e-4e7b-9f5d-1a2b3c4d5e6f"


@dataclass
class Receiver:
    """A healthchecks.io stand-in: records every ping (path, body)."""

    url: str
    pings: list[tuple[str, bytes]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for path, _ in self.pings]

    def last_json(self) -> dict:
        return json.loads(self.pings[-1][1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            got.append((self.path, body))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/{CHECK}", got)
    finally:
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A loopback port nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{CHECK}"


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The pinger's clock and sleep on a virtual clock: waits cost no real time."""
    now = SimpleNamespace(t=1000.0, slept=0.0)

    def sleep(seconds: float) -> None:
        now.t += seconds
        now.slept += seconds

    monkeypatch.setattr(ping_module, "time", SimpleNamespace(monotonic=lambda: now.t, sleep=sleep))
    return now


def test_generate_audit_and_repair_ping_start_then_their_exit_code_with_the_json(
    cli, api, rows, incident_project, receiver
):
    env = provider_env(api)
    runs = [
        ("generate", incident_project, "-k", "2", "--json"),
        ("audit", "--json"),
        ("repair", "--execute", "--json"),
    ]
    for args in runs:
        before = len(receiver.pings)
        ran = cli(*args, "--ping", receiver.url, env=env)
        assert ran.code == 0, ran.stderr
        assert receiver.paths()[before:] == [f"/{CHECK}/start", f"/{CHECK}/0"], args
        assert receiver.last_json() == ran.json(), args
    assert receiver.pings[0][1] == b""


def test_the_ping_url_comes_from_the_environment_and_reports_a_failed_run(cli, api, rows, receiver):
    """IMGSAVE_PING_URL, and a run that could not work: `URL/3` with the error object."""
    ran = cli("generate", "nosuch", env=provider_env(api, IMGSAVE_PING_URL=receiver.url))
    assert ran.code == 3
    assert receiver.paths() == [f"/{CHECK}/start", f"/{CHECK}/3"]
    body = receiver.last_json()
    assert body["exit_code"] == 3 and "nosuch" in body["error"]


def test_a_broken_settings_file_still_pings_its_exit_code(cli, receiver, tmp_path):
    (tmp_path / "imgsave.toml").write_text("modle = 'x'\n")
    ran = cli("audit", "--json", "--ping", receiver.url)
    assert ran.code == 2
    assert receiver.paths() == [f"/{CHECK}/2"]
    assert receiver.last_json() == ran.json()


def test_the_ping_url_is_a_secret_nowhere_printed(cli, rows, tmp_path, virtual_time):
    url = dead_url() + "-SECRETPATH"
    (tmp_path / "imgsave.toml").write_text("[monitor]\nping_url = 'ftp://x/SECRETPATH'\n")
    ran = cli("audit", "--json")
    assert ran.code == 2 and "SECRETPATH" not in ran.stdout + ran.stderr
    assert "ping URL" in ran.json()["error"]
    shown = cli("config", "--json", "--ping", url).json()["settings"]["monitor.ping_url"]
    assert "SECRETPATH" not in json.dumps(shown) and shown["source"] == "flag --ping"


def test_a_dead_receiver_changes_no_exit_code_and_costs_at_most_ten_seconds(
    cli, api, rows, incident_project, virtual_time
):
    env = provider_env(api)
    started = time.monotonic()
    ran = cli("generate", incident_project, "--json", "--ping", dead_url(), env=env)
    assert ran.code == 0 and ran.json()["saved"] == 20
    assert "ping (start) could not be delivered" in ran.stderr
    assert "ping (0) could not be delivered" in ran.stderr
    assert CHECK not in ran.stderr
    assert 0 < virtual_time.slept <= 10
    assert time.monotonic() - started < 8  # the waits were virtual; the run itself is quick
    failed = cli("generate", "nosuch", "--ping", dead_url(), env=env)
    assert failed.code == 3


def test_a_receiver_that_never_answers_is_given_up_within_the_budget(virtual_time):
    """Every attempt times out (the transport spends the timeout it is given, on the virtual
    clock): start and end together stay within 10 s, and the end ping is still tried."""
    attempts: list[tuple[str, float]] = []

    def blackhole(request: httpx.Request) -> httpx.Response:
        timeout = request.extensions["timeout"]["connect"]
        attempts.append((request.url.path, timeout))
        virtual_time.t += timeout
        raise httpx.ConnectTimeout("timed out", request=request)

    warnings: list[str] = []
    pinger = Pinger(
        "https://hc-ping.example/" + CHECK,
        warn=warnings.append,
        transport=httpx.MockTransport(blackhole),
    )
    started = virtual_time.t
    assert pinger.start() is False
    assert pinger.finish(1, {"saved": 1}) is False
    assert virtual_time.t - started <= 10
    assert any(path.endswith("/start") for path, _ in attempts)
    assert any(path.endswith("/1") for path, _ in attempts)
    assert warnings == [
        "the ping (start) could not be delivered: timed out",
        "the ping (1) could not be delivered: timed out",
    ]


def test_a_server_error_is_retried_and_a_refusal_is_not(virtual_time):
    answers = iter([503, 503, 200])
    seen: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(next(answers))

    pinger = Pinger("https://hc.example/x", warn=pytest.fail, transport=httpx.MockTransport(flaky))
    assert pinger.finish(0, {}) is True and len(seen) == 3
    refused: list[str] = []
    gone = Pinger(
        "https://hc.example/x",
        warn=refused.append,
        transport=httpx.MockTransport(lambda r: httpx.Response(404)),
    )
    assert gone.start() is False and refused == ["the ping (start) was refused: HTTP 404"]


def test_a_long_summary_is_cut_to_valid_json_within_100_kb():
    summary = {"saved": 3, "failed": 1, "lost": [{"url": "https://x/" + "a" * 100}] * 2000}
    body = ping_body(summary)
    assert len(body) <= MAX_BODY_BYTES
    assert json.loads(body) == {"saved": 3, "failed": 1, "truncated": True}
    assert json.loads(ping_body({"saved": 1})) == {"saved": 1}


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


def test_the_metrics_file_parses_and_its_numbers_are_the_jsons(
    cli, api, rows, incident_project, tmp_path
):
    prom = tmp_path / "imgsave.prom"
    env = provider_env(api)
    generated = cli(
        "generate", incident_project, "-k", "2", "--json", "--metrics-file", str(prom), env=env
    )
    assert generated.code == 0
    out = generated.json()
    found = metrics(prom)
    gen = (("command", "generate"),)
    assert found[("imgsave_exit_code", gen)] == 0
    assert found[("imgsave_last_success_timestamp_seconds", gen)] == pytest.approx(
        time.time(), abs=60
    )
    assert (
        found[("imgsave_last_run_timestamp_seconds", gen)]
        == found[("imgsave_last_success_timestamp_seconds", gen)]
    )
    assert 0 < found[("imgsave_run_duration_seconds", gen)] < 60
    images = {
        dict(labels)["state"]: value
        for (name, labels), value in found.items()
        if name == "imgsave_images" and dict(labels)["command"] == "generate"
    }
    assert images == {state: out[state] for state in images}
    assert images["saved"] == 40 and images["failed"] == 0 and "requested" in images

    # Another command in the same file keeps generate's series; audit's counts are its summary.
    audited = cli("audit", "--json", "--metrics-file", str(prom), env=env)
    found = metrics(prom)
    assert found[("imgsave_exit_code", gen)] == 0
    aud = (("command", "audit"),)
    assert found[("imgsave_exit_code", aud)] == audited.code == 0
    summary = audited.json()["summary"]
    assert (
        found[("imgsave_images", (("command", "audit"), ("state", "present")))]
        == summary["present"]
    )
    assert found[("imgsave_images", (("command", "audit"), ("state", "lost")))] == summary["lost"]

    # A failed run: its exit code, and the last success kept from before.
    success = found[("imgsave_last_success_timestamp_seconds", gen)]
    failed = cli("generate", "nosuch", "--metrics-file", str(prom), env=env)
    assert failed.code == 3
    found = metrics(prom)
    assert found[("imgsave_exit_code", gen)] == 3
    assert found[("imgsave_last_success_timestamp_seconds", gen)] == success
    assert found[("imgsave_last_run_timestamp_seconds", gen)] >= success
    assert not [
        key for key in found if key[0] == "imgsave_images" and ("command", "generate") in key[1]
    ]
    assert not list(tmp_path.glob("imgsave.prom.*[0-9]"))  # no temporary file left


def test_a_metrics_file_that_cannot_be_written_is_a_warning_not_an_exit_code(cli, rows, tmp_path):
    ran = cli("audit", "--json", "--metrics-file", str(tmp_path / "missing-dir" / "x.prom"))
    assert ran.code == 0
    assert "metrics file" in ran.stderr and "cannot be written" in ran.stderr


def test_write_metrics_replaces_the_file_atomically(tmp_path, monkeypatch):
    path = tmp_path / "m.prom"
    write_metrics(path, RunOutcome("repair", 0, 100.0, 1.5, {"repaired": 2}))
    replaced: list[tuple[str, str]] = []
    real = __import__("os").rename
    monkeypatch.setattr("os.rename", lambda a, b: (replaced.append((a, b)), real(a, b)))
    write_metrics(path, RunOutcome("repair", 1, 200.0, 2.0, {"repaired": 0, "remaining": 1}))
    assert len(replaced) == 1 and replaced[0][1] == str(path) and replaced[0][0] != str(path)
    found = metrics(path)
    rep = (("command", "repair"),)
    assert found[("imgsave_last_success_timestamp_seconds", rep)] == 100.0
    assert found[("imgsave_last_run_timestamp_seconds", rep)] == 200.0
    assert found[("imgsave_exit_code", rep)] == 1


def test_image_counts_take_the_image_counts_and_leave_the_rest():
    summary = {
        "project": None,
        "saved": 3,
        "failed": 1,
        "transactions": 2,
        "possibly_billed_retries": 1,
        "skipped_scenes": 4,
        "stopped": False,
        "summary": {"lost": 2, "present": 5, "lines_skipped": 9},
        "lost": [{"url": "x"}],
    }
    assert image_counts(summary) == {"saved": 3, "failed": 1, "lost": 2, "present": 5}
