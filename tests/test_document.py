"""The pure document edits: property tests over random documents, and the refusals."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave.core.documents import (
    Document,
    Outcome,
    SceneRef,
    Shape,
    append_urls,
    decode,
    encode,
    find,
    scenes,
)
from imgsave.errors import MalformedDocument

SHAPE = Shape()

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
app_keys = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("id", "index", "imageUrls", "imagePrompt")),
    json_value,
    max_size=3,
)


@st.composite
def documents(draw):
    count = draw(st.integers(1, 8))
    use_ids = draw(st.booleans())
    use_index = draw(st.booleans())
    order = draw(st.permutations(range(1, count + 1)))
    raw_scenes = []
    for position in range(count):
        scene = dict(draw(app_keys))
        if use_ids and draw(st.booleans()):
            scene["id"] = f"scene-{order[position]}"
        if use_index:
            scene["index"] = order[position]
        if draw(st.booleans()):
            scene["imageUrls"] = [
                f"https://img.test/{draw(st.integers(0, 5))}-{position}"
                for _ in range(draw(st.integers(0, 3)))
            ]
        scene["imagePrompt"] = draw(st.text(min_size=1, max_size=10))
        raw_scenes.append(scene)
    top = draw(app_keys)
    return {**top, "scenes": raw_scenes}


@settings(max_examples=300, deadline=None)
@given(documents(), st.data())
def test_append_changes_only_the_target_scenes_url_list(data, draw):
    before = copy.deepcopy(data)
    doc = Document(data)
    all_scenes = scenes(doc, SHAPE)
    target = draw.draw(st.sampled_from(all_scenes))
    ref = target.ref if draw.draw(st.booleans()) else SceneRef(target.ref.index)
    url = draw.draw(st.sampled_from(["https://img.test/new", *target.urls]))

    edit = append_urls(doc, SHAPE, [(ref, url)])

    assert data == before, "the input document must not be mutated"
    after = edit.document.data
    assert {k: v for k, v in after.items() if k != "scenes"} == {
        k: v for k, v in before.items() if k != "scenes"
    }
    for position, (old, new) in enumerate(zip(before["scenes"], after["scenes"], strict=True)):
        if position != target.position:
            assert new == old
            continue
        assert {k: v for k, v in new.items() if k != "imageUrls"} == {
            k: v for k, v in old.items() if k != "imageUrls"
        }
        old_urls = old.get("imageUrls") or []
        if url in old_urls:
            assert edit.outcomes == (Outcome.PRESENT,)
            assert new.get("imageUrls") == old.get("imageUrls")
        else:
            assert edit.outcomes == (Outcome.ADDED,)
            assert new["imageUrls"] == [*old_urls, url]


@settings(max_examples=200, deadline=None)
@given(documents(), st.lists(st.integers(0, 7), max_size=12), st.booleans())
def test_appending_is_idempotent_and_round_trips_in_both_forms(data, picks, double):
    text = encode(Document(data, double))
    doc = decode(text)
    assert values(encode(doc)) == values(text) == data
    assert encode(decode(encode(doc))) == encode(doc), "the spelling of numbers is kept"
    assert doc.double_encoded == double
    all_scenes = scenes(doc, SHAPE)
    additions = [(all_scenes[p % len(all_scenes)].ref, f"https://img.test/x{p}") for p in picks]
    once = append_urls(doc, SHAPE, additions).document
    twice = append_urls(once, SHAPE, additions)
    assert not twice.changed
    assert twice.document == once
    assert encode(decode(encode(once))) == encode(once)


def values(text: str) -> object:
    """What a JSON text means, with plain floats, unwrapping one level of string encoding."""
    value = json.loads(text)
    return json.loads(value) if isinstance(value, str) else value


def incident() -> dict:
    return {
        "scenes": [
            {"id": "scene-1", "index": 1, "imagePrompt": "a"},
            {"id": "scene-2", "index": 2, "imagePrompt": "b", "imageUrls": ["https://x/1"]},
            {"prompt": "c"},
        ]
    }


def test_scene_identity_by_id_then_index_then_position():
    found = scenes(Document(incident()), SHAPE)
    assert [s.ref for s in found] == [
        SceneRef(1, "scene-1"),
        SceneRef(2, "scene-2"),
        SceneRef(3, None),
    ]
    assert [s.prompt for s in found] == ["a", "b", "c"]
    assert find(found, SceneRef(2)).position == 1
    assert find(found, SceneRef(9, "scene-1")).position == 0
    assert find(found, SceneRef(1, "scene-9")) is None


def test_prompt_falls_back_through_the_configured_keys():
    doc = Document({"scenes": [{"description": "d"}, {"prompt": " ", "description": "e"}, {}]})
    assert [s.prompt for s in scenes(doc, SHAPE)] == ["d", "e", None]


def test_double_encoded_document_is_written_back_double_encoded():
    text = json.dumps(json.dumps(incident()))
    doc = decode(text)
    assert doc.double_encoded
    edit = append_urls(doc, SHAPE, [(SceneRef(1), "https://x/2")])
    written = json.loads(encode(edit.document))
    assert isinstance(written, str)
    assert json.loads(written)["scenes"][0]["imageUrls"] == ["https://x/2"]


def test_a_missing_scene_is_reported_not_guessed():
    edit = append_urls(Document(incident()), SHAPE, [(SceneRef(7), "https://x/3")])
    assert edit.outcomes == (Outcome.NO_SCENE,)
    assert not edit.changed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "document is null"),
        ("{not json", "document is not JSON"),
        ("[1, 2]", "document is list, not an object"),
        ("null", "document is null, not an object"),
        ('"[1]"', "document is list, not an object"),
        ('"{oops"', "document is a string that is not JSON"),
    ],
)
def test_undecodable_documents_are_refused(raw, message):
    with pytest.raises(MalformedDocument, match=message):
        decode(raw, project="p9")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no 'scenes' key"),
        ({"scenes": {"1": {}}}, "'scenes' is dict, not an array"),
        ({"scenes": [{}, "scene two"]}, "position 2 is str, not an object"),
        ({"scenes": [{"id": "a"}, {"id": "a"}]}, "share id 'a'"),
        ({"scenes": [{"index": 2}, {}]}, "share index 2"),
        ({"scenes": [{"index": "1"}]}, "'index' is not a positive integer"),
        ({"scenes": [{"index": True}]}, "'index' is not a positive integer"),
        ({"scenes": [{"id": 5}]}, "'id' is not a string"),
        ({"scenes": [{"imageUrls": "https://x"}]}, "'imageUrls' is not an array"),
    ],
)
def test_ambiguous_or_malformed_scenes_are_refused(data, message):
    with pytest.raises(MalformedDocument, match=message) as info:
        scenes(Document(data), SHAPE, project="p9")
    assert "project p9" in str(info.value)


def test_numbers_keep_their_exact_spelling():
    raw = '{"price":6.50,"tiny":1.0E-7,"big":123456789012345678901234567890,"scenes":[{}]}'
    edit = append_urls(decode(raw), SHAPE, [(SceneRef(1), "https://x/1")])
    assert encode(edit.document) == (
        '{"price":6.50,"tiny":1.0E-7,"big":123456789012345678901234567890,'
        '"scenes":[{"imageUrls":["https://x/1"]}]}'
    )
