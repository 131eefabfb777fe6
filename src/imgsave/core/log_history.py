"""What the logs say, per project and scene: each logged URL with its run, and the newest run.

Logs are not sorted by project, and a million lines do not fit comfortably in memory as Python
objects. So sightings are first spilled to temporary files partitioned by project (every line
of a project lands in the same partition), and the ledger is built one partition at a time:
memory is bounded by the partition size, not by the size of the logs.
"""

from __future__ import annotations

import gc
import marshal
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from imgsave.core.documents import SceneRef


class Sighting(NamedTuple):
    """One log line's claim: `url` was generated for this scene of this project.

    `run` is the run id the line carries, or None (then runs are cut by time gaps per scene,
    across every file read). `replacing` says what a run of this source does to the scene:
    imgsave's own runs only ever append (False); another system's later run is taken to have
    replaced the scene's images (True). `replaces` names URLs this image explicitly stands in
    for (imgsave's `repair --regenerate` of an expired link, or `rehost`'s copy of a link);
    `copy` says the image is a copy of what it replaces (rehost: the same image, not a new one).
    """

    project: str
    scene: int
    scene_id: str | None
    url: str
    run: str | None
    ts: float | None
    replacing: bool
    replaces: tuple[str, ...] = ()
    copy: bool = False


# About this much log text per partition; a partition's ledger then takes some tens of MB.
PARTITION_BYTES = 24 * 1024 * 1024
GZIP_RATIO = 8
MAX_PARTITIONS = 512
CHUNK = 4096
_NO_TS = float("-inf")


def partition_count(files: Sequence[Path], *, also: int = 0) -> int:
    """Partitions for `files` and `also` bytes more of sightings from elsewhere (the ledger)."""
    total = also
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        total += size * (GZIP_RATIO if path.suffix == ".gz" else 1)
    return max(1, min(MAX_PARTITIONS, total // PARTITION_BYTES + 1))


def partition_of(project: str, partitions: int) -> int:
    return zlib.crc32(project.encode()) % partitions


@contextmanager
def spilled(sightings: Iterable[Sighting], partitions: int) -> Iterator[list[Path]]:
    """Write sightings to `partitions` temporary files by a hash of their project."""
    with tempfile.TemporaryDirectory(prefix="imgsave-audit-") as tmp:
        paths = [Path(tmp) / f"part-{n:03d}.bin" for n in range(partitions)]
        handles = [path.open("wb") for path in paths]
        buffers: list[list[tuple[Any, ...]]] = [[] for _ in range(partitions)]
        try:
            for sighting in sightings:
                bucket = partition_of(sighting.project, partitions)
                buffer = buffers[bucket]
                buffer.append(tuple(sighting))
                if len(buffer) >= CHUNK:
                    write_chunk(buffer, handles[bucket])
            for buffer, handle in zip(buffers, handles, strict=True):
                write_chunk(buffer, handle)
        finally:
            for handle in handles:
                handle.close()
        yield paths


def write_chunk(buffer: list[tuple[Any, ...]], handle: BinaryIO) -> None:
    """Append `buffer`'s tuples to a spill file as one chunk (`load_tuples` reads it); empty it."""
    # marshal: the fastest round trip for lists of tuples of str/int/float/None, and these
    # files never outlive this process (nor leave this Python version).
    if buffer:
        data = marshal.dumps(buffer)
        handle.write(len(data).to_bytes(8, "little") + data)
        buffer.clear()


def load(path: Path) -> Iterator[Sighting]:
    for chunk in load_tuples(path):
        yield from map(Sighting._make, chunk)


def load_tuples(path: Path) -> Iterator[list[tuple[Any, ...]]]:
    """The spilled sightings as plain tuples, chunk by chunk (`build` takes them as they are)."""
    with path.open("rb") as handle:
        # Whole chunks through marshal.loads: marshal.load on a file reads piece by piece.
        while size := handle.read(8):
            yield marshal.loads(handle.read(int.from_bytes(size, "little")))


@dataclass(slots=True)
class SceneHistory:
    # Each logged URL -> whether the scene is still meant to hold it (False: superseded).
    urls: dict[str, bool]
    # URL -> the URLs it is one image with: a copy and the link it replaced (rehost), a new
    # image and the dead link it stands in for (--regenerate). While one of them is in the
    # scene, the image is there: the other is neither lost nor ever added beside it.
    partners: dict[str, set[str]] = field(default_factory=dict)
    # URLs a copy stands in for (rehost): while the copy is in the scene, such a link is the
    # same image, present, though the rehost superseded it. A regenerated dead link is not.
    copied: set[str] = field(default_factory=set)


def build(
    sightings: Iterable[Sighting | tuple[Any, ...]], run_gap: float
) -> dict[str, dict[SceneRef, SceneHistory]]:
    """project -> scene -> history, from one partition's sightings (or their plain tuples)."""
    # Hundreds of thousands of small, acyclic containers: the cyclic collector would rescan
    # them over and over (half the build time) and could never free one.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(sightings, run_gap)
    finally:
        if was_enabled:
            gc.enable()


def _build(
    sightings: Iterable[Sighting | tuple[Any, ...]], run_gap: float
) -> dict[str, dict[SceneRef, SceneHistory]]:
    # One history per scene *index*: another system's log rarely names the scene's id, and its
    # runs must still be able to supersede imgsave's lines for the same scene.
    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for sighting in sightings:
        groups[sighting[:2]].append(sighting)
    projects: dict[str, dict[SceneRef, SceneHistory]] = defaultdict(dict)
    refs: dict[int, SceneRef] = {}  # one SceneRef per index for the scenes no line names by id
    for (project, scene), items in groups.items():
        if any(item[2] for item in items):
            ids = [(_ts(item), n, item[2]) for n, item in enumerate(items) if item[2]]
            ref = SceneRef(scene, max(ids)[2])
        elif (shared := refs.get(scene)) is not None:
            ref = shared
        else:
            ref = refs[scene] = SceneRef(scene)
        projects[project][ref] = _quick(items, run_gap) or history(
            [Sighting._make(item) for item in items], run_gap
        )
    return projects


def _quick(items: Sequence[tuple[Any, ...]], run_gap: float) -> SceneHistory | None:
    """`history(items)` for the scenes most logs are made of, without its bookkeeping; None
    for any other (a property test holds the two to the same answer).

    Lines that replace nothing explicitly, either all of imgsave's own (runs that add: every
    URL stays) or all another system's, timed, without run ids, within `run_gap` of each other
    (one run: every URL stays).
    """
    first = items[0]
    if len(items) == 1:
        return None if first[7] else SceneHistory({first[3]: True})
    if first[6]:
        low = high = first[5]
        if low is None:
            return None
        for item in items:
            ts = item[5]
            if item[7] or item[6] is not True or item[4] is not None or ts is None:
                return None
            if ts < low:
                low = ts
            elif ts > high:
                high = ts
        if high - low > run_gap:
            return None
    else:
        for item in items:
            if item[7] or item[6] is not False:
                return None
    return SceneHistory(dict.fromkeys([item[3] for item in items], True))


def history(items: Sequence[Sighting], run_gap: float) -> SceneHistory:
    """Which of one scene's logged URLs the scene should still hold.

    Runs: a line's own run id, else runs are cut by time per scene across every file read (a
    rotated log must not split one run in two): a gap of more than `run_gap` seconds between
    consecutive lines starts a new run. A run that *replaced* the scene's images (another
    system's run) supersedes every URL of the runs before it; runs that *add* (imgsave's own:
    reruns, top-ups, --force, two at once) supersede nothing. A URL that an image of imgsave
    explicitly `replaces` is superseded too.
    """
    replaced = {old for item in items for old in item.replaces}
    copied = {old for item in items if item.copy for old in item.replaces}
    partners: dict[str, set[str]] = {}
    for item in items:
        for old in item.replaces:
            partners.setdefault(item.url, set()).add(old)
            partners.setdefault(old, set()).add(item.url)
    if len(items) == 1:  # most scenes of a big audit: skip the bookkeeping
        return SceneHistory({items[0].url: items[0].url not in replaced}, partners, copied)
    runs: list[tuple[bool, str]] = [(item.replacing, item.run or "") for item in items]
    unnamed = sorted(
        (p for p, item in enumerate(items) if item.run is None),
        key=lambda p: (_ts(items[p]), p),
    )
    number, last = 0, None
    for p in unnamed:
        ts = items[p].ts
        if ts is not None and last is not None and ts - last > run_gap:
            number += 1
        last = ts if ts is not None else last
        runs[p] = (items[p].replacing, f"#{number}")
    recency: dict[tuple[bool, str], tuple[float, int]] = {}
    latest: dict[str, tuple[tuple[float, int], tuple[bool, str]]] = {}
    for position, (item, run) in enumerate(zip(items, runs, strict=True)):
        ts = _ts(item)
        last_ts, first = recency.get(run, (_NO_TS, position))
        recency[run] = (max(last_ts, ts), first)
        if item.url not in latest or (ts, position) >= latest[item.url][0]:
            latest[item.url] = ((ts, position), run)
    replacing = [recency[run] for run in recency if run[0]]
    cutoff = max(replacing) if replacing else None
    return SceneHistory(
        {
            url: url not in replaced and (cutoff is None or recency[run] >= cutoff)
            for url, (_, run) in latest.items()
        },
        partners,
        copied,
    )


def _ts(item: Sighting | tuple[Any, ...]) -> float:
    ts: float | None = item[5]
    return ts if ts is not None else _NO_TS
