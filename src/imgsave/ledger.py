"""What the logs say, per project and scene: each logged URL with its run, and the newest run.

Logs are not sorted by project, and a million lines do not fit comfortably in memory as Python
objects. So sightings are first spilled to temporary files partitioned by project (every line
of a project lands in the same partition), and the ledger is built one partition at a time:
memory is bounded by the partition size, not by the size of the logs.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .document import SceneRef
from .logread import Sighting

# About this much log text per partition; a partition's ledger then takes some tens of MB.
PARTITION_BYTES = 24 * 1024 * 1024
GZIP_RATIO = 8
MAX_PARTITIONS = 512
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
        paths = [Path(tmp) / f"part-{n:03d}.jsonl" for n in range(partitions)]
        handles = [path.open("w", encoding="utf-8") for path in paths]
        try:
            for sighting in sightings:
                bucket = zlib.crc32(sighting.project.encode()) % partitions
                handles[bucket].write(json.dumps(sighting, ensure_ascii=False) + "\n")
        finally:
            for handle in handles:
                handle.close()
        yield paths


def load(path: Path) -> Iterator[Sighting]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield Sighting(*json.loads(line))


@dataclass(slots=True)
class SceneHistory:
    urls: dict[str, str]  # each logged URL -> the run of its latest sighting
    newest: str  # the run the scene should hold


def build(sightings: Iterable[Sighting], run_gap: float) -> dict[str, dict[SceneRef, SceneHistory]]:
    """project -> scene -> history, from one partition's sightings."""
    groups: dict[tuple[str, SceneRef], list[Sighting]] = defaultdict(list)
    for sighting in sightings:
        groups[(sighting.project, SceneRef(sighting.scene, sighting.scene_id))].append(sighting)
    projects: dict[str, dict[SceneRef, SceneHistory]] = defaultdict(dict)
    for (project, ref), items in groups.items():
        projects[project][ref] = history(items, run_gap)
    return projects


def history(items: Sequence[Sighting], run_gap: float) -> SceneHistory:
    """One scene's runs and URLs. Lines without a run id are cut into runs per file: a gap of
    more than `run_gap` seconds between consecutive lines (by time) starts a new run."""
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
