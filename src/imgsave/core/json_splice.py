"""Appending (and replacing) URLs inside the stored text of a document, changing no other
byte. Pure.

PostgreSQL keeps `json` and `text` columns as the app wrote them: key order, duplicate keys,
`-0`, `1e400`, `\\u00e9`, `\\/`, pretty-printing, even `\\ud800`. Decoding such a document and
encoding it again would rewrite all of that. So for those columns imgsave finds the byte span of
the one array it appends to and splices the new URLs in; everything else stays as stored. Where
duplicate keys make the target ambiguous, it refuses instead of guessing.

The text has already been parsed whole (`document.decode`), so this scanner only has to find
spans in valid JSON, not validate it. It is iterative: nesting depth cannot exhaust the stack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imgsave.errors import MalformedDocument

_WS = " \t\n\r"


@dataclass(frozen=True)
class _Member:
    key: str
    value_start: int
    value_end: int


def splice_append(
    raw: str,
    *,
    scenes_key: str,
    urls_key: str,
    identity_keys: Sequence[str],
    appended: Mapping[int, Sequence[str]],
    double_encoded: bool,
    project: str = "?",
) -> str:
    """`raw` with each list of URLs appended to the scene at that position of the scenes array.

    A scene without the list gets the key added after its last member; a `null` list becomes
    the array. Refuses (MalformedDocument) where a key on the path appears twice.
    """
    spliced = _splice(
        json.loads(raw) if double_encoded else raw, scenes_key=scenes_key, urls_key=urls_key,
        identity_keys=identity_keys, appended=appended, project=project,
    )  # fmt: skip
    return _quote(spliced) if double_encoded else spliced


def splice_replace(
    raw: str,
    *,
    scenes_key: str,
    urls_key: str,
    identity_keys: Sequence[str],
    replaced: Mapping[int, Mapping[int, str | None]],
    double_encoded: bool,
    project: str = "?",
) -> str:
    """`raw` with the URL at each (scene position, list position) rewritten, or removed with
    its comma where the new value is None; no other byte moves."""
    replaced_text = _replace(
        json.loads(raw) if double_encoded else raw, scenes_key=scenes_key, urls_key=urls_key,
        identity_keys=identity_keys, replaced=replaced, project=project,
    )  # fmt: skip
    return _quote(replaced_text) if double_encoded else replaced_text


def _replace(
    text: str,
    *,
    scenes_key: str,
    urls_key: str,
    identity_keys: Sequence[str],
    replaced: Mapping[int, Mapping[int, str | None]],
    project: str,
) -> str:
    scenes_member = _only(_members(text, _ws(text, 0)), scenes_key, f"project {project}")
    if scenes_member is None:  # pragma: no cover - _only raised: the key is required here
        raise MalformedDocument(f"project {project}: the document has no {scenes_key!r} key")
    elements = _elements(text, scenes_member.value_start)
    edits: list[tuple[int, int, str]] = []
    for position, by_index in replaced.items():
        where = f"project {project}: scene at position {position + 1}"
        members = _members(text, elements[position][0])
        for key in identity_keys:
            _only(members, key, where, missing_ok=True)
        target = _only(members, urls_key, where)
        if target is None:  # pragma: no cover - _only raised: a replaced URL's list exists
            raise MalformedDocument(f"{where} has no {urls_key!r} key")
        items = _elements(text, target.value_start)
        gone = {index for index, url in by_index.items() if url is None}
        for index, url in by_index.items():
            if url is not None:
                start, end = items[index]
                edits.append((start, end, json.dumps(url)))
        edits += _removals(items, gone)
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _removals(items: Sequence[tuple[int, int]], gone: set[int]) -> list[tuple[int, int, str]]:
    """Spans that delete the elements at `gone` and their separators: a leading run up to the
    first element kept, each later one from the end of the element before it."""
    kept = [index for index in range(len(items)) if index not in gone]
    first = kept[0] if kept else len(items)
    spans: list[tuple[int, int, str]] = []
    if first > 0:
        end = items[first][0] if kept else items[-1][1]
        spans.append((items[0][0], end, ""))
    spans += [(items[i - 1][1], items[i][1], "") for i in sorted(gone) if i > first]
    return spans


def _quote(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    try:
        quoted.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only its escape can be stored
        quoted = json.dumps(text)
    return quoted


def _splice(
    text: str,
    *,
    scenes_key: str,
    urls_key: str,
    identity_keys: Sequence[str],
    appended: Mapping[int, Sequence[str]],
    project: str,
) -> str:
    top = _ws(text, 0)
    scenes_member = _only(_members(text, top), scenes_key, f"project {project}: the document")
    if scenes_member is None:  # pragma: no cover - _only raised: the key is required here
        raise MalformedDocument(f"project {project}: the document has no {scenes_key!r} key")
    elements = _elements(text, scenes_member.value_start)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), applied back to front
    for position, urls in appended.items():
        if not urls:
            continue
        start, _ = elements[position]
        where = f"project {project}: scene at position {position + 1}"
        members = _members(text, start)
        for key in identity_keys:
            _only(members, key, where, missing_ok=True)
        encoded = ",".join(json.dumps(url) for url in urls)
        target = _only(members, urls_key, where, missing_ok=True)
        if target is None:
            entry = f"{json.dumps(urls_key)}:[{encoded}]"
            if members:
                at = members[-1].value_end
                edits.append((at, at, "," + entry))
            else:
                edits.append((start + 1, start + 1, entry))
        elif text.startswith("null", target.value_start):
            edits.append((target.value_start, target.value_end, f"[{encoded}]"))
        else:
            items = _elements(text, target.value_start)
            if items:
                at = items[-1][1]
                edits.append((at, at, "," + encoded))
            else:
                at = target.value_start + 1
                edits.append((at, at, encoded))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _only(
    members: list[_Member], key: str, where: str, *, missing_ok: bool = False
) -> _Member | None:
    found = [m for m in members if m.key == key]
    if len(found) > 1:
        raise MalformedDocument(
            f"{where} has the key {key!r} {len(found)} times; refusing to guess which is meant"
        )
    if not found and not missing_ok:
        raise MalformedDocument(f"{where} has no {key!r} key")
    return found[0] if found else None


def _ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _skip_string(text: str, i: int) -> int:
    """`text[i]` is the opening quote; returns the index after the closing one."""
    i += 1
    while True:
        quote = text.index('"', i)
        backslashes = 0
        j = quote - 1
        while text[j] == "\\":
            backslashes += 1
            j -= 1
        if backslashes % 2 == 0:
            return quote + 1
        i = quote + 1


def _skip_value(text: str, i: int) -> int:
    """The index just after the JSON value starting at `text[i]`."""
    if text[i] == '"':
        return _skip_string(text, i)
    if text[i] not in "[{":
        while i < len(text) and text[i] not in ",]}" + _WS:
            i += 1
        return i
    depth = 0
    while True:
        char = text[i]
        if char == '"':
            i = _skip_string(text, i)
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def _members(text: str, i: int) -> list[_Member]:
    """The members of the object starting at `text[i]`, with their values' spans."""
    if text[i] != "{":
        raise MalformedDocument("expected an object")
    members: list[_Member] = []
    i = _ws(text, i + 1)
    if text[i] == "}":
        return members
    while True:
        key_end = _skip_string(text, i)
        key = json.loads(text[i:key_end])
        i = _ws(text, key_end)  # at the colon
        start = _ws(text, i + 1)
        end = _skip_value(text, start)
        members.append(_Member(key, start, end))
        i = _ws(text, end)
        if text[i] == "}":
            return members
        i = _ws(text, i + 1)  # past the comma


def _elements(text: str, i: int) -> list[tuple[int, int]]:
    """The spans of the elements of the array starting at `text[i]`."""
    if text[i] != "[":
        raise MalformedDocument("expected an array")
    spans: list[tuple[int, int]] = []
    i = _ws(text, i + 1)
    if text[i] == "]":
        return spans
    while True:
        end = _skip_value(text, i)
        spans.append((i, end))
        i = _ws(text, end)
        if text[i] == "]":
            return spans
        i = _ws(text, i + 1)
