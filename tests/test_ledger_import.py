"""`imgsave ledger import`: a host's history from before the ledger taken in once, so that
settling (any host) and audit know what only that log folder knew."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider


def record(event: str, run: str, scene: int, **fields: object) -> dict[str, object]:
    return {"v": 1, "ts": "2026-11-01T10:00:00.000Z", "run": run, "event": event,
            "project": "p1", "scene": scene, "scene_id": f"scene-{scene}", **fields}  # fmt: skip


def write_log(log_dir: Path, name: str, records: list[dict[str, object]]) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.jsonl").open("w") as out:
        for item in records:
            out.write(json.dumps(item) + "\n")


def ledger(db_url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT scene_index, mode, state, url, job_id FROM imgsave_ledger ORDER BY scene_index"
        ).fetchall()


def test_a_hosts_history_is_taken_in_once_and_settled_by_the_next_run(
    cli, rows, db_url, log_dir: Path
):
    rows.put("p1", incident_document(4))
    saved, unsaved = "https://img.test/saved.png", "https://img.test/unsaved.png"
    write_log(log_dir, "20261101T100000Z-aaaaaa", [
        record("image.generated", "r1", 1, url=saved),
        record("image.saved", "r1", 1, url=saved),
        record("image.generated", "r1", 2, url=unsaved),
        # Another database's record (after the ledger, in another database) is not taken.
        record("image.generated", "r1", 3, url="https://img.test/other.png", db="elsewhere"),
    ])  # fmt: skip
    first = cli("ledger", "import", "--json")
    assert first.code == 0, first.stderr
    out = first.json()
    assert (out["saved"], out["unsaved"], out["skipped"]) == (1, 1, 1), out
    assert ledger(db_url) == [
        (1, "sync", "saved", saved, None),
        (2, "sync", "stored", unsaved, None),
    ]
    again = cli("ledger", "import", "--json")
    assert again.json()["saved"] + again.json()["unsaved"] == 0, "nothing taken twice"
    assert len(ledger(db_url)) == 2
    # The next run on any host saves what was paid for and never saved, and buys only the rest.
    with LoopbackProvider() as api:
        ran = cli(
            "generate",
            "p1",
            "--json",
            env={"IMGSAVE_BASE_URL": api.base_url, "IMGSAVE_LOG_DIR": str(log_dir.parent / "b")},
        )
        assert ran.code == 0, ran.stderr
        assert (ran.json()["recovered"], ran.json()["requested"], api.requests) == (1, 3, 3)
    assert rows.urls("p1")[2] == [unsaved]
    assert rows.urls("p1")[1] != [saved], "a saved image the app removed is never put back"


def test_a_pending_job_of_before_the_ledger_is_polled_not_bought_again(
    cli, rows, db_url, log_dir: Path, tmp_path: Path
):
    rows.put("p1", incident_document(1))
    with LoopbackProvider(kind="replicate", job_polls=1) as api:
        assert api.jobs is not None
        # A job submitted by a run before the ledger, which died before it ended.
        answer = api.jobs.submit("/v1/models/o/n/predictions", {"input": {"prompt": "p"}}, 0,
                                 "ok", False)  # fmt: skip
        job = json.loads(answer[1])
        write_log(log_dir, "20261101T100000Z-bbbbbb", [
            record("image.requested", "r2", 1, job=job["id"], kind="replicate",
                   poll=job["urls"]["get"]),
        ])  # fmt: skip
        imported = cli("ledger", "import", "--json")
        assert imported.json()["jobs_pending"] == 1, imported.stdout
        env = {"IMGSAVE_PROVIDER": "replicate", "IMGSAVE_BASE_URL": api.base_url,
               "IMGSAVE_MODEL": "o/n", "IMGSAVE_API_KEY": "r8-key-0123456789"}  # fmt: skip
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert ran.code == 0, ran.stdout + ran.stderr
        assert (ran.json()["jobs_resumed"], ran.json()["requested"]) == (1, 0)
        assert api.jobs.submitted == 1, "the job was polled, not bought again"
    assert len(rows.urls("p1")[1]) == 1
