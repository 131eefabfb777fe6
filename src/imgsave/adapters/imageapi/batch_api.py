"""One interface to every Batch API imgsave uses (half price): what a batch is, what one line of
its results holds, and the calls an operation makes. The implementations are batch_openai.py
(OpenAI and Azure OpenAI) and batch_gemini.py (the Gemini API); batches.py picks one for the
configured kind (`batch_api_for`).

Choices the two APIs forced, so that an operation never asks which kind it has:
- **Status** is one vocabulary, OpenAI's: validating, in_progress, finalizing, completed,
  expired, cancelling, cancelled, failed (Gemini's PENDING is `validating`, RUNNING
  `in_progress`, SUCCEEDED `completed`; it has no finalizing or cancelling). `finished` is one
  of the last four that end a batch.
- **Identity**: a batch names this database and run, so that one whose create answer was lost
  is found by listing (OpenAI's `metadata` {imgsave, imgsave_db, imgsave_run}; Gemini's
  `display_name` `imgsave:{db_id}:{run}`). `db_id` and `run` are None on a batch imgsave did not
  make. Which batches are this database's is the ledger's to say; this is only for finding.
- **Results**: `result_lines` streams every line that says how a request ended: OpenAI's output
  file then its error file, Gemini's one results file (its error lines are in it). A line over
  the cap (`line_cap` of max_image_bytes) is yielded as `Oversized`, not read; `parse_line`
  turns it into a failed image. `parse_line` is pure and CPU-heavy (base64): call it in a
  worker thread.
- **Money**: `create` is never retried (a lost answer may have created, and will bill, a batch:
  list and look for it by `db_id`/`run`); uploads, reads and cancels are.
- **Errors** are imgsave's: 404 on the Batch API's own endpoints (upload, create, list) is
  `NoBatchApi` (the provider has none; exit 3); 401 and 403, and Google's 400 API_KEY_INVALID,
  are `ProviderRefused`; another 4xx is `BatchRefused` with the provider's message (a batch or
  file that is gone, a bad line); what stayed transient after retries is `BatchUnavailable`,
  and so is a list whose cursor does not advance or that goes on past its bound of pages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from imgsave.adapters.imageapi.wires import Answer, Received
from imgsave.core.batch_lines import BatchResult, Oversized, UnreadableLine, head_id
from imgsave.errors import CannotWork

STATUSES = ("validating", "in_progress", "finalizing", "completed", "expired", "cancelling",
            "cancelled", "failed")  # fmt: skip
FINISHED = frozenset({"completed", "expired", "cancelled", "failed"})
# The code of a line over the cap: paid for, and failed (imgsave would refuse its image).
LINE_TOO_LARGE = "line_too_large"
# The code of an answer that held no image and no reason why.
NO_IMAGE = "no_image"


class NoBatchApi(CannotWork):
    """The image API answers 404 on its Batch API's endpoints."""


class BatchRefused(CannotWork):
    """The image API refused an upload or a batch (too large, a bad line, gone, ...)."""


class BatchUnavailable(CannotWork):
    """The Batch API could not be reached, or kept failing, or answered what cannot be read
    (an answer over the cap, a list that does not end)."""


@dataclass(frozen=True)
class BatchInfo:
    """A batch as its API describes it, in one vocabulary for every kind."""

    id: str
    kind: str
    status: str
    created_at: int
    input_file: str | None
    total: int
    completed: int
    failed: int
    # When the provider gives up on the batch if it has not finished (OpenAI's 24 h window);
    # None where the API says no such time (Gemini).
    expires_at: int | None
    # The database identity and run the batch was made for (see the module's docstring).
    db_id: str | None
    run: str | None
    # Where its results are: OpenAI's output and error files, Gemini's results file (as
    # `output_file`). None until the batch has finished.
    output_file: str | None = None
    error_file: str | None = None
    # OpenAI's metadata as the API holds it ({} for Gemini).
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    # The names of OpenAI's fields, for the operations written against them.
    @property
    def input_file_id(self) -> str:
        return self.input_file or ""

    @property
    def output_file_id(self) -> str | None:
        return self.output_file

    @property
    def error_file_id(self) -> str | None:
        return self.error_file


@dataclass(frozen=True)
class LineResult:
    """How one request of a batch ended, read from its results line.

    - `images` non-empty: the images it bought, decoded (or kept raw where no decoding reads
      them: paid for), and its token `usage`.
    - `images` empty and `code` set: it failed or was refused, `code` the provider's reason
      (`moderation_blocked`, `PROHIBITED_CONTENT`, `IMAGE_SAFETY`, `INVALID_ARGUMENT`, ...),
      `no_image` for an answer with neither, `line_too_large` for a line over the cap.
    - `unreadable`: the line is none of the documented shapes (`custom_id` None when not even
      that could be read).
    """

    custom_id: str | None
    images: list[Received] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None
    unreadable: bool = False


def line_result(
    raw: bytes | Oversized,
    *,
    id_field: str,
    line_cap: int,
    parse: Callable[[bytes], BatchResult],
    answer: Callable[[dict[str, Any]], Answer],
) -> LineResult:
    """A results line, read alike for every Batch API: over the cap (its id from the head),
    unreadable, failed (the provider's code), or the images of its answer (`parse`d, then read
    by the kind's `answer`; none: the answer's refusal, or no_image)."""
    if isinstance(raw, Oversized):
        return LineResult(
            head_id(raw.head, id_field), code=LINE_TOO_LARGE,
            message=f"the line is {raw.size:,} bytes, over the cap of {line_cap:,}",
        )  # fmt: skip
    try:
        result = parse(raw)
    except UnreadableLine as exc:
        return LineResult(None, message=str(exc), unreadable=True)
    if result.body is None:
        return LineResult(result.custom_id, code=result.code, message=result.message)
    read = answer(result.body)
    if read.images:
        return LineResult(result.custom_id, read.images, read.usage)
    return LineResult(
        result.custom_id, usage=read.usage, code=read.refusal or NO_IMAGE,
        message="; ".join(read.problems) or None,
    )  # fmt: skip


class BatchApi(Protocol):
    """A Batch API (see the module's docstring); an async context manager that closes its
    connections."""

    kind: str
    # The longest results line read (line_cap of max_image_bytes).
    line_cap: int

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def request_line(self, custom_id: str, prompt: str) -> bytes:
        """One JSONL input line asking for one image of `prompt` (model, size,
        [provider.params] where this API takes them), newline included."""
        ...

    async def upload(self, content: bytes, *, display_name: str) -> str:
        """Upload a batch's JSONL input; its file id (OpenAI) or name (Gemini `files/...`)."""
        ...

    async def create(self, input_file: str, *, db_id: str, run: str) -> BatchInfo:
        """Create the batch of `input_file`. Never retried: BatchUnavailable here means the
        batch may exist; look for it with `listed()`."""
        ...

    async def retrieve(self, batch_id: str) -> BatchInfo: ...

    def listed(self) -> AsyncIterator[BatchInfo]:
        """Every batch the API holds for this key, a page at a time (newest first where the API
        says so); BatchUnavailable on a cursor that does not advance or past the pages' bound."""
        ...

    def result_lines(self, batch: BatchInfo) -> AsyncIterator[bytes | Oversized]:
        """The batch's results lines, streamed (memory does not grow with the file). Retried
        from the start until its first bytes; a stream cut later raises BatchUnavailable after
        the lines before the cut, and the caller resumes, skipping what it has. BatchRefused:
        the file is gone (paid, lost)."""
        ...

    def parse_line(self, raw: bytes | Oversized) -> LineResult:
        """One results line read and its images decoded. Pure, CPU-heavy: run it in a worker
        thread."""
        ...

    async def output_expires_at(self, batch: BatchInfo) -> int | None:
        """When the provider deletes the batch's results (and every image in them); None when
        it does not say, or there are none."""
        ...

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Cancel the batch (what finished is still collected); the batch as it is now."""
        ...
