"""Appending inside a json/text document's stored bytes: property-tested against the decoded
append, and against the rule that nothing outside the appended arrays changes."""

from __future__ import annotations

import difflib
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave.core.documents import Outcome, SceneRef, Shape, append_urls, decode, replace_urls
from imgsave.core.json_splice import splice_append, splice_replace
from imgsave.errors import MalformedDocument

SHAPE = Shape()


def splice(raw: str, appended, double=False) -> str:
    return splice_append(
        raw,
        scenes_key="scenes",
        urls_key="imageUrls",
        identity_keys=("id", "index"),
        appended=appended,
        double_encoded=double,
    )


# App-owned values whose spelling json.dumps would change, written in as raw text.
# (5,001-digit numbers are in the exact test below: difflib is quadratic on long runs.)
ODD_VALUES = ["-0", "1e400", "6.50", '"caf\\u00e9"', '"a\\/b"', '"\\ud800"', "1" * 30]

scene_st = st.fixed_dictionaries(
    {"id": st.text("abc", min_size=1, max_size=4)},
    optional={
        "imageUrls": st.one_of(
            st.none(), st.lists(st.sampled_from(["https://a.test/1", "https://a.test/2"]))
        ),
        "title": st.sampled_from(ODD_VALUES),
        "nested": st.recursive(
            st.sampled_from(ODD_VALUES), lambda inner: st.lists(inner, max_size=3), max_leaves=5
        ),
    },
)


def render(value, indent, odd: bool) -> str:
    """JSON text with the ODD_VALUES placed raw (json.dumps would respell them)."""
    text = json.dumps(value, indent=indent)
    for odd_value in ODD_VALUES:
        text = text.replace(json.dumps(odd_value), odd_value if odd else json.dumps(odd_value))
    return text


@settings(max_examples=300, deadline=None)
@given(
    st.lists(scene_st, min_size=1, max_size=5, unique_by=lambda s: s["id"]),
    st.sampled_from([None, 2, "\t"]),
    st.data(),
)
def test_splicing_equals_the_decoded_append_and_changes_no_other_byte(scenes, indent, data):
    raw = render({"title": "x", "scenes": scenes, "tail": "1e400"}, indent, odd=True)
    document = decode(raw)
    additions = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from([s["id"] for s in scenes]),
                st.sampled_from(["https://a.test/1", "https://n.test/x", "https://n.test/y"]),
            ),
            max_size=6,
        )
    )
    edit = append_urls(document, SHAPE, [(SceneRef(0, sid), url) for sid, url in additions])
    result = splice(raw, edit.appended)
    assert decode(result).data == edit.document.data
    # Only insertions into the arrays, or `null` turned into one.
    matcher = difflib.SequenceMatcher(None, raw, result, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            continue
        assert op in ("insert", "replace"), (op, raw[a1:a2], result[b1:b2])
        assert op == "insert" or raw[a1:a2] in "null", (raw[a1:a2], result[b1:b2])
        inserted = result[b1:b2]
        assert set(inserted) <= set('[],"imageUrls:https/antesxy.12'), inserted


@settings(max_examples=200, deadline=None)
@given(
    st.lists(scene_st, min_size=1, max_size=5, unique_by=lambda s: s["id"]),
    st.sampled_from([None, 2]),
    st.booleans(),
    st.data(),
)
def test_replacing_in_place_equals_the_decoded_replace_and_changes_no_other_byte(
    scenes, indent, double, data
):
    """rehost's write: each old URL's bytes become the new URL's, in the same position."""
    raw = render({"title": "x", "scenes": scenes, "tail": "1e400"}, indent, odd=True)
    stored = json.dumps(raw) if double else raw
    document = decode(stored)
    replacements = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from([s["id"] for s in scenes]),
                st.sampled_from(["https://a.test/1", "https://a.test/2", "https://gone.test/x"]),
                st.sampled_from(["https://cdn.test/n1.png", "https://cdn.test/n2.png"]),
            ),
            max_size=5,
        )
    )
    edit = replace_urls(document, SHAPE, [(SceneRef(0, sid), o, n) for sid, o, n in replacements])
    result = splice_replace(
        stored,
        scenes_key="scenes",
        urls_key="imageUrls",
        identity_keys=("id", "index"),
        replaced=edit.replaced,
        double_encoded=double,
    )
    assert decode(result).data == edit.document.data
    assert decode(result).double_encoded == double
    if not double:
        # Nothing outside the URL arrays moves (a removed entry takes its comma with it).
        arrays = re.compile(r'"imageUrls"(\s*):(\s*)\[[^\]]*\]')
        assert arrays.sub("", raw) == arrays.sub("", result)
        removed = any(url is None for urls in edit.replaced.values() for url in urls.values())
        matcher = difflib.SequenceMatcher(None, raw, result, autojunk=False)
        for op, a1, a2, b1, b2 in matcher.get_opcodes() if not removed else ():
            if op != "equal":  # only the URL strings themselves
                assert set(raw[a1:a2]) <= set('"https:/a.test12gonex'), raw[a1:a2]
                assert set(result[b1:b2]) <= set('"https:/cdn.test/n12.png'), result[b1:b2]


def test_replace_keeps_the_position_and_only_replaces_what_is_still_there():
    doc = decode(json.dumps({"scenes": [{"id": "s", "imageUrls": ["a", "b", "c"]}]}))
    ref = SceneRef(1, "s")
    edit = replace_urls(doc, SHAPE, [(ref, "b", "B"), (ref, "x", "X"), (ref, "c", "a")])
    # "c" is a link whose copy "a" is already there: one image, so the link goes.
    assert edit.outcomes == (Outcome.ADDED, Outcome.ABSENT, Outcome.ADDED)
    assert edit.document.data["scenes"][0]["imageUrls"] == ["a", "B"]
    assert edit.replaced == {0: {1: "B", 2: None}}
    again = replace_urls(edit.document, SHAPE, [(ref, "b", "B")])
    assert again.outcomes == (Outcome.PRESENT,) and not again.changed


def test_a_link_present_twice_becomes_one_copy_and_converges():
    raw = '{"scenes": [{"id": "s", "imageUrls": ["L", "x", "L", "L"]}]}'
    ref = SceneRef(1, "s")
    edit = replace_urls(decode(raw), SHAPE, [(ref, "L", "C")])
    assert edit.document.data["scenes"][0]["imageUrls"] == ["C", "x"]
    spliced = splice_replace(
        raw, scenes_key="scenes", urls_key="imageUrls", identity_keys=("id", "index"),
        replaced=edit.replaced, double_encoded=False,
    )  # fmt: skip
    assert spliced == '{"scenes": [{"id": "s", "imageUrls": ["C", "x"]}]}'
    first = '{"scenes": [{"id": "s", "imageUrls": ["L", "L", "C"]}]}'
    edit = replace_urls(decode(first), SHAPE, [(ref, "L", "C")])
    spliced = splice_replace(
        first, scenes_key="scenes", urls_key="imageUrls", identity_keys=("id", "index"),
        replaced=edit.replaced, double_encoded=False,
    )  # fmt: skip
    assert spliced == '{"scenes": [{"id": "s", "imageUrls": ["C"]}]}'
    assert not replace_urls(decode(spliced), SHAPE, [(ref, "L", "C")]).changed


def test_what_a_round_trip_would_respell_is_kept_exactly():
    raw = (
        '{\n  "scenes": [\n    {"id": "s1", "x": -0, "big": 1e400, "e": "caf\\u00e9", '
        '"p": "a\\/b", "bad": "\\ud800", "imageUrls": [\n      "https://a.test/1"\n    ]},\n'
        '    {"id": "s2"}\n  ],\n  "n": ' + "9" * 5001 + "\n}"
    )
    edit = append_urls(
        decode(raw),
        SHAPE,
        [(SceneRef(1, "s1"), "https://n.test/x"), (SceneRef(2, "s2"), "https://n.test/y")],
    )
    assert splice(raw, edit.appended) == raw.replace(
        '"https://a.test/1"\n', '"https://a.test/1","https://n.test/x"\n'
    ).replace('{"id": "s2"}', '{"id": "s2","imageUrls":["https://n.test/y"]}')


def test_a_double_encoded_document_is_spliced_inside_its_string():
    inner = '{"scenes": [{"id": "s1", "imageUrls": []}], "x": -0}'
    raw = json.dumps(inner)
    edit = append_urls(decode(raw), SHAPE, [(SceneRef(1, "s1"), "https://n.test/x")])
    assert json.loads(splice(raw, edit.appended, double=True)) == inner.replace(
        "[]", '["https://n.test/x"]'
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            '{"scenes":[{"id":"s1","imageUrls":["https://old/1.png"],"imageUrls":[]}]}',
            "'imageUrls' 2 times",
        ),
        ('{"scenes":[{"id":"s1"}],"scenes":[{"id":"s1"}]}', "'scenes' 2 times"),
        ('{"scenes":[{"id":"s1","id":"s2"}]}', "'id' 2 times"),
    ],
)
def test_duplicate_keys_that_make_the_target_ambiguous_are_refused(raw, message):
    with pytest.raises(MalformedDocument, match=message):
        splice(raw, {0: ("https://n.test/x",)})
