"""`imgsave ledger import`: the history of runs from before the ledger, taken into it once, on
request. Nothing reads a log folder to plan any more; what only such a folder knows — images
recorded and never saved, jobs still pending, batches never collected, spooled bytes — comes
into the ledger here, so that settling (any host) and audit find it.

What each record becomes, as the log-based recovery before the ledger read it:
- an image recorded (`image.generated`) that a later record says reached its scene (or was
  replaced) → `saved`: history, never placed again; one that none did → `stored`: the next run
  saves it (append-if-absent); a rehost's copy → `saved` in place of its link;
- a job requested and never ended → `requested` with its handle: polled, never bought again;
  one that ended lost → `lost`;
- a batch submitted and never collected → one `requested` row per image it asked for, with its
  batch id and custom_id: collected by the next run;
- a spooled image → `stored` at its spool path on this host.

Only records with no database identity (before the ledger) or this database's are read; what
the ledger holds already (an import run twice) is not taken twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.adapters.runlog.reader import expand_paths, parse_timestamp, run_logs
from imgsave.adapters.storage import spool
from imgsave.core import events
from imgsave.core.documents import SceneRef
from imgsave.core.ledger import Edit, Handle, Kept, Mode, NewPurchase, State, scene_key

# Events whose URL reached its scene (or was deliberately superseded).
_DONE = frozenset({events.IMAGE_SAVED, events.IMAGE_REPAIRED, events.IMAGE_REHOSTED})


@dataclass
class Imported:
    files: int = 0
    records: int = 0
    saved: int = 0
    unsaved: int = 0
    jobs_pending: int = 0
    jobs_lost: int = 0
    in_batches: int = 0
    spooled: int = 0
    # Already in the ledger, or another database's.
    skipped: int = 0


@dataclass
class _History:
    """One pass over the records, by run: what becomes a row."""

    rows: dict[str, list[NewPurchase]] = field(default_factory=lambda: defaultdict(list))
    generated: dict[tuple[str, str], tuple[str, NewPurchase]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    jobs: dict[str, tuple[str, NewPurchase]] = field(default_factory=dict)
    ended: dict[str, bool] = field(default_factory=dict)
    asked: dict[str, dict[str, Any]] = field(default_factory=dict)
    submitted: dict[str, tuple[str, str, float | None]] = field(default_factory=dict)
    collected: set[str] = field(default_factory=set)


async def import_history(
    ledger: LedgerRows, log_dir: Path, paths: Iterable[str], *, host: str, kind: str
) -> Imported:
    """Read imgsave's own logs (this host's folder, and `paths`) and spool; write what the
    ledger does not hold yet."""
    found = Imported()
    history = _History()
    files = expand_paths(paths, also=run_logs(log_dir))
    for path in files:
        found.files += 1
        for record in _records(path):
            db = record.get("db")
            if "ledger" in record or (db is not None and db != ledger.db_id):
                found.skipped += 1
                continue
            found.records += 1
            _take(record, history)
    urls, jobs, lines, spools = await ledger.known()
    by_run = _rows(history, urls, jobs, lines, found)
    for item in spool.pending(log_dir):
        if str(item.path) in spools:
            found.skipped += 1
            continue
        by_run["spool"].append(
            NewPurchase(item.project, item.ref, 0, Mode.SYNC, state=State.STORED,
                        replaces=item.replaces, kept=Kept(spool=str(item.path),
                                                          source_url=item.source_url))
        )  # fmt: skip
        found.spooled += 1
    for run, rows in by_run.items():
        await ledger.add(rows, run=run, host=host, process="", kind=kind, lease=-1.0)
    return found


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        handle = path.open("rb")
    except OSError:
        return
    with handle:
        for line in handle:
            if not line.startswith(b'{"v"'):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") in events.ALL:
                yield record


def _take(record: dict[str, Any], h: _History) -> None:
    event, url = record["event"], record.get("url")
    for replaced in record.get("replaces") or ():
        if isinstance(replaced, str):
            h.done.add(replaced)
    if isinstance(url, str) and (event in _DONE or record.get("in_scene") is True):
        h.done.add(url)
    if event == events.BATCH_SUBMITTING and isinstance(record.get("images"), dict):
        h.asked[str(record.get("input_file_id"))] = record["images"]
    elif event == events.BATCH_SUBMITTED and isinstance(record.get("batch"), str):
        file = str(record.get("input_file_id"))
        h.submitted[record["batch"]] = (str(record.get("run")), file, _ts(record))
    elif event == events.BATCH_COLLECTED and isinstance(record.get("batch"), str):
        h.collected.add(record["batch"])
    ref = _ref(record)
    if ref is None:
        return
    project, scene = ref
    run = str(record.get("run") or "imported")
    job = record.get("job")
    if isinstance(job, str) and event in (events.IMAGE_GENERATED, events.IMAGE_FAILED):
        h.ended[job] = h.ended.get(job, False) or record.get("lost") is True
    if event == events.IMAGE_REQUESTED and isinstance(job, str):
        handle = Handle(job, _text(record.get("poll")), _text(record.get("result")),
                        _text(record.get("cancel")))  # fmt: skip
        row = NewPurchase(project, scene, 0, Mode.JOB, handle=handle, requested_at=_ts(record),
                          kind=_text(record.get("kind")))  # fmt: skip
        h.jobs.setdefault(job, (run, row))
    elif event in (events.IMAGE_GENERATED, events.IMAGE_REHOSTED) and isinstance(url, str):
        copy = event == events.IMAGE_REHOSTED
        replaces = tuple(u for u in record.get("replaces") or () if isinstance(u, str))
        row = NewPurchase(
            project, scene, 0, Mode.COPY if copy else Mode.SYNC, replaces=replaces,
            edit=Edit.REPLACE if copy else Edit.APPEND, requested_at=_ts(record),
            kept=Kept(url=url, object_key=_text(record.get("key")),
                      sha256=_text(record.get("sha256")),
                      source_url=_text(record.get("source_url"))),
        )  # fmt: skip
        h.generated.setdefault((project, url), (run, row))


def _rows(
    h: _History,
    urls: set[tuple[str, str]],
    jobs: set[str],
    lines: set[tuple[str, str]],
    found: Imported,
) -> dict[str, list[NewPurchase]]:
    slots: dict[tuple[str, str, str], int] = defaultdict(int)

    def slotted(run: str, row: NewPurchase, **changes: Any) -> None:
        # Each row its own slot in its run and scene: rows are matched back by them.
        key = (run, row.project, scene_key(row.ref))
        h.rows[run].append(replace(row, slot=slots[key], **changes))
        slots[key] += 1

    for (project, url), (run, row) in h.generated.items():
        if (project, url) in urls:
            found.skipped += 1
            continue
        saved = url in h.done or row.edit is Edit.REPLACE
        found.saved += saved
        found.unsaved += not saved
        slotted(run, row, state=State.SAVED if saved else State.STORED)
    for job, (run, row) in h.jobs.items():
        if job in jobs:
            found.skipped += 1
        elif job not in h.ended:
            found.jobs_pending += 1
            slotted(run, row)
        elif h.ended[job]:
            found.jobs_lost += 1
            slotted(run, row, state=State.LOST, error="its result was gone (imported)")
    for batch, (run, file, at) in h.submitted.items():
        if batch in h.collected:
            continue
        for custom_id, slot in h.asked.get(file, {}).items():
            ref = _ref(slot) if isinstance(slot, dict) else None
            if ref is None or (batch, custom_id) in lines:
                found.skipped += ref is not None
                continue
            found.in_batches += 1
            handle = Handle(batch_id=batch, custom_id=custom_id, input_file=file)
            slotted(run, NewPurchase(ref[0], ref[1], 0, Mode.BATCH, handle=handle,
                                     requested_at=at))  # fmt: skip
    return h.rows


def _ref(record: dict[str, Any]) -> tuple[str, SceneRef] | None:
    project, scene, scene_id = record.get("project"), record.get("scene"), record.get("scene_id")
    if (
        isinstance(project, str)
        and isinstance(scene, int)
        and not isinstance(scene, bool)
        and scene >= 1
        and isinstance(scene_id, str | None)
    ):
        return project, SceneRef(scene, scene_id)
    return None


def _ts(record: dict[str, Any]) -> float | None:
    ts = record.get("ts")
    return parse_timestamp(ts) if isinstance(ts, str) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
