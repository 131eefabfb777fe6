"""What settling did (settle.py), in a run's JSON: the images of earlier purchases it saved, the
jobs it polled and batches it collected, what it found lost, and what is still on its way."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from imgsave.adapters.imageapi.client import add_usage
from imgsave.core.result_json import NOT_IN_JSON


@dataclass
class Settled:
    """What settling did, in the run's JSON."""

    # Images earlier runs paid for and never saved, saved now.
    recovered: int = 0
    # The URLs put in their scenes while settling (repair restores only what is still lost).
    saved_urls: set[str] = field(default_factory=set, metadata=NOT_IN_JSON)
    # Of those, images whose bytes waited in this host's spool.
    uploaded: int = 0
    # Jobs an earlier run paid for, polled again, and the images they gave.
    jobs_resumed: int = 0
    job_images: int = 0
    # Images of finished batches saved now.
    batch_images: int = 0
    collected: list[str] = field(default_factory=list)
    # Found paid for and lost now (a job's result gone, a batch's output gone).
    lost: int = 0
    # Requests of runs that died before any answer came: maybe billed, and lost.
    unanswered: int = 0
    failed: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    # Still on their way: a job or batch running, another host's spool, a live run's rows.
    pending: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # The provider's job or Batch API could not be read: nothing seen is not nothing found.
    unreadable: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    # Finished batches whose collection was cut short: the next run resumes it.
    uncollected: list[str] = field(default_factory=list)
    # (project, scene key) of purchases found lost now: reported by this run, planned again
    # by the next one, never bought again in the same breath.
    held_back: set[tuple[str, str]] = field(default_factory=set, metadata=NOT_IN_JSON)
    # The run's log, where settling wrote to it (a run whose only work was settling has one).
    log: str | None = field(default=None, metadata=NOT_IN_JSON)
    per_batch: list[dict[str, object]] = field(default_factory=list)

    def merge(self, other: Settled) -> None:
        """Add what a later settling of the same run did."""
        for name in (
            "recovered",
            "uploaded",
            "jobs_resumed",
            "job_images",
            "batch_images",
            "lost",
            "unanswered",
            "failed",
            "pending",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.collected += other.collected
        self.refusals.update(other.refusals)
        add_usage(self.usage, other.usage)
        self.errors += other.errors
        self.unreadable += other.unreadable
        self.uncollected += other.uncollected
        self.held_back |= other.held_back
        self.saved_urls |= other.saved_urls
        self.per_batch += other.per_batch
