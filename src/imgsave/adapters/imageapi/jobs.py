"""What differs between image APIs that answer a request with a job to poll: where it is
submitted, how the key is sent, the body, what the job is called and where it is polled, what
its states are, and where its images are once it is done.

- `replicate`: `POST {base}/models/{owner}/{name}/predictions` (or `{base}/predictions` with
  `{"version"}` when the model is a version id), `Authorization: Bearer`, `Prefer: wait`; body
  `{"input": {"prompt", ...params}}`; the prediction `{id, status, output, error, urls: {get,
  cancel}}`, polled at `urls.get` until `succeeded`, `failed` or `canceled`; `output` is a URL,
  a list of URLs, or data URIs. A failure naming NSFW content is a refusal.
- `fal`: `POST {base}/{model}` (queue.fal.run), `Authorization: Key`; body `{"prompt",
  ...params}` → `{request_id, status_url, response_url, cancel_url}`; `status_url` until
  `COMPLETED`, then `response_url` → `{"images": [{"url", "content_type"}]}`; a 422 whose
  detail is `content_policy_violation` is a refusal, final; a failed request's result is its
  error with an `error_type` (and `X-Fal-Error-Type`), final too.
- `bfl`: `POST {base}/{model}` (api.bfl.ai/v1), header `x-key`; body `{"prompt", ...params}` →
  `{id, polling_url}`; `polling_url` until `status` is `Ready` (`result.sample`, a URL valid for
  ten minutes) or a failure (`Error`, `Failed`; `Content Moderated` and `Request Moderated` are
  refusals; `Task not found` means the job is gone).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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

    def headers(self, api_key: str | None) -> dict[str, str]: ...

    def submit_headers(self) -> dict[str, str]: ...

    def body(self, prompt: str) -> dict[str, Any]: ...

    def job(self, payload: Any) -> RemoteJob:
        """The job a submission's answer names; ValueError when it names none."""
        ...

    def progress(self, payload: Any) -> Progress: ...

    def outputs(self, payload: Any) -> list[str]:
        """fal: the images `result` holds."""
        ...

    def refusal(self, status: int, payload: Any) -> str | None: ...

    def failure(self, status: int, headers: Mapping[str, str], payload: Any) -> str | None:
        """Why a job ended in failure, when an error answer to a poll says it is final."""
        ...


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _urls(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


class _JobWireDefaults:
    """What most job APIs share: a flat body, no extra header, images in the poll's answer,
    refusals and failures said by state, not by error status."""

    def __init__(self, settings: ProviderSettings):
        self._settings = settings

    def submit_headers(self) -> dict[str, str]:
        return {}

    def body(self, prompt: str) -> dict[str, Any]:
        return {"prompt": prompt, **self._settings.params}

    def outputs(self, payload: Any) -> list[str]:
        return []

    def refusal(self, status: int, payload: Any) -> str | None:
        return None

    def failure(self, status: int, headers: Mapping[str, str], payload: Any) -> str | None:
        return None


_VERSION = re.compile(r"^(?:[\w.-]+/[\w.-]+:)?([0-9a-f]{64})$")


class ReplicateWire(_JobWireDefaults):
    kind = "replicate"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        base = base_url.rstrip("/")
        version = _VERSION.match(model or "")
        self._version = version.group(1) if version else None
        if self._version:
            self.url = f"{base}/predictions"
        else:
            owner, _, name = (model or "").partition("/")
            self.url = f"{base}/models/{quote(owner, safe='')}/{quote(name, safe='')}/predictions"
        super().__init__(settings)

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def submit_headers(self) -> dict[str, str]:
        # The prediction is held up to 60 s and answered done when it finishes by then.
        return {"Prefer": "wait"}

    def body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"input": {"prompt": prompt, **self._settings.params}}
        if self._version:
            body["version"] = self._version
        return body

    def job(self, payload: Any) -> RemoteJob:
        urls = payload.get("urls") if isinstance(payload, dict) else None
        ident = _text(payload.get("id")) if isinstance(payload, dict) else None
        poll = _text(urls.get("get")) if isinstance(urls, dict) else None
        if ident is None or poll is None:
            raise ValueError("the answer names no prediction (id, urls.get)")
        cancel = _text(urls.get("cancel")) if isinstance(urls, dict) else None
        return RemoteJob(self.kind, ident, poll, cancel=cancel)

    def progress(self, payload: Any) -> Progress:
        status = payload.get("status") if isinstance(payload, dict) else None
        if status == "succeeded":
            return Progress("done", _urls(payload.get("output")))
        if status in ("failed", "canceled"):
            error = _text(payload.get("error")) or status
            nsfw = "nsfw" in error.lower()
            return Progress("failed", reason="nsfw" if nsfw else error, refusal=nsfw)
        return Progress("running")


class FalWire(_JobWireDefaults):
    kind = "fal"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        path = "/".join(quote(part, safe="") for part in (model or "").split("/"))
        self.url = f"{base_url.rstrip('/')}/{path}"
        super().__init__(settings)

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Key {api_key}"} if api_key else {}

    def job(self, payload: Any) -> RemoteJob:
        get = payload.get if isinstance(payload, dict) else (lambda _: None)
        ident, poll = _text(get("request_id")), _text(get("status_url"))
        result = _text(get("response_url"))
        if ident is None or poll is None or result is None:
            raise ValueError("the answer names no request (request_id, status_url, response_url)")
        return RemoteJob(self.kind, ident, poll, result=result, cancel=_text(get("cancel_url")))

    def progress(self, payload: Any) -> Progress:
        status = payload.get("status") if isinstance(payload, dict) else None
        if status == "COMPLETED":
            return Progress("done")
        return Progress("running")

    def outputs(self, payload: Any) -> list[str]:
        images = payload.get("images") if isinstance(payload, dict) else None
        return [
            url
            for image in (images if isinstance(images, list) else [])
            if isinstance(image, dict) and (url := _text(image.get("url")))
        ]

    def failure(self, status: int, headers: Mapping[str, str], payload: Any) -> str | None:
        # A failed request's result answers its error for good, with its category.
        kind = headers.get("x-fal-error-type") or (
            payload.get("error_type") if isinstance(payload, dict) else None
        )
        return kind if isinstance(kind, str) and kind else None

    def refusal(self, status: int, payload: Any) -> str | None:
        detail = payload.get("detail") if isinstance(payload, dict) else None
        for item in detail if isinstance(detail, list) else []:
            if isinstance(item, dict) and item.get("type") == "content_policy_violation":
                return "content_policy_violation"
        return None


class BflWire(_JobWireDefaults):
    kind = "bfl"
    _REFUSALS = ("Content Moderated", "Request Moderated")

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        self.url = f"{base_url.rstrip('/')}/{quote(model or '', safe='.-_')}"
        super().__init__(settings)

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-key": api_key} if api_key else {}

    def job(self, payload: Any) -> RemoteJob:
        get = payload.get if isinstance(payload, dict) else (lambda _: None)
        ident, poll = _text(get("id")), _text(get("polling_url"))
        if ident is None or poll is None:
            raise ValueError("the answer names no task (id, polling_url)")
        return RemoteJob(self.kind, ident, poll)

    def progress(self, payload: Any) -> Progress:
        status = payload.get("status") if isinstance(payload, dict) else None
        if status == "Ready":
            result = payload.get("result")
            sample = result.get("sample") if isinstance(result, dict) else None
            return Progress("done", _urls(sample))
        if status == "Task not found":
            return Progress("gone", reason=status)
        if status in self._REFUSALS:
            return Progress("failed", reason=status, refusal=True)
        if status in ("Error", "Failed"):
            return Progress("failed", reason=_text(payload.get("details")) or status)
        return Progress("running")


JOB_WIRES: dict[str, type[ReplicateWire] | type[FalWire] | type[BflWire]] = {
    "replicate": ReplicateWire,
    "fal": FalWire,
    "bfl": BflWire,
}


def job_wire_for(
    kind: str, base_url: str, model: str | None, settings: ProviderSettings
) -> JobWire:
    return JOB_WIRES[kind](base_url, model, settings)
