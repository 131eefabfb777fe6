"""`imgsave audit`: diff what the logs say was generated against what the documents hold.

For each (project, scene) the logged URLs are grouped into runs; the newest run is what the
scene should hold. Absent URLs of the newest run are lost, absent URLs of older runs are stale
(the user regenerated), URLs of projects or scenes that no longer exist are orphaned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .connect import open_database
from .db import Database
from .document import SceneRef, Shape, decode, find, scenes
from .errors import EXIT_FINDINGS, EXIT_OK, ImgsaveError
from .ledger import SceneHistory, build, load, partition_count, spilled
from .logread import LogQuery, ReadStats, expand_paths, read_sightings

BATCH = 500


@dataclass(frozen=True, slots=True)
class Finding:
    project: str
    scene: int
    scene_id: str | None
    url: str

    def to_json(self) -> dict:
        return {
            "project": self.project,
            "scene": self.scene,
            "scene_id": self.scene_id,
            "url": self.url,
        }


@dataclass
class AuditReport:
    stats: ReadStats
    lost: list[Finding] = field(default_factory=list)
    stale: list[Finding] = field(default_factory=list)
    orphaned: list[Finding] = field(default_factory=list)
    expired: list[Finding] = field(default_factory=list)
    present: int = 0
    unchecked: int = 0
    errors: list[str] = field(default_factory=list)
    # Scenes that hold no image and were never logged: candidates for --regenerate.
    empty_scenes: list[tuple[str, SceneRef]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if self.lost or self.expired or self.errors else EXIT_OK

    def summary(self) -> dict:
        return {
            "lost": len(self.lost),
            "stale": len(self.stale),
            "orphaned": len(self.orphaned),
            "present": self.present,
            "expired": len(self.expired),
            "lines_skipped": self.stats.lines_skipped,
        }

    def to_json(self) -> dict:
        return {
            "summary": self.summary(),
            "lost": [f.to_json() for f in self.lost],
            "stale": [f.to_json() for f in self.stale],
            "orphaned": [f.to_json() for f in self.orphaned],
            "expired": [f.to_json() for f in self.expired],
            "skipped": self.stats.to_json(),
            "errors": self.errors,
        }


async def audit(
    db: Database,
    query: LogQuery,
    *,
    log_dir: Path,
    shape: Shape,
    check_urls: bool = False,
) -> AuditReport:
    stats = ReadStats()
    report = AuditReport(stats)
    files = expand_paths(query.paths, log_dir)
    gap = query.run_gap.total_seconds()
    seen: set[str] = set()
    with spilled(read_sightings(files, query, stats), partition_count(files)) as parts:
        for part in parts:
            logged = build(load(part), gap)
            seen.update(logged)
            await _classify_all(db, logged, shape, report)
    # Projects named on the command line that no log mentions are still looked at: they may
    # not exist, or hold empty scenes for --regenerate.
    unseen = {project: {} for project in query.only_projects - seen}
    await _classify_all(db, unseen, shape, report)
    if check_urls and report.lost:
        from .urlcheck import check_urls as check

        alive = await check(f.url for f in report.lost)
        still_lost = []
        for finding in report.lost:
            verdict = alive.get(finding.url)
            if verdict is False:
                report.expired.append(finding)
            else:
                report.unchecked += verdict is None
                still_lost.append(finding)
        report.lost = still_lost
    return report


async def _classify_all(
    db: Database,
    logged: dict[str, dict[SceneRef, SceneHistory]],
    shape: Shape,
    report: AuditReport,
) -> None:
    projects = sorted(logged)
    for start in range(0, len(projects), BATCH):
        batch = projects[start : start + BATCH]
        documents = await db.read_many(batch)
        for project in batch:
            _classify(project, documents, logged[project], shape, report)


def _classify(
    project: str,
    documents: dict[str, str | None],
    logged: dict[SceneRef, SceneHistory],
    shape: Shape,
    report: AuditReport,
) -> None:
    if project not in documents:
        for ref, scene_log in logged.items():
            report.orphaned.extend(Finding(project, ref.index, ref.id, u) for u in scene_log.urls)
        if not logged:
            report.errors.append(f"project {project} not found")
        return
    try:
        all_scenes = scenes(decode(documents[project], project=project), shape, project=project)
    except ImgsaveError as exc:
        report.errors.append(f"{exc} (not audited)")
        return
    seen = set()
    for ref, scene_log in logged.items():
        scene = find(all_scenes, ref)
        if scene is None:
            report.orphaned.extend(Finding(project, ref.index, ref.id, u) for u in scene_log.urls)
            continue
        seen.add(scene.position)
        held = set(scene.urls)
        for url, run in scene_log.urls.items():
            if url in held:
                report.present += 1
            elif run == scene_log.newest:
                report.lost.append(Finding(project, scene.ref.index, scene.ref.id, url))
            else:
                report.stale.append(Finding(project, scene.ref.index, scene.ref.id, url))
    for scene in all_scenes:
        if scene.position not in seen and not scene.urls and scene.prompt:
            report.empty_scenes.append((project, scene.ref))


async def run_audit(settings: Settings, query: LogQuery, *, check_urls: bool) -> AuditReport:
    async with await open_database(settings) as db:
        return await audit(
            db,
            query,
            log_dir=settings.resolved_log_dir(),
            shape=settings.shape,
            check_urls=check_urls,
        )
