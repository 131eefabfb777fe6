"""What the database's journal (`imgsave sql --journal`) says each scene should hold. Pure.

The journal has a row for every URL that a committed write added to a scene or removed from one,
whoever wrote it, in commit order per project (the row lock orders the writes to one row, and the
trigger runs under it). A removal is judged by the write that made it:

- a write that added nothing removed it on purpose (a deletion): **stale**, never restored;
- a write that replaced the scene's whole list (every URL it held went, others came) long after
  the URL was added (more than the run gap, 30 minutes by default) is a regeneration: **stale**;
- any other write that removed it while adding URLs is the lost-update signature: the writer
  started from a copy that did not have the URL yet. The URL is **lost** (repair appends it).
  That includes two completions racing for one empty scene, the incident's `numImages > 1`
  case: the second's stale copy replaces the scene's list within seconds of the first.

The ambiguity, which no record of committed writes can resolve: a deliberate regeneration of a
scene within the run gap of its images' creation looks exactly like that race, and is reported
lost (and restored beside the new image); a deliberate removal written in the same statement as
an addition elsewhere looks like a clobber too. `--run-gap` moves the line; docs/usage.md says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from imgsave.core.documents import SceneRef
from imgsave.core.log_history import SceneHistory
from imgsave.core.url_rule import url_problem

Verdicts = dict[str, dict[SceneRef, SceneHistory]]


class JournalRow(NamedTuple):
    id: int
    at: float  # the writing transaction's start, epoch seconds (the same for all its rows)
    txid: str
    project: str
    scene_index: int
    scene_id: str | None
    url: str
    added: bool
    scene_replaced: bool


class _Last(NamedTuple):
    ref: SceneRef
    added: bool
    txid: str
    # A removal that replaced the scene's whole list more than the run gap after the URL came.
    regenerated: bool


class JournalLedger:
    """Folds journal rows, read in id order, into what each scene should hold."""

    def __init__(self, run_gap: float, *, allow_http: bool = False) -> None:
        self.rows = 0
        # Rows whose URL breaks the URL rule: whoever wrote it there, repair never writes it.
        self.refused = 0
        # When the oldest row read was written (epoch seconds).
        self.oldest: float | None = None
        self._run_gap = run_gap
        self._allow_http = allow_http
        self._last: dict[tuple[str, str | int, str], _Last] = {}
        self._added_at: dict[tuple[str, str | int, str], float] = {}
        self._adding: set[tuple[str, str]] = set()

    def add(self, rows: Iterable[JournalRow]) -> None:
        for row in rows:
            self.rows += 1
            self.oldest = row.at if self.oldest is None else min(self.oldest, row.at)
            if url_problem(row.url, allow_http=self._allow_http) is not None:
                self.refused += 1
                continue
            scene: str | int = row.scene_id if row.scene_id is not None else row.scene_index
            key = (row.project, scene, row.url)
            if row.added:
                self._added_at[key] = row.at
                self._adding.add((row.project, row.txid))
            # Added before the rows read (--since): long ago, as far as this reading knows.
            age = row.at - self._added_at.get(key, float("-inf"))
            regenerated = row.scene_replaced and age > self._run_gap
            self._last[key] = _Last(
                SceneRef(row.scene_index, row.scene_id), row.added, row.txid, regenerated
            )

    def verdicts(self, only: frozenset[str] = frozenset()) -> Verdicts:
        """project -> scene -> {url: whether the scene should hold it}: a URL whose last event
        is an addition, or a removal by a write that was adding others and did not regenerate
        the scene, should be there."""
        found: Verdicts = {}
        for (project, _, url), last in self._last.items():
            if only and project not in only:
                continue
            meant = last.added or (not last.regenerated and (project, last.txid) in self._adding)
            scenes = found.setdefault(project, {})
            scenes.setdefault(last.ref, SceneHistory({})).urls[url] = meant
        return found


def overlay(logged: Verdicts, journal: Verdicts) -> None:
    """Put the journal's verdicts over what the logs inferred, for the projects in `logged`
    (taken out of `journal`): the database's own record of each write beats inference."""
    for project, logged_scenes in logged.items():
        recorded = journal.pop(project, None)
        if recorded is None:
            continue
        known = {url for history in recorded.values() for url in history.urls}
        for history in logged_scenes.values():
            for url in known & history.urls.keys():
                del history.urls[url]
        for ref, history in recorded.items():
            logged_scenes.setdefault(ref, SceneHistory({})).urls.update(history.urls)
