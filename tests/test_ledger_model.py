"""The ledger's pure model (core/ledger.py), property-tested: which moves a row may make, what a
plan buys once what is on its way is counted, and what settling does with each row."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imgsave.core.documents import Scene, SceneRef
from imgsave.core.ledger import (
    UNRESOLVED,
    Action,
    Edit,
    Handle,
    Kept,
    Mode,
    Purchase,
    State,
    action,
    may_move,
    on_their_way,
    scene_key,
    unanswered,
    without_pending,
)
from imgsave.core.scene_plan import Job, Plan

states = st.sampled_from(list(State))
refs = st.builds(
    SceneRef,
    index=st.integers(min_value=1, max_value=6),
    id=st.none() | st.sampled_from(["a", "b", "2"]),
)


@given(states, states)
def test_a_row_moves_forward_only_and_never_out_of_saved(current: State, to: State):
    allowed = may_move(current, to)
    if current is State.SAVED:
        assert not allowed, "a row saved is never placed again"
    if current in (State.FAILED, State.REFUSED, State.ORPHANED):
        assert not allowed, "an end is an end"
    if current is State.LOST:
        assert allowed == (to in (State.STORED, State.SAVED)), "only its image turning up"
    if current is State.STORED and to in (State.REQUESTED, State.RECEIVED):
        assert not allowed, "a kept image is never unkept"
    if current is State.REQUESTED:
        assert allowed


def purchase(ref: SceneRef, state: State, edit: Edit = Edit.APPEND, **extra: object) -> Purchase:
    fields: dict[str, object] = {
        "id": 1, "project": "p", "ref": ref, "slot": 0, "run": "r", "host": "h",
        "kind": "openai", "mode": Mode.SYNC, "state": state, "edit": edit,
    }  # fmt: skip
    fields.update(extra)
    return Purchase(**fields)  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(refs, st.integers(min_value=0, max_value=5)),
        max_size=6,
        unique_by=lambda t: scene_key(t[0]),  # a document with two scenes of one key is refused
    ),
    st.lists(st.tuples(refs, states, st.sampled_from(list(Edit))), max_size=12),
    st.booleans(),
)  # fmt: skip
def test_a_plan_never_buys_what_is_on_its_way(
    wanted: list[tuple[SceneRef, int]],
    rows: list[tuple[SceneRef, State, Edit]],
    force: bool,
):
    jobs = tuple(
        Job(Scene(ref, ref.index - 1, "prompt", ()), count) for ref, count in wanted if count
    )
    ledger = [purchase(ref, state, edit) for ref, state, edit in rows]
    pending = on_their_way(ledger)
    planned = without_pending(Plan(jobs), pending, force=force)
    by_scene = {scene_key(job.scene.ref): job.count for job in planned.jobs}
    for job in jobs:
        key = scene_key(job.scene.ref)
        on_way = sum(p.unresolved and p.edit is Edit.APPEND and p.scene == key for p in ledger)
        expected = max(0, job.count - on_way)
        assert by_scene.get(key, 0) == expected
        if expected == 0:
            assert job.scene.ref.index in planned.pending_scenes
    # Rows that end, or that take a link's place, hold nothing.
    assert sum(pending.values()) == sum(
        p.state in UNRESOLVED and p.edit is Edit.APPEND for p in ledger
    )


def test_what_settling_does_with_each_kind_of_row():
    ref = SceneRef(1, "s")
    stored = Kept(url="https://i.test/a.png")
    assert action(purchase(ref, State.STORED, kept=stored), host="h", kind="openai",
                  has_store=True) is Action.SAVE  # fmt: skip
    spooled = purchase(ref, State.STORED, kept=Kept(spool="/x"))
    assert action(spooled, host="h", kind="openai", has_store=True) is Action.UPLOAD
    assert action(spooled, host="other", kind="openai", has_store=True) is Action.WAIT
    assert action(spooled, host="h", kind="openai", has_store=False) is Action.WAIT
    job = purchase(ref, State.REQUESTED, mode=Mode.JOB, kind="fal", handle=Handle(job_id="j"))
    assert action(job, host="h", kind="fal", has_store=True) is Action.POLL
    assert action(job, host="h", kind="bfl", has_store=True) is Action.WAIT, "another kind's"
    batch = purchase(ref, State.REQUESTED, mode=Mode.BATCH, handle=Handle(batch_id="b"))
    assert action(batch, host="h", kind="openai", has_store=True) is Action.COLLECT
    uploaded = purchase(ref, State.REQUESTED, mode=Mode.BATCH, handle=Handle(input_file="f"))
    assert action(uploaded, host="h", kind="openai", has_store=True) is Action.FIND_BATCH
    sync = purchase(ref, State.REQUESTED)
    assert action(sync, host="h", kind="openai", has_store=True) is Action.ADOPT
    copy = purchase(ref, State.REQUESTED, mode=Mode.COPY, edit=Edit.REPLACE)
    assert action(copy, host="h", kind="openai", has_store=True) is Action.DROP
    received = purchase(ref, State.RECEIVED, kept=Kept(source_url="https://p.test/x.png"))
    assert action(received, host="h", kind="openai", has_store=True) is Action.FETCH


def test_a_loss_before_any_answer_is_said_apart_from_a_loss_known_to_be_paid():
    ref = SceneRef(1)
    assert purchase(ref, State.LOST, error=unanswered("killed")).unanswered
    assert not purchase(ref, State.LOST, error="its result is gone").unanswered
    assert not purchase(ref, State.FAILED, error=unanswered("x")).unanswered
