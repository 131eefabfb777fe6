"""Ctrl-C lets in-flight work finish and save; the demo tells its story on the embedded server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from imgsave._demo.loopback import LoopbackProvider

from .conftest import imgsave_command, process_env, spawn, wait_for


def test_sigint_stops_new_requests_saves_what_returned_and_exits_130(
    db_url, rows, incident_project, log_dir, tmp_path
):
    with LoopbackProvider(latency=0.5) as api:
        env = process_env(db_url, api, log_dir)
        proc = spawn(["generate", "p1", "-k", "3", "-c", "4", "--json"], env, tmp_path)
        # Interrupt only a run that is really under way; never signal at a deadline anyway.
        wait_for(lambda: api.requests >= 6, timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        requests = api.requests
    assert proc.returncode == 130, err
    result = json.loads(out)
    assert result["interrupted"] is True
    assert 6 <= result["saved"] < 60
    assert requests < 60, "no new requests after Ctrl-C"
    records = [
        json.loads(line) for p in log_dir.glob("*.jsonl") for line in p.read_text().splitlines()
    ]
    generated = {r["url"] for r in records if r["event"] == "image.generated"}
    saved = {r["url"] for r in records if r["event"] == "image.saved"}
    stored = {u for urls in rows.urls("p1").values() for u in urls}
    assert generated == saved == stored
    assert len(stored) == result["saved"] == requests
    assert records[-1]["event"] == "run.finished"


def test_demo_shows_the_loss_and_imgsave_losing_none(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSAVE_")}
    env.update(
        {
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_STATE_HOME": str(tmp_path / "st"),
            "COLUMNS": "120",
        }
    )
    env.pop("DATABASE_URL", None)
    # Issue 27 item 8: `-q` tells no story, and a demo after another counts only its own images.
    quiet = subprocess.run(
        [*imgsave_command(), "demo", "-q"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (quiet.returncode, quiet.stdout) == (0, ""), quiet.stderr
    ran = subprocess.run(
        [*imgsave_command(), "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    assert "images lost, silently" in ran.stdout
    last = ran.stdout.strip().splitlines()[-1]
    assert last.startswith("demo: the route kept ")
    assert last.endswith("40 after repair; imgsave saved 40 of 40 (every image saved).")
    assert "a second audit finds 0 lost" in ran.stdout
    assert "answers in base64" in ran.stdout and "the store 40 images" in ran.stdout
    kept = int(last.split("kept ")[1].split(" ")[0])
    assert kept < 40
    # Its logs and store are its own: nothing under the real log folder, which audits read.
    real = tmp_path / "st" / "imgsave"
    assert not real.exists() or not any(real.rglob("*")), sorted(real.rglob("*"))
    assert (tmp_path / "st" / "imgsave-demo" / "store").is_dir()


def test_a_second_ctrl_c_reports_the_requests_it_abandoned(
    db_url, rows, incident_project, log_dir, tmp_path
):
    with LoopbackProvider(latency=30) as api:
        env = process_env(db_url, api, log_dir)
        proc = spawn(["generate", "p1", "-c", "4", "--json"], env, tmp_path)
        wait_for(lambda: api.requests_started >= 4, timeout=30)
        proc.send_signal(signal.SIGINT)
        # Two signals sent back to back reach Python as one: the second must come after the
        # first was handled (the answers take 30 s, so 1 s is no race).
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    result = json.loads(out)
    assert result["abandoned"] == 4, out
    assert result["not_requested"] == 16 and result["failed"] == 0


async def test_a_stopped_run_shows_images_not_requested_apart_from_failures(
    settings, rows, incident_project, log_dir
):
    from dataclasses import replace

    from imgsave.commands import generate as gen
    from imgsave.commands.generate import Wanted
    from imgsave.operations.planning import Ask
    from imgsave.operations.stop import StopSignal
    from imgsave.terminal.generate_view import GenerateResult
    from imgsave.terminal.progress import ProgressReporter

    stop = StopSignal()

    class StoppedAtStart(ProgressReporter):
        def start(self, total: int, description: str) -> None:
            stop.request()  # Ctrl-C once the plan is made, before any request
            super().start(total, description)

    reporter = StoppedAtStart()
    with LoopbackProvider() as api:
        conf = replace(settings, base_url=api.base_url, allow_http=True)
        result = await gen.run(
            conf, Wanted("p1", Ask(1)), concurrency=4, stop=stop, reporter=reporter
        )
        assert isinstance(result, GenerateResult)
    assert (result.tally.not_requested, reporter.not_requested, reporter.failed) == (20, 20, 0)
    assert "20 not requested" in reporter._note() and "0 failed" in reporter._note()
