"""The journal (`imgsave sql --journal`): the database's own record of every URL written and
removed, and `audit --journal`, which finds what a racing route lost with no log at all."""

from __future__ import annotations

import asyncio
import json
import zlib

import psycopg
import pytest

from imgsave._demo.incident import incident_document, naive_save
from imgsave._demo.writes import DemoDatabase
from imgsave.adapters.postgres.install import Options, install
from imgsave.core.documents import SceneRef, Shape
from imgsave.core.journal_verdicts import JournalLedger, JournalRow, overlay
from imgsave.core.log_history import SceneHistory

from .test_route_sql import run, table

SHAPE = Shape()


@pytest.fixture
def journal(db_url):
    run(db_url, install(table(), SHAPE, Options(journal=True)))


def journal_rows(db_url: str) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT project, scene_index, scene_id, url, change, scene_replaced "
            "FROM imgsave_journal ORDER BY id"
        ).fetchall()


def lost_urls(report: dict) -> set[str]:
    return {f["url"] for f in report["lost"]}


@pytest.mark.many_connections
async def test_audit_journal_finds_exactly_what_the_racing_route_lost(
    journal, settings, rows, cli, db_url
):
    """The incident's route at concurrency 32, no log read at all. Ground truth is the route's
    own record of what it saved ("Saved image to database")."""
    rows.put("p", incident_document(100))
    semaphore = asyncio.Semaphore(32)
    saved: list[str] = []
    async with await DemoDatabase.from_settings(settings, max_size=32) as db:

        async def one(scene: int, image: int) -> None:
            url = f"https://img.test/{scene}-{image}.png"
            async with semaphore:
                await asyncio.sleep(0.001 * (zlib.crc32(url.encode()) % 5))
                await naive_save(db, "p", SHAPE, SceneRef(scene, f"scene-{scene}"), url)
            saved.append(url)

        # Two images for each scene (numImages = 2), all at once, as the route does.
        await asyncio.gather(*(one(s, i) for s in range(1, 101) for i in (1, 2)))
    held = {u for urls in rows.urls("p").values() for u in urls}
    lost = set(saved) - held
    assert lost, "the harness failed to reproduce the incident"
    # An hour later, the app regenerates one scene on purpose and deletes one image on purpose.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE imgsave_journal SET at = at - interval '1 hour'")
    doc = rows.doc("p")
    kept = [s for s in doc["scenes"] if s.get("imageUrls")]
    regenerated, deleted = kept[0], kept[1]
    replaced_url, deleted_url = regenerated["imageUrls"][0], deleted["imageUrls"][0]
    regenerated["imageUrls"] = ["https://img.test/new.png"]
    rows.put("p", doc)
    doc["scenes"][doc["scenes"].index(deleted)]["imageUrls"] = []
    rows.put("p", doc)

    audited = cli("audit", "--journal", "--json")
    assert audited.code == 1, audited.stderr
    report = audited.json()
    assert lost_urls(report) == lost
    assert {f["url"] for f in report["stale"]} == {replaced_url, deleted_url}
    assert report["summary"]["present"] == len(held) - 2 + 1

    repaired = cli("repair", "--journal", "--execute", "--json")
    assert repaired.code == 0, repaired.stderr
    assert repaired.json()["repaired"] == len(lost)
    after = {u for urls in rows.urls("p").values() for u in urls}
    assert after == (held | lost | {"https://img.test/new.png"}) - {replaced_url, deleted_url}
    again = cli("audit", "--journal", "--json").json()
    assert (again["summary"]["lost"], again["summary"]["stale"]) == (0, 2)


def test_the_journal_records_each_change_and_nothing_for_writes_that_change_no_url(
    journal, rows, db_url
):
    rows.put("p", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/1"]}, {"index": 5}]})
    doc = rows.doc("p")
    doc["title"] = "renamed"
    rows.put("p", doc)  # the document changed, no URL did
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE projects SET updated_at = now()")  # the document did not change
        conn.execute("SELECT imgsave_append_image_urls('p', '5', ARRAY['https://i.test/2'])")
    doc = rows.doc("p")
    doc["scenes"][0]["imageUrls"] = ["https://i.test/3"]
    rows.put("p", doc)
    assert journal_rows(db_url) == [
        ("p", 1, "a", "https://i.test/1", "added", False),
        ("p", 5, None, "https://i.test/2", "added", False),
        ("p", 1, "a", "https://i.test/3", "added", False),
        ("p", 1, "a", "https://i.test/1", "removed", True),
    ]


def test_a_write_after_the_function_in_the_same_transaction_is_still_diffed(journal, rows, db_url):
    """The function tells the trigger what its own UPDATE added; that word must not cover the
    next write."""
    rows.put("p", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/1"]}]})
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT imgsave_append_image_urls('p', 'a', ARRAY['https://i.test/2'])")
        conn.execute(
            "UPDATE projects SET generated_output = "
            '\'{"scenes": [{"id": "a", "imageUrls": ["https://i.test/3"]}]}\''
        )
        conn.commit()
    assert journal_rows(db_url)[1:] == [
        ("p", 1, "a", "https://i.test/2", "added", False),
        ("p", 1, "a", "https://i.test/3", "added", False),
        ("p", 1, "a", "https://i.test/1", "removed", True),
        ("p", 1, "a", "https://i.test/2", "removed", True),
    ]


def test_the_trigger_never_blocks_the_apps_write_of_a_document_imgsave_would_refuse(
    journal, rows, db_url
):
    rows.put("p", {"scenes": [{"id": 5, "imageUrls": ["https://i.test/1", 7]}, "junk"]})
    rows.put("q", "[1, 2]", raw=True)
    rows.put("r", json.dumps("not json inside"), raw=True)
    assert journal_rows(db_url) == [("p", 1, None, "https://i.test/1", "added", False)]


def test_audit_journal_without_a_journal_is_an_error_not_a_clean_bill(cli, rows):
    rows.put("p", {"scenes": []})
    ran = cli("audit", "--journal")
    assert ran.code == 3
    assert ran.stderr == (
        "imgsave: error: --journal: this database has no imgsave journal (install it with "
        "`imgsave sql --journal --apply`; it records writes from then on)\n"
    )


def test_journal_prune_counts_then_removes_whole_writes_older_than_the_window(
    journal, rows, cli, db_url
):
    rows.put("p", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/1", "https://i.test/2"]}]})
    rows.put("q", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/3"]}]})
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE imgsave_journal SET at = at - interval '40 days' WHERE project = 'p'")
    counted = cli("journal", "prune", "--older-than", "30d")
    assert (counted.code, counted.stdout) == (
        0,
        "journal prune: would remove (run with --execute) 2 journal rows older than 30d\n",
    )
    assert len(journal_rows(db_url)) == 3
    pruned = cli("journal", "prune", "--older-than", "30d", "--execute", "--json")
    assert pruned.code == 0
    assert pruned.json() == {"executed": True, "older_than": "30d", "removed": 2}
    assert journal_rows(db_url) == [("q", 1, "a", "https://i.test/3", "added", False)]
    assert cli("journal", "prune", "--older-than", "soon").code == 2


# The rule, as a pure function of journal rows.


def rows_of(*events: tuple[float, str, int, str, bool, bool]) -> list[JournalRow]:
    """(time, txid, scene index, url, added, scene_replaced) for project p, in commit order."""
    return [
        JournalRow(n, at, txid, "p", scene, None, f"https://i.test/{url}", added, replaced)
        for n, (at, txid, scene, url, added, replaced) in enumerate(events, 1)
    ]


def verdicts(rows: list[JournalRow], run_gap: float = 1800) -> dict[str, bool]:
    ledger = JournalLedger(run_gap)
    ledger.add(rows)
    return {
        url.removeprefix("https://i.test/"): meant
        for h in ledger.verdicts()["p"].values()
        for url, meant in h.urls.items()
    }


def test_a_url_removed_by_a_write_that_added_others_is_lost():
    assert verdicts(
        rows_of(
            (0, "1", 1, "u1", True, False),
            (1, "2", 2, "u2", True, False),  # a stale copy: it adds u2 and drops u1
            (1, "2", 1, "u1", False, False),
        )
    ) == {"u1": True, "u2": True}


def test_two_completions_racing_for_one_empty_scene_lose_the_first():
    """The incident's numImages > 1 case: the second write's copy of the scene was empty."""
    assert verdicts(
        rows_of(
            (0, "1", 3, "u1", True, False),
            (2, "2", 3, "u2", True, False),
            (2, "2", 3, "u1", False, True),
        )
    ) == {"u1": True, "u2": True}


def test_removed_by_a_write_that_added_nothing_or_regenerated_the_scene_is_on_purpose():
    assert verdicts(
        rows_of(
            (0, "1", 1, "u1", True, False),
            (0, "1", 2, "u2", True, False),
            (60, "2", 1, "u1", False, False),  # a deletion: the write added nothing
            (7200, "3", 2, "u3", True, False),  # a regeneration, two hours later
            (7200, "3", 2, "u2", False, True),
        )
    ) == {"u1": False, "u2": False, "u3": True}


def test_the_last_event_decides_and_the_run_gap_draws_the_ambiguous_line():
    events = rows_of(
        (0, "1", 1, "u1", True, False),
        (1, "2", 2, "u2", True, False),
        (1, "2", 1, "u1", False, False),
        (5, "3", 1, "u1", True, False),  # repaired: meant to be there again
        # The scene replaced ten minutes after its image came: a regeneration or a race?
        (100, "4", 3, "u4", True, False),
        (700, "5", 3, "u5", True, False),
        (700, "5", 3, "u4", False, True),
    )
    assert verdicts(events) == {"u1": True, "u2": True, "u4": True, "u5": True}
    assert verdicts(events, run_gap=300)["u4"] is False


def test_a_removal_of_a_url_added_before_the_rows_read_is_judged_as_long_ago():
    """--since cut the addition off: a whole-scene replacement then reads as a regeneration."""
    assert verdicts(rows_of((9, "2", 1, "u2", True, False), (9, "2", 1, "u1", False, True))) == {
        "u1": False,
        "u2": True,
    }


def test_a_url_that_breaks_the_url_rule_is_refused_never_restored(journal, rows, cli):
    """The app may have written anything; repair only ever writes what the URL rule allows."""
    rows.put(
        "p", {"scenes": [{"id": "a", "imageUrls": ["javascript:alert(1)", "https://i.test/1"]}]}
    )
    rows.put("p", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/2"]}]})
    report = cli("audit", "--journal", "--json").json()
    assert lost_urls(report) == {"https://i.test/1"}
    assert report["summary"]["lines_skipped"] == 2  # its addition and its removal


def test_the_journal_beats_the_logs_for_the_urls_it_knows():
    logged = {
        "p": {SceneRef(1, None): SceneHistory({"u1": True, "u9": True})},
        "q": {SceneRef(1, None): SceneHistory({"u3": True})},
    }
    journal = {"p": {SceneRef(1, "a"): SceneHistory({"u1": False, "u2": True})}}
    overlay(logged, journal)
    assert logged["p"] == {
        SceneRef(1, None): SceneHistory({"u9": True}),
        SceneRef(1, "a"): SceneHistory({"u1": False, "u2": True}),
    }
    assert journal == {}


def test_the_trigger_lets_through_a_double_encoded_document_nested_past_the_stack(
    journal, rows, db_url
):
    deep = "[" * 100_000 + "]" * 100_000
    rows.put("p", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/1"]}]})
    rows.put("p", json.dumps(deep), raw=True)  # the app's write goes through
    assert json.loads(rows.text("p")) == deep
    assert journal_rows(db_url)[-1][3:5] == ("https://i.test/1", "removed")


def test_a_forged_appended_setting_hides_no_removal(journal, rows, db_url, role):
    from .test_route_sql import as_role

    rows.put("p", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/1", "https://i.test/2"]}]})
    writer = role()  # may UPDATE the table, nothing more
    forged = json.dumps(
        {"position": 0, "scene_index": 1, "scene_id": "a", "urls": ["https://i.test/3"]}
    )
    with psycopg.connect(as_role(db_url, writer)) as conn:
        conn.execute("SELECT set_config('imgsave.appended', %s, true)", (forged,))
        conn.execute(
            "UPDATE projects SET generated_output = "
            '\'{"scenes": [{"id": "a", "imageUrls": ["https://i.test/3"]}]}\''
        )
        conn.commit()
    assert journal_rows(db_url)[2:] == [
        ("p", 1, "a", "https://i.test/3", "added", False),
        ("p", 1, "a", "https://i.test/1", "removed", True),
        ("p", 1, "a", "https://i.test/2", "removed", True),
    ]


def test_appending_to_a_list_of_tens_of_thousands_is_linear(journal, rows, db_url):
    """The append function under the row lock: 40,000 URLs held, 40,000 more in one call. A
    loop over `url = ANY (held)` takes minutes for this (1.6 billion comparisons); the bound is
    generous for a loaded machine."""
    held = [f"https://i.test/{n}" for n in range(40_000)]
    rows.put("p", {"scenes": [{"id": "a", "imageUrls": held}]})
    more = [f"https://i.test/new/{n}" for n in range(40_000)] + held[:5]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '20s'")
        (added,) = conn.execute(
            "SELECT imgsave_append_image_urls('p', 'a', %s)", (more,)
        ).fetchone()
    assert added == 40_000
    assert rows.urls("p")[1] == held + more[:40_000]
