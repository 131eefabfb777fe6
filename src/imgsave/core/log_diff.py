"""What the logs say each scene should hold against what its document holds: audit's diff.

`diff_project` classifies one project's logged URLs (lost, stale, orphaned, present), in the
worker processes of a big audit as in a small one; `lost_images` turns its answer into the
report. The document's scenes are read as audit needs them: found by id or index, with their
URLs, in bulk.

Audit reads every document the logs name (50,000 of them for a month of an app's logs) and
only looks: `documents.decode` and `documents.scenes` keep every number exactly and build a
Scene per scene so that a write can go back byte for byte, which costs more than the rest of
the audit. Here orjson parses the document and the scenes are indexed in place. Whatever is
not an everyday document (a string holding the JSON, NaN, integers beyond 64 bits, deep
nesting, an invalid scene) is left to `documents`, so the answer and every error are theirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from imgsave.core.documents import Scene, SceneRef, Shape, decode, scenes
from imgsave.core.log_history import SceneHistory
from imgsave.errors import ImgsaveError

# (project, scene index, scene id, url)
Row = tuple[str, int, str | None, str]


@dataclass
class Diff:
    lost: list[Row] = field(default_factory=list)
    stale: list[Row] = field(default_factory=list)
    orphaned: list[Row] = field(default_factory=list)
    present: int = 0
    # Logged URLs absent from their scene whose partner (log_history.SceneHistory) is there.
    represented: set[str] = field(default_factory=set)
    # Scenes that hold no image and were never logged: candidates for --regenerate.
    empty_scenes: list[tuple[str, SceneRef]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def diff_project(
    project: str,
    documents: Mapping[str, str | None],
    logged: Mapping[SceneRef, SceneHistory],
    shape: Shape,
    out: Diff,
) -> None:
    """Classify one project's logged URLs against its document (`documents` lacks it when
    the project does not exist)."""
    if project not in documents:
        _not_found(project, logged, out)
        return
    try:
        table = scene_table(documents[project], shape, project=project)
    except ImgsaveError as exc:
        out.errors.append(f"{exc} (not audited)")
        return
    seen = set()
    for ref, scene_log in logged.items():
        position = table.find(ref)
        if position is None:
            out.orphaned += ((project, ref.index, ref.id, u) for u in scene_log.urls)
            continue
        seen.add(position)
        held = table.urls(position)
        missing = [url for url in scene_log.urls if url not in held]
        out.present += len(scene_log.urls) - len(missing)
        if not missing:
            continue
        index, scene_id = table.indexes[position], table.ids[position]
        for url in missing:
            current = scene_log.urls[url]
            if scene_log.partners.get(url, set()) & held and (current or url in scene_log.copied):
                # Its copy (or the link it copies) holds its place: one image, present, also
                # once the rehost that made the copy superseded the link.
                out.present += 1
                out.represented.add(url)
            elif current:
                out.lost.append((project, index, scene_id, url))
            else:
                out.stale.append((project, index, scene_id, url))
    for position in range(len(table.indexes)):
        if position not in seen and not table.urls(position) and table.prompt(position):
            out.empty_scenes.append((project, table.ref(position)))


def _not_found(project: str, logged: Mapping[SceneRef, SceneHistory], out: Diff) -> None:
    """A project that does not exist: every URL logged for it is orphaned; with nothing logged
    for it, it was asked for by name, and is an error."""
    for ref, scene_log in logged.items():
        out.orphaned += ((project, ref.index, ref.id, u) for u in scene_log.urls)
    if not logged:
        out.errors.append(f"project {project} not found")


@dataclass(slots=True)
class SceneTable:
    indexes: list[int]
    ids: list[str | None]
    url_lists: list[Sequence[object]]
    by_id: dict[str, int]
    by_index: dict[int, int]
    raw: list[dict[str, Any]] | None  # the raw scenes, for their prompt (None: from Scenes)
    prompts: list[str | None] | None = None
    shape: Shape | None = None

    def find(self, ref: SceneRef) -> int | None:
        """The position of the scene `ref` names (documents.find's rule)."""
        if ref.id is not None:
            return self.by_id.get(ref.id)
        return self.by_index.get(ref.index)

    def urls(self, position: int) -> set[str]:
        return {u for u in self.url_lists[position] if isinstance(u, str)}

    def ref(self, position: int) -> SceneRef:
        return SceneRef(self.indexes[position], self.ids[position])

    def prompt(self, position: int) -> str | None:
        if self.prompts is not None:
            return self.prompts[position]
        raw, shape = self.raw, self.shape
        assert raw is not None and shape is not None
        for key in shape.prompt_keys:
            value = raw[position].get(key)
            if isinstance(value, str) and value.strip():
                return value
        return None


def scene_table(raw: str | None, shape: Shape, *, project: str) -> SceneTable:
    """The scenes of a stored document; raises what `documents.scenes(decode(raw))` raises."""
    table = _quick(raw, shape)
    if table is None:
        table = _from_scenes(scenes(decode(raw, project=project), shape, project=project))
    return table


# Over the ceilings on purpose: the audit reads every document through this loop (scripts/
# bench.py audit); each `return None` hands a document that is not the plain case to
# documents.scenes, and a function per scene would cost a call per scene.
def _quick(raw: str | None, shape: Shape) -> SceneTable | None:  # noqa: C901, PLR0911
    # simplejson stops nesting sooner than orjson (1,024): deep documents are its to judge.
    if raw is None or raw.count("[") + raw.count("{") >= 512:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict:
        return None
    raw_scenes = data.get(shape.scenes_key)
    if type(raw_scenes) is not list:
        return None
    id_key, index_key, urls_key = shape.id_key, shape.index_key, shape.urls_key
    indexes: list[int] = []
    ids: list[str | None] = []
    url_lists: list[Sequence[object]] = []
    by_id: dict[str, int] = {}
    by_index: dict[int, int] = {}
    for position, scene in enumerate(raw_scenes):
        if type(scene) is not dict:
            return None
        scene_id = scene.get(id_key)
        index = scene.get(index_key)
        urls = scene.get(urls_key)
        if index is None:
            index = position + 1
        # A float may be an integer orjson could not hold: documents decides.
        elif type(index) is not int or index < 1:
            return None
        if scene_id is not None:
            if type(scene_id) is not str or scene_id in by_id:
                return None
            by_id[scene_id] = position
        if index in by_index:
            return None
        by_index[index] = position
        if urls is None:
            urls = ()
        elif type(urls) is not list:
            return None
        indexes.append(index)
        ids.append(scene_id)
        url_lists.append(urls)
    return SceneTable(indexes, ids, url_lists, by_id, by_index, raw_scenes, shape=shape)


def _from_scenes(all_scenes: list[Scene]) -> SceneTable:
    return SceneTable(
        indexes=[s.ref.index for s in all_scenes],
        ids=[s.ref.id for s in all_scenes],
        url_lists=[s.urls for s in all_scenes],
        by_id={s.ref.id: s.position for s in all_scenes if s.ref.id is not None},
        by_index={s.ref.index: s.position for s in all_scenes},
        raw=None,
        prompts=[s.prompt for s in all_scenes],
    )
