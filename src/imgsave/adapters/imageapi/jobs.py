"""What image APIs that answer with a job to poll have in common: the job (logged before it is
first polled), its progress, and the wire each such API implements (kinds/replicate.py,
kinds/fal.py, kinds/bfl.py).

A job's URLs are the ones imgsave will follow with the key: where the provider names a URL on
the base URL's own origin (or one of the API's own hosts, kinds/bfl.py), that URL; elsewhere,
the path the API documents for the same job under the base (`JobWire.at_base`), so a gateway
or proxy base URL works and the key never leaves for another origin (client.py decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol
from urllib.parse import quote

from imgsave.core.settings import ProviderSettings

State = Literal["running", "done", "failed", "gone"]


@dataclass(frozen=True)
class RemoteJob:
    """A paid job at the provider: logged (image.requested) before it is first polled, so a
    later run polls it instead of paying again."""

    kind: str
    id: str
    poll: str
    # fal: where the images are once the status says COMPLETED.
    result: str | None = None
    cancel: str | None = None

    def to_log(self) -> dict[str, str]:
        extra = {k: v for k, v in (("result", self.result), ("cancel", self.cancel)) if v}
        return {"job": self.id, "kind": self.kind, "poll": self.poll, **extra}

    @classmethod
    def from_log(cls, record: dict[str, Any]) -> RemoteJob | None:
        job, kind, poll = record.get("job"), record.get("kind"), record.get("poll")
        if not (isinstance(job, str) and isinstance(kind, str) and isinstance(poll, str)):
            return None
        result, cancel = record.get("result"), record.get("cancel")
        return cls(
            kind,
            job,
            poll,
            result if isinstance(result, str) else None,
            cancel if isinstance(cancel, str) else None,
        )

    def urls(self) -> tuple[str, ...]:
        return tuple(u for u in (self.poll, self.result, self.cancel) if u)


@dataclass(frozen=True)
class Progress:
    state: State
    # done: the images, as URLs or data URIs (fal gives them at the job's `result` instead).
    outputs: list[str] = field(default_factory=list)
    # failed: why, in the provider's words; `refusal`: it refused the prompt.
    reason: str | None = None
    refusal: bool = False


class JobWire(Protocol):
    kind: str
    url: str
    # How a job no one will wait for is stopped (None: the API has no cancel).
    cancel_method: str | None

    def headers(self, api_key: str | None) -> dict[str, str]: ...

    def body(self, prompt: str) -> dict[str, Any]: ...

    def job(self, payload: Any) -> RemoteJob:
        """The job a submission's answer names, with the URLs the provider gives for it;
        ValueError when it names none."""
        ...

    def at_base(self, job: RemoteJob) -> RemoteJob:
        """The same job at the paths the API documents under the base URL."""
        ...

    def progress(self, payload: Any) -> Progress: ...

    def outputs(self, payload: Any) -> list[str]:
        """fal: the images `result` holds."""
        ...

    def refusal(self, status: int, payload: Any) -> str | None: ...

    def key_refused(self, status: int, payload: Any) -> bool:
        """Whether an error answer says the API key itself is refused (the run stops)."""
        ...

    def failure(self, status: int, headers: Mapping[str, str], payload: Any) -> str | None:
        """Why a job ended in failure, when an error answer to a poll says it is final."""
        ...


def text_of(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def urls_of(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


class JobWireDefaults:
    """What most job APIs share: a flat body, images in the poll's answer, refusals and
    failures said by state, not by error status, a key refused with 401 or 403."""

    kind: str
    cancel_method: str | None = None

    def __init__(self, base_url: str, settings: ProviderSettings):
        self._base = base_url.rstrip("/")
        self._settings = settings

    def body(self, prompt: str) -> dict[str, Any]:
        return {"prompt": prompt, **self._settings.params}

    def outputs(self, payload: Any) -> list[str]:
        return []

    def refusal(self, status: int, payload: Any) -> str | None:
        return None

    def key_refused(self, status: int, payload: Any) -> bool:
        return status in (401, 403)

    def failure(self, status: int, headers: Mapping[str, str], payload: Any) -> str | None:
        return None

    def _under_base(
        self, job: RemoteJob, poll: str, result: str | None = None, cancel: str | None = None
    ) -> RemoteJob:
        """`job` at these paths under the base URL."""
        return replace(
            job,
            poll=self._base + poll,
            result=self._base + result if result else None,
            cancel=self._base + cancel if cancel else None,
        )


def segment(text: str) -> str:
    """`text` as one path segment."""
    return quote(text, safe="")
