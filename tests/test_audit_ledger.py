"""audit of imgsave's own history: the ledger, never the log folder (issue 25 item 16).

What any host's runs bought is read from the database; of this host's folder only the logs of
runs that may not have put everything into the ledger yet (their markers), and logs from before
the ledger only when named (`--log`) or imported."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave._demo.incident import APP_LOG_PATTERN, incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.operations import lost_images
from imgsave.operations.ledger_sightings import by_project

from .conftest import spawn
from .test_audit_repair import own_line

PRE_LEDGER_URL = "https://images.example.com/paid-before-the-ledger.png"


def _bought(cli, rows, project: str, scenes: int) -> dict[int, list[str]]:
    rows.put(project, incident_document(scenes))
    with LoopbackProvider() as api:
        ran = cli("generate", project, "--allow-http", env={"IMGSAVE_BASE_URL": api.base_url})
    assert ran.code == 0, ran.stdout + ran.stderr
    return rows.urls(project)


def _drop(rows, project: str, index: int) -> None:
    """The app's own naive write: scene `index` loses its images."""
    doc = rows.doc(project)
    doc["scenes"][index - 1]["imageUrls"] = []
    rows.put(project, doc)


def _identity(db_url: str) -> str:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT value FROM imgsave_meta WHERE key = 'database_id'").fetchone()
    assert row is not None
    return str(row[0])


def test_another_host_with_an_empty_log_folder_finds_and_restores_what_the_app_removed(
    cli, rows, log_dir: Path, tmp_path: Path
):
    urls = _bought(cli, rows, "p1", 3)
    _drop(rows, "p1", 2)
    shutil.rmtree(log_dir)  # the host that bought them is gone, its folder with it
    elsewhere = {"IMGSAVE_LOG_DIR": str(tmp_path / "another-host")}
    audit = cli("audit", "--json", env=elsewhere)
    assert audit.code == 1, audit.stdout + audit.stderr
    out = audit.json()
    assert [f["url"] for f in out["lost"]] == urls[2]
    assert (out["summary"]["present"], out["skipped"]["files"], out["notes"]) == (2, 0, [])
    repaired = cli("repair", "--execute", "--json", env=elsewhere)
    assert repaired.code == 0 and repaired.json()["repaired"] == 1, repaired.stdout
    assert rows.urls("p1") == urls


def test_audit_never_opens_the_folders_logs(db_url: str, rows, log_dir: Path, tmp_path: Path):
    """A pipe where a run log would be: reading it would wait forever (a process of its own,
    with a deadline)."""
    rows.put("p1", incident_document(1))
    log_dir.mkdir(parents=True)
    os.mkfifo(log_dir / "20261201T000000Z-ffffff.jsonl")
    env = {"IMGSAVE_DATABASE_URL": db_url, "IMGSAVE_LOG_DIR": str(log_dir)}
    proc = spawn(["audit", "p1", "--json"], env, tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["skipped"]["files"] == 0


def test_logs_from_before_the_ledger_are_named_until_imported_and_read_when_named(
    cli, rows, log_dir: Path
):
    rows.put("p1", incident_document(1))
    log_dir.mkdir(parents=True)
    (log_dir / "20261125T100000Z-0b0b0b.jsonl").write_text(
        own_line("20261125T100000Z-0b0b0b", "2026-11-25T10:00:01Z", "p1", 1, PRE_LEDGER_URL) + "\n"
    )
    first = cli("audit", "--json")
    assert first.code == 0 and first.json()["lost"] == [], first.stdout
    note = (
        f"1 run log(s) in {log_dir} are from before the ledger, and audit reads the ledger: "
        "`imgsave ledger import` takes what they hold into it, once (or name the folder with "
        "--log)"
    )
    assert (first.json()["notes"], first.stderr) == ([note], "")
    human = cli("audit")
    assert " ".join(human.stderr.split()) == (
        f"warning: {note} warning: nothing was read: this database has no ledger yet, and no "
        "--log was given"
    )
    named = cli("audit", "--log", str(log_dir), "--json")
    assert [f["url"] for f in named.json()["lost"]] == [PRE_LEDGER_URL]
    assert cli("ledger", "import").code == 0
    after = cli("audit", "--json")
    assert (after.code, after.stderr, after.json()["notes"]) == (1, "", [])
    assert [f["url"] for f in after.json()["lost"]] == [PRE_LEDGER_URL]


def test_a_run_not_yet_settled_is_read_from_its_log_and_no_other_log_is(
    cli, rows, log_dir: Path, db_url: str
):
    """A run whose ledger writes failed after it paid left a marker: its log is the only record
    of the image, and audit reads it (its own database's records only); a log without a marker
    is the ledger's already and is not read."""
    rows.put("p1", incident_document(2))
    assert cli("sql", "--apply").code == 0
    db_id = _identity(db_url)
    unsettled, settled = "20261201T000000Z-aaaaaa", "20261201T000000Z-bbbbbb"

    def record(run: str, scene: int, url: str, db: str) -> str:
        line = json.loads(own_line(run, "2026-12-01T00:00:01Z", "p1", scene, url))
        return json.dumps({**line, "db": db}) + "\n"

    log_dir.mkdir(parents=True)
    (log_dir / f"{unsettled}.jsonl").write_text(
        record(unsettled, 1, "https://img.test/only-in-the-log.png", db_id)
        + record(unsettled, 2, "https://img.test/staging.png", "another-database")
    )
    (log_dir / f"{settled}.jsonl").write_text(
        record(settled, 2, "https://img.test/settled-long-ago.png", db_id)
    )
    marker = log_dir / "unsettled" / db_id / unsettled
    marker.parent.mkdir(parents=True)
    marker.write_text("elsewhere|pid:[1]|1|1\n")
    out = cli("audit", "--json").json()
    assert [f["url"] for f in out["lost"]] == ["https://img.test/only-in-the-log.png"]
    assert out["skipped"]["files"] == 1


def test_since_bounds_the_ledger_as_it_bounds_a_log(cli, rows, db_url: str):
    urls = _bought(cli, rows, "p1", 2)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE imgsave_ledger SET requested_at = now() - interval '10 days' "
            "WHERE scene_index = 1"
        )
    _drop(rows, "p1", 1)
    _drop(rows, "p1", 2)
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = cli("audit", "--since", since, "--json").json()
    assert [f["url"] for f in recent["lost"]] == urls[2]
    every = cli("audit", "--json").json()
    assert [f["url"] for f in every["lost"]] == urls[1] + urls[2]


@pytest.mark.parametrize("bulk", [True, False], ids=["worker path", "line by line"])
def test_the_ledger_and_an_app_log_are_one_history(
    cli, rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bulk: bool
):
    """The app's own run after imgsave's replaced scene 1's images: imgsave's image there is
    stale, not lost; scene 2's, absent and never replaced, is lost. Either way of reading."""
    monkeypatch.setattr(lost_images, "BULK", bulk)
    urls = _bought(cli, rows, "p1", 2)
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    app_log = tmp_path / "app.log"
    app_log.write_text(f"{later} [p1] [Scene 1] Saved image to database: https://img.test/app\n")
    doc = rows.doc("p1")
    doc["scenes"][0]["imageUrls"] = ["https://img.test/app"]
    doc["scenes"][1]["imageUrls"] = []
    rows.put("p1", doc)
    out = cli("audit", "--log", str(app_log), "--pattern", APP_LOG_PATTERN, "--json").json()
    assert [f["url"] for f in out["stale"]] == urls[1]
    assert [f["url"] for f in out["lost"]] == urls[2]
    assert out["summary"]["present"] == 1


def test_an_orphaned_purchase_is_orphaned_whatever_scene_holds_its_index_now(
    cli, rows, db_url: str
):
    urls = _bought(cli, rows, "p1", 2)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE imgsave_ledger SET state = 'orphaned' WHERE scene_index = 2")
    _drop(rows, "p1", 2)
    out = cli("audit", "--json").json()
    assert ([f["url"] for f in out["orphaned"]], out["lost"]) == (urls[2], [])
    assert cli("repair", "--execute", "--json").json()["repaired"] == 0
    assert rows.urls("p1")[2] == []


# -- the ledger a project after another, in parts (pure) ----------------------------------------


class _Rows:
    def __init__(self, batches: list[list[tuple[Any, ...]]]) -> None:
        self._batches = batches

    async def sightings(
        self, projects: Sequence[str] | None, since: float | None, *, alone: bool = False
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        assert alone
        for batch in self._batches:
            yield batch


_counts = st.lists(st.integers(min_value=1, max_value=30), min_size=0, max_size=25)


@settings(max_examples=150, deadline=None)
@given(counts=_counts, batch=st.integers(1, 40), size=st.integers(1, 50))
def test_parts_hold_whole_projects_in_order_and_are_cut_at_the_first_boundary_past_their_size(
    tmp_path_factory: pytest.TempPathFactory, counts: list[int], batch: int, size: int
):
    from imgsave.core.log_history import load_tuples

    flat = [(f"p{n:03d}", i) for n, count in enumerate(counts) for i in range(count)]
    batches = [flat[i : i + batch] for i in range(0, len(flat), batch)]
    folder = tmp_path_factory.mktemp("parts")

    async def collect() -> list[list[tuple[Any, ...]]]:
        parts = []
        async for files in by_project(_Rows(batches), None, None, folder, size):  # type: ignore[arg-type]
            (path,) = files
            parts.append([tuple(t) for chunk in load_tuples(path) for t in chunk])
        return parts

    parts = asyncio.run(collect())
    assert [row for part in parts for row in part] == flat
    owners = [{row[0] for row in part} for part in parts]
    assert all(not (a & b) for n, a in enumerate(owners) for b in owners[n + 1 :])
    for part in parts[:-1]:
        last = part[-1][0]
        before_last = [row for row in part if row[0] != last]
        assert len(part) >= size and len(before_last) < size


def test_a_repair_that_read_nothing_says_so_before_and_after_it_made_the_ledger(cli, rows):
    rows.put("p1", incident_document(1))
    plan = cli("repair")
    assert plan.code == 0, plan.stderr
    assert " ".join(plan.stderr.split()) == (
        "warning: nothing was read: this database has no ledger yet, and no --log was given"
    )
    # An executing repair makes the ledger before it audits: still nothing read, and said.
    done = cli("repair", "--execute")
    assert done.code == 0, done.stderr
    assert " ".join(done.stderr.split()) == (
        "warning: nothing was read: this database's ledger is empty, and no --log was given"
    )
