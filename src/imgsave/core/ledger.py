"""The ledger's rows as the rest of imgsave sees them: one per image paid for, or about to be.
Pure: what a row's state means, which moves are allowed, what a scene still has on its way, and
what settling must do with each unresolved row. (adapters/postgres/ledger_rows.py stores them;
operations/settle.py acts on them.)

A row is `requested` (committed) before its request, job or batch leaves; `received` once the
provider's answer is in hand but not yet kept; `stored` once its bytes are in the store (URL
known) or in a host's spool; `saved` in the same transaction as the locked write that puts its
URL in its scene. Or it ends `failed` (nothing billed), `refused` (the provider refused the
prompt), `lost` (paid, and its result is gone) or `orphaned` (its scene no longer exists: it is
never placed into another scene).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from imgsave.core.documents import SceneRef
from imgsave.core.scene_plan import Job, Plan


class State(enum.StrEnum):
    REQUESTED = "requested"
    RECEIVED = "received"
    STORED = "stored"
    SAVED = "saved"
    FAILED = "failed"
    REFUSED = "refused"
    LOST = "lost"
    ORPHANED = "orphaned"


UNRESOLVED = frozenset({State.REQUESTED, State.RECEIVED, State.STORED})


class Mode(enum.StrEnum):
    SYNC = "sync"  # one request, answered with the image (or a URL to it)
    JOB = "job"  # a job at the provider, polled until it holds the image
    BATCH = "batch"  # one line of a Batch API batch
    COPY = "copy"  # rehost's copy of a link into the store: the same image, kept


class Edit(enum.StrEnum):
    APPEND = "append"  # appended to its scene if absent
    REPLACE = "replace"  # in place of replaces[0], if that is still there (rehost)


# A lost purchase whose answer never came: its request left, and the run that made it ended
# (or gave it up) before any answer was recorded. The provider may have billed it, or not:
# audit says how many, and only a loss known to be paid is a finding.
UNANSWERED = "unanswered: "


def unanswered(reason: str) -> str:
    return UNANSWERED + reason


def scene_key(ref: SceneRef) -> str:
    """A scene's name in imgsave's tables: its id where it has one, else its index. The two
    spaces cannot collide (`id:2` is not `index:2`)."""
    return f"id:{ref.id}" if ref.id is not None else f"index:{ref.index}"


@dataclass(frozen=True)
class Handle:
    """Where the provider keeps an image on its way: a job to poll, or a batch's line."""

    job_id: str | None = None
    poll_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    input_file: str | None = None


@dataclass(frozen=True)
class Kept:
    """Where a paid image's bytes are: the store (url, key, sha256) or a host's spool."""

    url: str | None = None
    object_key: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    content_type: str | None = None
    source_url: str | None = None
    spool: str | None = None


@dataclass(frozen=True)
class Purchase:
    """One ledger row."""

    id: int
    project: str
    ref: SceneRef
    slot: int
    run: str
    host: str
    kind: str
    mode: Mode
    state: State
    handle: Handle = field(default_factory=Handle)
    kept: Kept = field(default_factory=Kept)
    replaces: tuple[str, ...] = ()
    edit: Edit = Edit.APPEND
    error: str | None = None
    # Epoch seconds, by the database's clock.
    requested_at: float = 0.0
    lease_run: str | None = None
    lease_process: str | None = None
    # Seconds until the lease lapses (<= 0: lapsed or none), by the database's clock.
    lease_left: float = 0.0

    @property
    def unresolved(self) -> bool:
        return self.state in UNRESOLVED

    @property
    def scene(self) -> str:
        return scene_key(self.ref)

    @property
    def unanswered(self) -> bool:
        """Lost before any answer came: maybe billed, not known to be."""
        return self.state is State.LOST and (self.error or "").startswith(UNANSWERED)


@dataclass(frozen=True)
class NewPurchase:
    """A row about to be written `requested`: an image this run is about to pay for."""

    project: str
    ref: SceneRef
    slot: int
    mode: Mode
    replaces: tuple[str, ...] = ()
    edit: Edit = Edit.APPEND
    handle: Handle = field(default_factory=Handle)
    state: State = State.REQUESTED
    kept: Kept = field(default_factory=Kept)
    # When it was bought (epoch seconds), where that is not now: history taken from a log.
    requested_at: float | None = None
    error: str | None = None
    # The image API it was bought from, where that is not the run's (history from a log).
    kind: str | None = None


@dataclass(frozen=True)
class Move:
    """A row's next state, with what is known of it by then."""

    id: int
    state: State
    kept: Kept = field(default_factory=Kept)
    error: str | None = None


# Which state a row may move to from which: forward only, never out of `saved`; a row found
# `lost` moves on if its image turns up after all (a host's log, the store).
_RANK = {State.REQUESTED: 0, State.RECEIVED: 1, State.STORED: 2}


def may_move(current: State, to: State) -> bool:
    if current is State.LOST:
        return to in (State.STORED, State.SAVED)
    if current not in UNRESOLVED:
        return False
    return _RANK.get(to, 3) >= _RANK[current]


def on_their_way(purchases: Iterable[Purchase]) -> Counter[str]:
    """Scene key -> images already paid for (or about to be) and not yet in the scene, that
    will add to it once saved. A plan never buys these again. (A copy or a regeneration in
    place of a link adds nothing: it takes the link's place.)"""
    return Counter(p.scene for p in purchases if p.unresolved and p.edit is Edit.APPEND)


def without_pending(the_plan: Plan, pending: Mapping[str, int], *, force: bool) -> Plan:
    """The plan less what is already on its way to each scene: a pending job or batch holds
    its scene's share against every other run, however long it takes. With `force` (K more
    images whatever the scene holds), images on their way count towards those K as well."""
    jobs: list[Job] = []
    held: list[int] = []
    for job in the_plan.jobs:
        count = job.count - pending.get(scene_key(job.scene.ref), 0)
        if count > 0:
            jobs.append(Job(job.scene, count, job.replaces[:count]))
        else:
            held.append(job.scene.ref.index)
    del force  # the same arithmetic either way; the parameter says the caller thought of it
    return Plan(tuple(jobs), the_plan.skipped_scenes, the_plan.unprompted_scenes, tuple(held))


class Action(enum.Enum):
    """What settling does with an unresolved row."""

    SAVE = "save"  # its URL is known: the locked save
    UPLOAD = "upload"  # its bytes wait in this host's spool: store, then save
    FETCH = "fetch"  # the provider's URL of its image is known: download, store, save
    POLL = "poll"  # a job: poll it (of the configured kind)
    COLLECT = "collect"  # a batch's line: collect the batch (of the configured kind)
    FIND_BATCH = "find_batch"  # uploaded, created or not: look for its batch by listing
    ADOPT = "adopt"  # a synchronous request of a run that is gone: the store may hold it
    DROP = "drop"  # a rehost's copy its run never kept: nothing was paid for it
    WAIT = "wait"  # someone works on it, or it is another host's, kind's or bytes: leave it


def action(p: Purchase, *, host: str, kind: str, has_store: bool) -> Action:
    """What a run on `host`, configured for the API `kind`, does with `p` (already leased by
    it, or left if the lease is another live run's)."""
    if p.mode is Mode.COPY and not p.kept.url and not p.kept.spool:
        return Action.DROP
    if p.state is State.STORED:
        return _stored(p, host=host, has_store=has_store)
    if p.state is State.RECEIVED and p.kept.source_url:
        return Action.FETCH if has_store else Action.SAVE
    if p.mode is Mode.JOB and p.handle.job_id:
        return Action.POLL if p.kind == kind else Action.WAIT
    if p.mode is Mode.BATCH:
        if p.kind != kind:
            return Action.WAIT
        return Action.COLLECT if p.handle.batch_id else Action.FIND_BATCH
    return Action.ADOPT


def _stored(p: Purchase, *, host: str, has_store: bool) -> Action:
    """A stored purchase: saved by its URL; its spooled bytes uploaded, on the host whose spool
    holds them; adopted when it kept neither (the store may hold it)."""
    if p.kept.url:
        return Action.SAVE
    if p.kept.spool:
        return Action.UPLOAD if p.host == host and has_store else Action.WAIT
    return Action.ADOPT
