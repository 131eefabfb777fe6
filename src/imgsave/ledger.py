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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .document import SceneRef
from .logread import Sighting

# About this much log text per partition; a partition's ledger then takes some tens of MB.
PARTITION_BYTES = 24 * 1024 * 1024
GZIP_RATIO = 8
MAX_PARTITIONS = 512
CHUNK = 4096
_NO_TS = float("-inf")


def partition_count(files: Sequence[Path]) -> int:
    total = 0
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        total += size * (GZIP_RATIO if path.suffix == ".gz" else 1)
    return max(1, min(MAX_PARTITIONS, total // PARTITION_BYTES + 1))


@contextmanager
def spilled(sightings: Iterable[Sighting], partitions: int) -> Iterator[list[Path]]:
    """Write sightings to `partitions` temporary files by a hash of their project."""
    with tempfile.TemporaryDirectory(prefix="imgsave-audit-") as tmp:
        paths = [Path(tmp) / f"part-{n:03d}.bin" for n in range(partitions)]
        handles = [path.open("wb") for path in paths]
        buffers: list[list[tuple]] = [[] for _ in range(partitions)]
        try:
            for sighting in sightings:
                bucket = zlib.crc32(sighting.project.encode()) % partitions
                buffer = buffers[bucket]
                buffer.append(tuple(sighting))
                if len(buffer) >= CHUNK:
                    _flush(buffer, handles[bucket])
            for buffer, handle in zip(buffers, handles, strict=True):
                _flush(buffer, handle)
        finally:
            for handle in handles:
                handle.close()
        yield paths


def _flush(buffer: list[tuple], handle: BinaryIO) -> None:
    # marshal: the fastest round trip for lists of tuples of str/int/float/None, and these
    # files never outlive this process (nor leave this Python version).
    if buffer:
        data = marshal.dumps(buffer)
        handle.write(len(data).to_bytes(8, "little") + data)
        buffer.clear()


def load(path: Path) -> Iterator[Sighting]:
    with path.open("rb") as handle:
        # Whole chunks through marshal.loads: marshal.load on a file reads piece by piece.
        while size := handle.read(8):
            chunk = marshal.loads(handle.read(int.from_bytes(size, "little")))
            yield from map(Sighting._make, chunk)


@dataclass(slots=True)
class SceneHistory:
    urls: dict[str, str]  # each logged URL -> the run of its latest sighting
    newest: str  # the run the scene should hold


def build(sightings: Iterable[Sighting], run_gap: float) -> dict[str, dict[SceneRef, SceneHistory]]:
    """project -> scene -> history, from one partition's sightings."""
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
    sightings: Iterable[Sighting], run_gap: float
) -> dict[str, dict[SceneRef, SceneHistory]]:
    groups: dict[tuple[str, int, str | None], list[Sighting]] = defaultdict(list)
    for sighting in sightings:
        groups[sighting[:3]].append(sighting)
    projects: dict[str, dict[SceneRef, SceneHistory]] = defaultdict(dict)
    for (project, scene, scene_id), items in groups.items():
        projects[project][SceneRef(scene, scene_id)] = history(items, run_gap)
    return projects


def history(items: Sequence[Sighting], run_gap: float) -> SceneHistory:
    """One scene's runs and URLs. Lines without a run id are cut into runs per file: a gap of
    more than `run_gap` seconds between consecutive lines (by time) starts a new run."""
    if len(items) == 1:  # most scenes of a big audit: skip the bookkeeping
        item = items[0]
        run = item.run if item.run is not None else f"{item.source}#0"
        return SceneHistory({item.url: run}, run)
    runs = [item.run for item in items]
    unnamed: dict[int, list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        if item.run is None:
            unnamed[item.source].append(position)
    for source, positions in unnamed.items():
        positions.sort(key=lambda p: (_ts(items[p]), p))
        number, last = 0, None
        for p in positions:
            ts = items[p].ts
            if ts is not None and last is not None and ts - last > run_gap:
                number += 1
            last = ts if ts is not None else last
            runs[p] = f"{source}#{number}"
    recency: dict[str, tuple[float, int]] = {}
    urls: dict[str, str] = {}
    latest: dict[str, tuple[float, int]] = {}
    for position, (item, run) in enumerate(zip(items, runs, strict=True)):
        ts = _ts(item)
        last_ts, first = recency.get(run, (_NO_TS, position))
        recency[run] = (max(last_ts, ts), first)
        if item.url not in latest or (ts, position) >= latest[item.url]:
            latest[item.url] = (ts, position)
            urls[item.url] = run
    newest = max(recency, key=recency.__getitem__)
    return SceneHistory(urls, newest)


def _ts(item: Sighting) -> float:
    return item.ts if item.ts is not None else _NO_TS
