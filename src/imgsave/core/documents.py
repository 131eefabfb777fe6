"""Pure functions over the app's document: parse it, find scenes, append URLs. No I/O here.

The document belongs to the app. Everything imgsave does to it is "append this URL to that
scene's list if it is not there yet"; every other key, anywhere, is left exactly as it was.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import simplejson  # type: ignore[import-untyped]

from imgsave.errors import MalformedDocument

DEFAULT_PROMPT_KEYS = ("imagePrompt", "prompt", "description")


@dataclass(frozen=True)
class Shape:
    """The key names the app uses inside its document."""

    scenes_key: str = "scenes"
    id_key: str = "id"
    index_key: str = "index"
    prompt_keys: tuple[str, ...] = DEFAULT_PROMPT_KEYS
    urls_key: str = "imageUrls"


@dataclass(frozen=True)
class SceneRef:
    """How a log line or a plan names a scene: its effective index and, when it has one, its id."""

    index: int
    id: str | None = None

    def __str__(self) -> str:
        return f"scene {self.index}" + (f" ({self.id})" if self.id is not None else "")


@dataclass(frozen=True)
class Scene:
    ref: SceneRef
    position: int
    prompt: str | None
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Document:
    """A decoded document and the form it was stored in, so it can be written back the same way."""

    data: dict[str, Any]
    double_encoded: bool = False


class Outcome(enum.Enum):
    ADDED = "added"
    PRESENT = "present"
    NO_SCENE = "no_scene"
    # replace_urls: the URL to replace is no longer in its scene (someone changed it meanwhile).
    ABSENT = "absent"


@dataclass(frozen=True)
class Edit:
    """The result of appending: the new document and what happened to each requested URL."""

    document: Document
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)
    # Scene position -> the URLs appended to its list, in order (what a text splice inserts).
    appended: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # Scene position -> {position in its URL list: the URL now there, or None where the entry
    # is removed} (replace_urls), positions in the list as it was.
    replaced: dict[int, dict[int, str | None]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return Outcome.ADDED in self.outcomes


def decode(raw: str | None, *, project: str = "?") -> Document:
    """Parse the stored text of a document (jsonb, json or text column), in either form.

    Some rows hold the document as a JSON string inside jsonb; it is unwrapped once and
    remembered, so `encode` writes it back double-encoded as it was found.
    """
    if raw is None:
        raise MalformedDocument(f"project {project}: document is null")
    try:
        # Decimals, not floats: the app's 6.50 must be written back as 6.50, not 6.5.
        value = simplejson.loads(raw, use_decimal=True, parse_int=_parse_int)
    except ValueError as exc:
        raise MalformedDocument(f"project {project}: document is not JSON ({exc})") from None
    except RecursionError:
        raise MalformedDocument(f"project {project}: document is nested too deeply") from None
    double = False
    if isinstance(value, str):
        double = True
        try:
            value = simplejson.loads(value, use_decimal=True, parse_int=_parse_int)
        except RecursionError:
            raise MalformedDocument(f"project {project}: document is nested too deeply") from None
        except ValueError as exc:
            raise MalformedDocument(
                f"project {project}: document is a string that is not JSON ({exc})"
            ) from None
    if not isinstance(value, dict):
        kind = type(value).__name__ if value is not None else "null"
        raise MalformedDocument(f"project {project}: document is {kind}, not an object")
    return Document(value, double)


def _parse_int(digits: str) -> int | Decimal:
    # Python refuses int() of more than 4,300 digits; JSON has no such limit, and the app's
    # number is kept (as a Decimal, written back digit for digit) rather than the document lost.
    return int(digits) if len(digits) <= 4000 else Decimal(digits)


def encode(document: Document) -> str:
    try:
        text = simplejson.dumps(
            document.data, use_decimal=True, ensure_ascii=False, separators=(",", ":")
        )
    except RecursionError:
        raise MalformedDocument("document is nested too deeply to write back") from None
    return str(simplejson.dumps(text, ensure_ascii=False)) if document.double_encoded else text


def scenes(document: Document, shape: Shape, *, project: str = "?") -> list[Scene]:
    """The document's scenes with their effective identities; refuses ambiguous documents."""
    raw_scenes = _raw_scenes(document.data, shape, project)
    found: list[Scene] = []
    by_id: dict[str, int] = {}
    by_index: dict[int, int] = {}
    for position, raw in enumerate(raw_scenes):
        where = f"project {project}: scene at position {position + 1}"
        if not isinstance(raw, dict):
            raise MalformedDocument(f"{where} is {type(raw).__name__}, not an object")
        scene_id = raw.get(shape.id_key)
        if scene_id is not None and not isinstance(scene_id, str):
            raise MalformedDocument(f"{where}: {shape.id_key!r} is not a string")
        index = raw.get(shape.index_key)
        if index is None:
            index = position + 1
        elif isinstance(index, bool) or not isinstance(index, int) or index < 1:
            raise MalformedDocument(f"{where}: {shape.index_key!r} is not a positive integer")
        # Duplicate indexes are refused even when ids differ: logs and --scenes name scenes by
        # index, and a URL must never be saved into a scene chosen by guesswork.
        if scene_id is not None and scene_id in by_id:
            raise MalformedDocument(
                f"project {project}: scenes at positions {by_id[scene_id] + 1} and "
                f"{position + 1} share id {scene_id!r}; refusing to guess which one is meant"
            )
        if index in by_index:
            raise MalformedDocument(
                f"project {project}: scenes at positions {by_index[index] + 1} and "
                f"{position + 1} share index {index}; refusing to guess which one is meant"
            )
        if scene_id is not None:
            by_id[scene_id] = position
        by_index[index] = position
        found.append(
            Scene(
                ref=SceneRef(index, scene_id),
                position=position,
                prompt=_prompt(raw, shape),
                urls=tuple(u for u in _url_list(raw, shape, where) if isinstance(u, str)),
            )
        )
    return found


def find(all_scenes: Sequence[Scene], ref: SceneRef) -> Scene | None:
    """The scene `ref` names: by id when the reference carries one, else by effective index."""
    for scene in all_scenes:
        if ref.id is not None:
            if scene.ref.id == ref.id:
                return scene
        elif scene.ref.index == ref.index:
            return scene
    return None


def append_urls(
    document: Document,
    shape: Shape,
    additions: Iterable[tuple[SceneRef, str]],
    *,
    project: str = "?",
) -> Edit:
    """Append each URL to its scene's list unless already there; touch nothing else.

    Only the containers on the path to a changed list are copied, so the input is never mutated
    and unchanged scenes are shared, not deep-copied.
    """
    all_scenes = scenes(document, shape, project=project)
    raw_scenes = document.data[shape.scenes_key]
    new_lists: dict[int, list[Any]] = {}
    appended: dict[int, list[str]] = {}
    outcomes: list[Outcome] = []
    for ref, url in additions:
        scene = find(all_scenes, ref)
        if scene is None:
            outcomes.append(Outcome.NO_SCENE)
            continue
        pos = scene.position
        current = new_lists.get(pos)
        if current is None:
            current = list(_url_list(raw_scenes[pos], shape, ""))
        if url in current:
            outcomes.append(Outcome.PRESENT)
            continue
        current.append(url)
        new_lists[pos] = current
        appended.setdefault(pos, []).append(url)
        outcomes.append(Outcome.ADDED)
    if not new_lists:
        return Edit(document, tuple(outcomes))
    return Edit(
        _with_lists(document, shape, new_lists),
        tuple(outcomes),
        {pos: tuple(urls) for pos, urls in appended.items()},
    )


def replace_urls(
    document: Document,
    shape: Shape,
    replacements: Iterable[tuple[SceneRef, str, str]],
    *,
    project: str = "?",
) -> Edit:
    """Put each new URL where its old one is, only if the old one is still there; touch nothing
    else. A copy and the link it replaces are one image, never both in a scene: the old URL's
    first entry becomes the new one and its other entries go, or, when the new URL is already
    in the scene (a naive writer put the link back beside its copy), every entry of the old one
    goes. ADDED when the scene changed, ABSENT when the old URL is gone, PRESENT when only the
    new one is there."""
    all_scenes = scenes(document, shape, project=project)
    raw_scenes = document.data[shape.scenes_key]
    # Each touched scene's list as it was, with entries overwritten or set to None (removed).
    lists: dict[int, list[Any]] = {}
    replaced: dict[int, dict[int, str | None]] = {}
    outcomes: list[Outcome] = []
    for ref, old, new in replacements:
        scene = find(all_scenes, ref)
        if scene is None:
            outcomes.append(Outcome.NO_SCENE)
            continue
        pos = scene.position
        current = lists.get(pos)
        if current is None:
            current = list(_url_list(raw_scenes[pos], shape, ""))
        olds = [at for at, url in enumerate(current) if url == old]
        if not olds:
            outcomes.append(Outcome.PRESENT if new in current else Outcome.ABSENT)
            continue
        changes = replaced.setdefault(pos, {})
        if new not in current:
            current[olds[0]] = changes[olds[0]] = new
            olds = olds[1:]
        for at in olds:
            current[at] = changes[at] = None
        lists[pos] = current
        outcomes.append(Outcome.ADDED)
    if not lists:
        return Edit(document, tuple(outcomes))
    new_lists = {pos: [url for url in urls if url is not None] for pos, urls in lists.items()}
    return Edit(_with_lists(document, shape, new_lists), tuple(outcomes), replaced=replaced)


def _with_lists(document: Document, shape: Shape, new_lists: dict[int, list[Any]]) -> Document:
    """The document with these scenes' URL lists; only the containers on the way are copied."""
    raw_scenes = document.data[shape.scenes_key]
    new_scenes = list(raw_scenes)
    for pos, urls in new_lists.items():
        new_scenes[pos] = {**raw_scenes[pos], shape.urls_key: urls}
    return Document({**document.data, shape.scenes_key: new_scenes}, document.double_encoded)


def _raw_scenes(data: dict[str, Any], shape: Shape, project: str) -> list[Any]:
    if shape.scenes_key not in data:
        raise MalformedDocument(f"project {project}: document has no {shape.scenes_key!r} key")
    raw = data[shape.scenes_key]
    if not isinstance(raw, list):
        raise MalformedDocument(
            f"project {project}: {shape.scenes_key!r} is {type(raw).__name__}, not an array"
        )
    return raw


def _prompt(raw: dict[str, Any], shape: Shape) -> str | None:
    for key in shape.prompt_keys:
        value = raw.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _url_list(raw: dict[str, Any], shape: Shape, where: str) -> list[Any]:
    value = raw.get(shape.urls_key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedDocument(f"{where}: {shape.urls_key!r} is not an array")
    return value
