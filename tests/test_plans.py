"""Pure plans: which scenes generate asks for, and what repair says is still missing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave.adapters.runlog.reader import ReadStats
from imgsave.cli.parsers import parse_scene_selection
from imgsave.core.documents import Scene, SceneRef
from imgsave.core.scene_plan import plan
from imgsave.operations.lost_images import AuditReport, Finding
from imgsave.operations.repairing import remaining

scenes_st = st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=8).map(
    lambda specs: [
        Scene(
            SceneRef(n + 1, f"s{n + 1}"),
            n,
            "a prompt" if prompted else None,
            tuple(f"https://i.test/{n}/{j}" for j in range(held)),
        )
        for n, (held, prompted) in enumerate(specs)
    ]
)


@settings(max_examples=300, deadline=None)
@given(scenes_st, st.integers(1, 5), st.booleans(), st.data())
def test_plan_puts_every_selected_scene_in_exactly_one_place(all_scenes, k, force, data):
    chosen = data.draw(st.sets(st.sampled_from([s.ref.index for s in all_scenes])))
    selection = parse_scene_selection(",".join(map(str, sorted(chosen)))) if chosen else None
    the_plan = plan(all_scenes, k, selection=selection, force=force)
    selected = [s for s in all_scenes if selection is None or s.ref.index in selection]
    jobs = {job.scene.ref.index: job.count for job in the_plan.jobs}
    for scene in selected:
        need = k if force else k - len(scene.urls)
        places = [
            scene.ref.index in jobs,
            scene.ref.index in the_plan.skipped_scenes,
            scene.ref.index in the_plan.unprompted_scenes,
        ]
        assert places.count(True) == 1, scene
        if need <= 0:
            assert scene.ref.index in the_plan.skipped_scenes
        elif scene.prompt is None:
            assert scene.ref.index in the_plan.unprompted_scenes
        else:
            assert jobs[scene.ref.index] == need
    assert set(jobs) <= {s.ref.index for s in selected}
    assert the_plan.requested == sum(jobs.values())


def test_remaining_counts_what_is_still_missing_scene_by_scene():
    report = AuditReport(ReadStats())
    report.lost = [
        Finding("p", 1, None, "https://i.test/a"),
        Finding("p", 1, None, "https://i.test/b"),
    ]
    report.expired = [Finding("p", 2, None, "https://i.test/c")]
    report.empty_scenes = [("p", SceneRef(3))]
    assert remaining(report, {}, {}) == 3
    assert remaining(report, {("p", 1): 2}, {}) == 1
    assert remaining(report, {("p", 1): 2}, {("p", 2): 1}) == 0
    # More came back for a scene than it lost: it does not cover another scene's shortfall.
    assert remaining(report, {("p", 1): 5}, {}) == 1
    assert remaining(report, {("p", 1): 2}, {("p", 2): 1}, empty_scenes=True) == 1
    assert remaining(report, {("p", 1): 2}, {("p", 2): 1, ("p", 3): 1}, empty_scenes=True) == 0


@given(st.text(min_size=1, max_size=120))
def test_a_key_segment_is_url_safe_fits_every_store_and_is_reversible_or_a_hash(text: str):
    import hashlib

    from imgsave.core.image_bytes import MAX_SEGMENT_BYTES, key_segment, segment_text

    segment = key_segment(text)
    assert segment not in (".", "..") and "/" not in segment
    assert len(segment) <= MAX_SEGMENT_BYTES + 1
    if segment.startswith("~"):  # too long escaped: its hash (the log maps it back)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        assert segment == "~" + digest and segment_text(segment) is None
        return
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in segment)
    assert segment_text(segment) == text


@given(st.one_of(st.integers(1, 10**6).map(str), st.text(min_size=1, max_size=20)), st.integers(1))
def test_a_scene_id_never_shares_a_folder_with_an_index(scene_id: str, index: int):
    from imgsave.core.documents import SceneRef
    from imgsave.core.image_bytes import scene_segment

    assert scene_segment(SceneRef(index, scene_id)) != scene_segment(SceneRef(index, None))
    assert scene_segment(SceneRef(1, scene_id)) != str(index)


def test_only_png_jpeg_webp_and_gif_are_images_and_the_cap_holds():
    import pytest

    from imgsave.core.image_bytes import NotAnImage, checked

    from .images import tiny

    for ext in ("png", "jpg", "webp", "gif"):
        assert checked(tiny(ext), max_bytes=1000).ext == ext
    for data, why in (
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "(SVG)"),
        (b"  <svg onload='alert(1)'/>", "(SVG)"),
        (b"<!DOCTYPE html><html><script>", "(HTML)"),
        (b"%PDF-1.7", "(starts 255044462d312e37)"),
        (b"", "(empty)"),
    ):
        with pytest.raises(NotAnImage, match=f"not a png, jpeg, webp or gif \\{why[:-1]}\\)"):
            checked(data, max_bytes=100)
    with pytest.raises(NotAnImage, match="101 bytes, more than the 100 allowed"):
        checked(b"\x89PNG\r\n\x1a\n" + b"\0" * 93, max_bytes=100)
