"""Run grouping and partitioning of log sightings: pure logic, property-tested."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave.document import SceneRef
from imgsave.ledger import build, history, load, spilled
from imgsave.logread import Sighting


def s(url, run=None, ts=None, source=0, project="p", scene=1):
    return Sighting(project, scene, None, url, run, ts, source)


def test_named_runs_newest_by_time_not_by_file_order():
    h = history([s("a", "r2", 200.0), s("b", "r1", 100.0), s("c", "r1", 150.0)], 1800)
    assert h.newest == "r2"
    assert h.urls == {"a": "r2", "b": "r1", "c": "r1"}


def test_unnamed_lines_are_cut_into_runs_by_gap_per_file_even_out_of_order():
    items = [s("late", ts=10_000.0), s("a", ts=0.0), s("b", ts=600.0), s("other", ts=5.0, source=1)]
    h = history(items, 1800)
    assert h.urls["a"] == h.urls["b"] == "0#0"
    assert h.urls["late"] == "0#1" == h.newest
    assert h.urls["other"] == "1#0"


def test_a_url_seen_in_two_runs_belongs_to_its_latest_sighting():
    h = history([s("x", "old", 1.0), s("x", "new", 2.0), s("y", "new", 2.0)], 1800)
    assert h.urls["x"] == "new"


sightings = st.lists(
    st.builds(
        Sighting,
        project=st.sampled_from(["p1", "p2", "p3", "ü-4"]),
        scene=st.integers(1, 3),
        scene_id=st.sampled_from([None, "s-1"]),
        url=st.sampled_from([f"https://i.test/{n}" for n in range(8)]),
        run=st.sampled_from([None, "r1", "r2"]),
        ts=st.one_of(st.none(), st.floats(0, 1e5)),
        source=st.integers(0, 2),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(sightings, st.integers(1, 7))
def test_partitioning_changes_nothing(items, partitions):
    whole = build(items, 1800)
    with spilled(items, partitions) as parts:
        pieces = [build(load(part), 1800) for part in parts]
    merged = {}
    for piece in pieces:
        assert not set(piece) & set(merged), "a project must live in one partition"
        merged.update(piece)
    assert merged == whole
    for project, scenes in whole.items():
        for ref in scenes:
            assert isinstance(ref, SceneRef) and project
