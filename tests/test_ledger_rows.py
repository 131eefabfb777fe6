"""The ledger in PostgreSQL: its rows' moves, leases, identity, pruning and the new identity of
a restored copy, against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import psycopg

from imgsave._demo.incident import incident_document
from imgsave.adapters.postgres.ledger_rows import Waiting
from imgsave.core.documents import SceneRef
from imgsave.core.ledger import Handle, Kept, Mode, Move, NewPurchase, State
from imgsave.operations import rehosting, repairing
from imgsave.operations.planning import Ask, plan_project
from imgsave.operations.session import opened


def ordered(settings, count: int = 3, project: str = "p1"):
    """`count` rows ordered (requested) by one session, and the session's ids."""

    async def order() -> tuple[str, list[int]]:
        async with opened(settings) as s:
            rows = await s.purchases.order(
                [NewPurchase(project, SceneRef(n + 1), 0, Mode.SYNC) for n in range(count)]
            )
            return s.ledger.db_id, [p.id for p in rows]

    return asyncio.run(order())


def ledger(db_url: str, *columns: str) -> list[tuple[object, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            f"SELECT {', '.join(columns)} FROM imgsave_ledger ORDER BY id"
        ).fetchall()


def test_rows_come_back_in_the_order_they_were_ordered_with_their_scenes(settings, rows, db_url):
    rows.put("p1", incident_document(40))

    async def order() -> list[tuple[int, int]]:
        async with opened(settings) as s:
            wanted = [NewPurchase("p1", SceneRef(n % 40 + 1), n // 40, Mode.SYNC)
                      for n in reversed(range(200))]  # fmt: skip
            made = await s.purchases.order(wanted)
            return [(p.ref.index, w.ref.index) for p, w in zip(made, wanted, strict=True)]

    assert all(a == b for a, b in asyncio.run(order()))


def test_moves_go_forward_only_and_a_saved_row_never_moves_again(settings, rows, db_url):
    rows.put("p1", incident_document(3))
    _, ids = ordered(settings)

    async def moves() -> list[set[int]]:
        async with opened(settings) as s:
            a, b, c = ids
            url = Kept(url="https://i.test/a.png")
            return [
                await s.ledger.move([Move(a, State.STORED, url), Move(b, State.FAILED)]),
                await s.ledger.move([Move(a, State.SAVED, url)]),
                # Back out of saved, back out of failed, back to requested: all refused.
                await s.ledger.move(
                    [Move(a, State.STORED, url), Move(b, State.SAVED), Move(c, State.REQUESTED)]
                ),
                await s.ledger.move([Move(c, State.LOST), Move(c, State.STORED, url)]),
            ]

    first, second, refused, last = asyncio.run(moves())
    assert (first, second, refused) == ({ids[0], ids[1]}, {ids[0]}, {ids[2]})
    assert ledger(db_url, "state") == [("saved",), ("failed",), ("lost",)]
    assert last == {ids[2]}


def test_a_row_is_another_databases_and_never_moved_by_this_one(settings, rows, db_url):
    rows.put("p1", incident_document(3))
    _, ids = ordered(settings)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE imgsave_ledger SET db_id = 'another'")

    async def move() -> tuple[set[int], int]:
        async with opened(settings) as s:
            moved = await s.ledger.move([Move(ids[0], State.FAILED)])
            return moved, len(await s.ledger.unresolved())

    assert asyncio.run(move()) == (set(), 0)


def test_a_lease_is_the_runs_until_it_lapses_or_its_process_is_gone(settings, rows, db_url):
    rows.put("p1", incident_document(3))
    _, ids = ordered(settings)  # leased to a run that ended: released on its way out

    async def lease() -> list[int]:
        async with opened(settings) as a, opened(settings) as b:
            took = await a.ledger.lease(ids, run="a", process="pa", seconds=60, dead=())
            not_b = await b.ledger.lease(ids, run="b", process="pb", seconds=60, dead=())
            dead = await b.ledger.lease(ids, run="b", process="pb", seconds=60, dead=["pa"])
            return [len(took), len(not_b), len(dead)]

    assert asyncio.run(lease()) == [3, 0, 3]


def prune_env(db_url: str, log_dir: Path) -> dict[str, str]:
    return {"IMGSAVE_DATABASE_URL": db_url, "IMGSAVE_LOG_DIR": str(log_dir)}


def test_prune_keeps_what_is_on_its_way_and_every_log_a_marker_holds(
    cli, settings, rows, db_url, log_dir
):
    rows.put("p1", incident_document(4))
    db_id, ids = ordered(settings, 4)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE imgsave_ledger SET state = 'saved' WHERE id = %s", (ids[0],))
        conn.execute("UPDATE imgsave_ledger SET state = 'lost' WHERE id = %s", (ids[1],))
        conn.execute("UPDATE imgsave_ledger SET updated_at = now() - interval '40 days'")
    old = time.time() - 40 * 86400
    for name in ("20250101T000000Z-aaaaaa", "20250101T000000Z-bbbbbb"):
        path = log_dir / f"{name}.jsonl"
        path.write_text(json.dumps({"event": "run.started", "db": db_id}) + "\n")
        os.utime(path, (old, old))
    marker = log_dir / "unsettled" / db_id / "20250101T000000Z-bbbbbb"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("elsewhere|ns|1|1\n")
    listed = cli("prune", "--older-than", "30d", "--json", env=prune_env(db_url, log_dir))
    assert listed.code == 0, listed.stderr
    assert (listed.json()["ledger_rows"], listed.json()["would_remove"]) == (2, 1)
    pruned = cli("prune", "--older-than", "30d", "--execute", "--json",
                 env=prune_env(db_url, log_dir))  # fmt: skip
    assert (pruned.json()["ledger_rows"], pruned.json()["removed"]) == (2, 1)
    assert ledger(db_url, "state") == [("requested",), ("requested",)], "on their way: kept"
    assert not (log_dir / "20250101T000000Z-aaaaaa.jsonl").exists()
    assert (log_dir / "20250101T000000Z-bbbbbb.jsonl").exists(), "its records may be unsettled"


def test_prune_without_a_database_is_a_usage_error(cli):
    ran = cli("prune", env={"IMGSAVE_DATABASE_URL": ""})
    assert ran.code == 2 and "IMGSAVE_DATABASE_URL" in ran.stderr


def test_a_restored_copy_given_a_new_identity_leaves_its_originals_purchases_alone(
    cli, settings, rows, db_url
):
    rows.put("p1", incident_document(3))
    old, _ = ordered(settings)
    printed = cli("sql", "--new-identity")
    assert printed.code == 0 and "UPDATE" in printed.stdout and "database_id" in printed.stdout
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT value FROM imgsave_meta").fetchone() == (old,), "printed only"
    applied = cli("sql", "--new-identity", "--apply")
    assert applied.code == 0, applied.stderr
    assert "3 purchases still on their way belong to the database" in applied.stdout
    with psycopg.connect(db_url) as conn:
        (new,) = conn.execute("SELECT value FROM imgsave_meta").fetchone()
    assert new != old and new in applied.stdout

    async def unresolved() -> int:
        async with opened(settings) as s:
            assert s.ledger.db_id == new
            return len(await s.ledger.unresolved())

    assert asyncio.run(unresolved()) == 0, "the original's rows are not this copy's to settle"
    both = cli("sql", "--new-identity", "--uninstall")
    assert both.code == 2


def test_the_lines_waiting_in_batches_are_counted_batch_by_batch_not_read_row_by_row(
    settings, rows, db_url
):
    rows.put("p1", incident_document(9))
    rows.put("p2", incident_document(9))

    async def run() -> tuple[object, ...]:
        async with opened(settings) as s:
            made = await s.purchases.order(
                [NewPurchase(p, SceneRef(n + 1), 0, Mode.BATCH) for p in ("p1", "p2")
                 for n in range(9)]
                + [NewPurchase("p1", SceneRef(1), 1, Mode.SYNC)]
            )  # fmt: skip
            batch, p2 = made[:9], made[9:18]
            # p1: 4 lines in batch_a, 3 in batch_b, 2 whose create answer was lost (their
            # input file names them); p2: all 9 in batch_a, one of them answered already.
            await s.ledger.set_handle([p.id for p in batch[:4] + p2], Handle(batch_id="batch_a"))
            await s.ledger.set_handle([p.id for p in batch[4:7]], Handle(batch_id="batch_b"))
            await s.ledger.set_handle([p.id for p in batch[7:]], Handle(input_file="file-1"))
            await s.ledger.move([Move(p2[0].id, State.FAILED)])
            return (
                await s.ledger.waiting(),
                await s.ledger.waiting(["p1"]),
                [p.mode for p in await s.ledger.unresolved(waiting_in_batches=False)],
                len(await s.ledger.unresolved()),
            )

    every, p1, not_waiting, unresolved = asyncio.run(run())
    assert every == [
        Waiting("openai", "batch_a", None, 12),
        Waiting("openai", "batch_b", None, 3),
        Waiting("openai", None, "file-1", 2),
    ]
    assert p1 == [
        Waiting("openai", "batch_a", None, 4),
        Waiting("openai", "batch_b", None, 3),
        Waiting("openai", None, "file-1", 2),
    ]
    assert not_waiting == [Mode.SYNC]
    assert unresolved == 18


def test_a_save_committed_while_a_run_plans_is_on_its_way_or_in_its_scene_never_neither(
    settings, rows, db_url
):
    """Another host collects a batch while this run plans the same scene: the collection's save
    (the URL into the document, its row to `saved`, one transaction) commits between the
    plan's readings. The plan reads the ledger first, so it sees the row on its way or the URL
    in its scene; the other way round it saw neither, and bought the image a second time."""
    rows.put("p1", incident_document(1))
    url = "https://i.test/collected.png"

    async def plan_while_another_host_saves() -> int:
        async with opened(settings) as s:
            (row,) = await s.purchases.order(
                [NewPurchase("p1", SceneRef(1, "scene-1"), 0, Mode.BATCH)]
            )
            read = s.db.read
            reads = 0

            async def read_then_the_other_host_commits(project: str) -> object:
                nonlocal reads
                document = await read(project)
                reads += 1
                if reads == 2:  # the plan's second reading, after its claim
                    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
                        conn.execute(
                            "UPDATE projects SET generated_output = jsonb_set(generated_output,"
                            " '{scenes,0,imageUrls}', jsonb_build_array(%s::text))",
                            (url,),
                        )
                        conn.execute(
                            "UPDATE imgsave_ledger SET state = 'saved', url = %s WHERE id = %s",
                            (url, row.id),
                        )
                return document

            s.db.read = read_then_the_other_host_commits  # type: ignore[method-assign]
            planned = await plan_project(s.db, s.ledger, None, "p1", Ask(1), shape=settings.shape)
            assert reads == 2
            return planned.plan.requested

    assert asyncio.run(plan_while_another_host_saves()) == 0
    assert rows.urls("p1") == {1: [url]}


def test_repair_buys_only_what_its_scenes_still_lack_once_they_are_claimed(settings, rows):
    """The audit was read before the scenes were claimed: another host's repair may have
    replaced a dead link, or filled an empty scene, since. Neither is bought a second time;
    a dead link nothing replaces, and a scene still empty, are."""
    document = incident_document(3)
    document["scenes"][1]["imageUrls"] = ["https://i.test/filled-since.png"]
    rows.put("p1", document)
    replaced, still_dead = "https://i.test/dead-1.png", "https://i.test/dead-2.png"
    one, two, three = (SceneRef(n, f"scene-{n}") for n in (1, 2, 3))

    async def jobs() -> tuple[object, list[str]]:
        async with opened(settings) as s:
            (row,) = await s.purchases.order(
                [NewPurchase("p1", one, 0, Mode.SYNC, replaces=(replaced,))]
            )
            await s.ledger.move([Move(row.id, State.SAVED, Kept(url="https://i.test/new.png"))])
            errors: list[str] = []
            wanted = {one: [replaced, still_dead], two: [None], three: [None]}
            found = await repairing._jobs(s, "p1", wanted, None, errors)
            assert found is not None
            return [(j.scene.ref.index, j.count, j.replaces) for j in found], errors

    assert asyncio.run(jobs()) == ([(1, 1, (still_dead,)), (3, 1, ())], [])


def test_rehost_buys_only_for_links_still_dead_once_their_scenes_are_claimed(settings, rows):
    """Links found dead may have been replaced since by another run: one a purchase replaces
    already, and one no longer in its scene, are not bought for again; a link still there, and
    replaced by nothing, is."""
    document = incident_document(3)
    replaced, still_dead, gone = (f"https://i.test/dead-{n}.png" for n in (1, 2, 3))
    document["scenes"][0]["imageUrls"] = [replaced]
    document["scenes"][1]["imageUrls"] = [still_dead]
    document["scenes"][2]["imageUrls"] = ["https://i.test/put-there-since.png"]
    rows.put("p1", document)
    links = [
        rehosting.Link("p1", n, f"scene-{n}", url)
        for n, url in ((1, replaced), (2, still_dead), (3, gone))
    ]

    async def jobs() -> list[tuple[int, tuple[str, ...]]]:
        async with opened(settings) as s:
            # Another run's replacement of the first link, on its way (requested).
            await s.purchases.order(
                [NewPurchase("p1", SceneRef(1, "scene-1"), 0, Mode.SYNC, replaces=(replaced,))]
            )
            errors: list[str] = []
            found = await rehosting.links_to_replace(s, "p1", links, None, errors)
            assert errors == []
            return [(j.scene.ref.index, j.replaces) for j in found]

    assert asyncio.run(jobs()) == [(2, (still_dead,))]
