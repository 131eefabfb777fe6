"""The pure parts of batches, property-tested: the custom_id every host reads back, and the
cutting of a run's requests into batches within the provider's limits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imgsave.core.batch_lines import MAX_CUSTOM_ID, Slot, custom_id, slot_of
from imgsave.operations.batches import _chunks

slots = st.builds(
    Slot,
    project=st.text(max_size=400),
    scene=st.integers(min_value=1, max_value=10**6),
    scene_id=st.none() | st.text(max_size=200),
    slot=st.integers(min_value=0, max_value=100),
)


@given(slots)
def test_a_custom_id_names_its_slot_or_is_refused_as_too_long(slot: Slot):
    identifier = custom_id(slot)
    if identifier is None:  # only a long key or scene id makes one too long
        assert len(slot.project) + len(slot.scene_id or "") > 50
        assert custom_id(Slot("p", slot.scene, None, slot.slot)) is not None
    else:
        assert len(identifier) <= MAX_CUSTOM_ID
        assert slot_of(identifier) == slot


@given(st.text())
def test_an_id_imgsave_did_not_write_is_no_slot_and_never_an_error(text: str):
    found = slot_of(text)
    assert found is None or custom_id(found) is not None


@given(
    st.lists(st.integers(min_value=1, max_value=120), max_size=60),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=400),
)
def test_requests_are_cut_in_order_within_both_limits(sizes: list[int], size: int, most: int):
    entries = [(n, b"x" * k) for n, k in enumerate(sizes)]
    chunks = _chunks(entries, size, most)  # type: ignore[arg-type]
    assert [e for chunk in chunks for e in chunk] == entries, "every request once, in order"
    for chunk in chunks:
        assert chunk and len(chunk) <= size
        # A single line over the byte limit still goes, alone: the provider then says why.
        assert len(chunk) == 1 or sum(len(line) for _, line in chunk) <= most
