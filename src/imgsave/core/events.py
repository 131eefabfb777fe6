"""The generation log's event names (DESIGN.md, "The generation log"): written by
operations/, read by adapters/runlog/reader.py and audit. Defined once, here."""

from __future__ import annotations

from typing import Final

RUN_STARTED: Final = "run.started"
RUN_FINISHED: Final = "run.finished"
# A job (Replicate, fal, BFL) the provider accepted: its handle, before its first poll.
IMAGE_REQUESTED: Final = "image.requested"
# A paid image kept (its permanent URL, or the spool path of its bytes): fsynced before its save.
IMAGE_GENERATED: Final = "image.generated"
IMAGE_SAVED: Final = "image.saved"
IMAGE_FAILED: Final = "image.failed"
# A URL put back into its scene by repair, or by a run settling what an earlier one paid for.
IMAGE_REPAIRED: Final = "image.repaired"
# rehost's copy, in place of the provider's link it `replaces`.
IMAGE_REHOSTED: Final = "image.rehosted"
BATCH_SUBMITTING: Final = "batch.submitting"
BATCH_SUBMITTED: Final = "batch.submitted"
BATCH_COLLECTED: Final = "batch.collected"

ALL: Final = frozenset(
    {
        RUN_STARTED,
        RUN_FINISHED,
        IMAGE_REQUESTED,
        IMAGE_GENERATED,
        IMAGE_SAVED,
        IMAGE_FAILED,
        IMAGE_REPAIRED,
        IMAGE_REHOSTED,
        BATCH_SUBMITTING,
        BATCH_SUBMITTED,
        BATCH_COLLECTED,
    }
)
