"""Which logged URLs a scene should still hold: pure logic, property-tested against a model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave.core.log_history import Sighting, build, history, load, spilled

HOUR = 3600.0


def own(url, run, ts, replaces=()):
    """A line of imgsave's own log: its runs only ever add."""
    return Sighting("p", 1, None, url, run, ts, False, tuple(replaces))


def app(url, ts, run=None):
    """A line of another system's log: a later run replaced the scene's images."""
    return Sighting("p", 1, None, url, run, ts, True)


def test_imgsave_runs_never_supersede_each_other():
    # -k 2 interrupted, rerun; then a top-up; then --force: every URL still belongs.
    items = [own("a", "r1", 0.0), own("b", "r2", HOUR), own("c", "r3", 2 * HOUR)]
    assert history(items, 1800).urls == {"a": True, "b": True, "c": True}


def test_a_later_app_run_supersedes_everything_before_it():
    items = [own("a", "r1", 0.0), app("x", HOUR), app("y", 3 * HOUR), own("b", "r2", 4 * HOUR)]
    assert history(items, 1800).urls == {"a": False, "x": False, "y": True, "b": True}


def test_app_lines_are_cut_into_runs_by_time_across_files_and_out_of_order():
    # The older half of a run comes from the rotated file, read after the newer one.
    items = [app("late", 10_000.0), app("b", 600.0), app("a", 0.0), app("c", 700.0)]
    h = history(items, 1800)
    assert h.urls == {"late": True, "a": False, "b": False, "c": False}
    assert history(items, 20_000).urls == dict.fromkeys(["late", "a", "b", "c"], True)


def test_an_explicit_replacement_supersedes_only_the_url_it_names():
    items = [own("old", "r1", 0.0), own("keep", "r1", 0.0), own("new", "r2", HOUR, ["old"])]
    assert history(items, 1800).urls == {"old": False, "keep": True, "new": True}


def test_a_url_seen_in_two_runs_belongs_to_its_latest_sighting():
    items = [app("x", 0.0, "old"), app("x", HOUR, "new"), app("y", HOUR, "new")]
    assert history(items, 1800).urls == {"x": True, "y": True}


# A scene's life: imgsave runs (one or two at once), the app's regenerations, and the racing
# writer dropping URLs. The model: every URL of the last replacement and of any imgsave run that
# came after it should be in the scene; the rest were deliberately replaced.
events = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 3), st.integers(0, 2)),
        st.tuples(st.just("replace"), st.integers(1, 3), st.just(0)),
        st.tuples(st.just("lose"), st.integers(0, 2**16), st.just(0)),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_audit_lost_set_equals_the_model(script):
    state: list[str] = []
    sightings: list[Sighting] = []
    should_hold: set[str] = set()
    n = 0
    for step, (kind, a, b) in enumerate(script):
        t = step * HOUR
        if kind == "append":
            # Two concurrent imgsave runs when b > 0: their lines interleave in time.
            for i in range(a + b):
                n += 1
                url = f"u{n}"
                sightings.append(own(url, f"r{step}-{i % 2 if b else 0}", t + i))
                state.append(url)
                should_hold.add(url)
        elif kind == "replace":
            urls = []
            for i in range(a):
                n += 1
                urls.append(f"u{n}")
                sightings.append(app(urls[-1], t + i))
            state = urls
            should_hold = set(urls)
        else:
            state = [u for i, u in enumerate(state) if not (a >> (i % 16)) & 1]
    truth = should_hold - set(state)
    if not sightings:
        return
    h = history(sightings, 1800)
    audit_lost = {u for u, current in h.urls.items() if current and u not in state}
    assert audit_lost == truth


sightings_strategy = st.lists(
    st.builds(
        Sighting,
        project=st.sampled_from(["p1", "p2", "p3", "ü-4"]),
        scene=st.integers(1, 3),
        scene_id=st.sampled_from([None, "s-1"]),
        url=st.sampled_from([f"https://i.test/{n}" for n in range(8)]),
        run=st.sampled_from([None, "r1", "r2"]),
        ts=st.one_of(st.none(), st.floats(0, 1e5)),
        replacing=st.booleans(),
        replaces=st.sampled_from([(), ("https://i.test/1",)]),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(sightings_strategy, st.integers(1, 7))
def test_partitioning_changes_nothing(items, partitions):
    whole = build(items, 1800)
    with spilled(items, partitions) as parts:
        pieces = [build(load(part), 1800) for part in parts]
    merged = {}
    for piece in pieces:
        assert not set(piece) & set(merged), "a project must live in one partition"
        merged.update(piece)
    assert merged == whole
    assert sum(len(scenes) for scenes in whole.values()) == len({s[:2] for s in items})


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 10)), min_size=1, max_size=5),
    st.sets(st.integers(1, 45)),
)
def test_scene_selection_agrees_with_the_set_it_stands_for(parts, present):
    from imgsave.cli.parsers import parse_scene_selection

    spec = ",".join(f"{lo}-{lo + width}" if width else str(lo) for lo, width in parts)
    chosen = {n for lo, width in parts for n in range(lo, lo + width + 1)}
    selection = parse_scene_selection(spec)
    assert {n for n in range(0, 60) if n in selection} == chosen
    missing = sorted(chosen - present)
    assert selection.first_missing(present) == (missing[0] if missing else None)


def test_a_huge_scene_range_is_two_integers():
    from imgsave.cli.parsers import parse_scene_selection

    selection = parse_scene_selection("1-20000000")
    assert selection.ranges == ((1, 20_000_000),)
    assert selection.first_missing(set(range(1, 21))) == 21
