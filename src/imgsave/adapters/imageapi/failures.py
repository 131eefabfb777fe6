"""How one image's request ends when it brings no image: not sent at all (the run is
stopping), failed for good (this image only), or worth another attempt (client.py's one retry
policy decides, retries.py)."""

from __future__ import annotations


class NotSent(Exception):
    """The run stopped before this image's request went out: nothing was spent on it (beyond
    earlier attempts, counted in `possibly_billed_retries`)."""

    def __init__(self, *, possibly_billed_retries: int = 0):
        super().__init__("not sent: the run is stopping")
        self.possibly_billed_retries = possibly_billed_retries


class ImageFailed(Exception):
    """This one image could not be had; the run goes on. `refusal`: the provider refused the
    prompt, and why in its words (`moderation_blocked`, `SAFETY`, ...)."""

    def __init__(
        self,
        reason: str,
        *,
        possibly_billed_retries: int = 0,
        refusal: str | None = None,
        job: str | None = None,
        lost: bool = False,
    ):
        super().__init__(reason)
        self.possibly_billed_retries = possibly_billed_retries
        self.refusal = refusal
        # The provider's job this image was, now over (failed, refused, or gone): no later run
        # polls it again. A job still running when this is raised has no `job` here.
        self.job = job
        # The job was paid for and its result is gone.
        self.lost = lost

    def with_reason(self, reason: str, possibly_billed_retries: int) -> ImageFailed:
        return ImageFailed(
            reason,
            possibly_billed_retries=possibly_billed_retries,
            refusal=self.refusal,
            job=self.job,
            lost=self.lost,
        )


class Retryable(Exception):
    """An attempt that failed in a way another attempt may not."""

    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        *,
        unreachable: bool = False,
        billed: bool = False,
    ):
        super().__init__(reason)
        self.retry_after = retry_after
        # No connection could be made at all: the API is down or misnamed, not this prompt.
        self.unreachable = unreachable
        # The provider may have made (and billed) the image this attempt did not get.
        self.billed = billed
