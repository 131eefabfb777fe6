"""fal's queue: `POST {base}/{model}` (queue.fal.run; the model may carry a subpath, as in
`fal-ai/flux/dev`), `Authorization: Key`; body `{"prompt", ...params}` → `{request_id,
status_url, response_url, cancel_url}`. A request lives under its app id (the model's
`namespace/name`, the subpath dropped): `GET {base}/{app}/requests/{id}/status` until
`COMPLETED`, then `GET {base}/{app}/requests/{id}` → `{"images": [{"url", "content_type"}]}`;
`PUT {base}/{app}/requests/{id}/cancel`. A 422 whose detail is `content_policy_violation` is a
refusal, final; a failed request's result is its error with an `error_type` (and
`X-Fal-Error-Type`), final too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgsave.adapters.imageapi.jobs import JobWireDefaults, Progress, RemoteJob, segment, text_of
from imgsave.adapters.imageapi.kind import Kind
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings


class FalWire(JobWireDefaults):
    kind = "fal"
    cancel_method: str | None = "PUT"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        super().__init__(base_url, settings)
        parts = [segment(part) for part in (model or "").split("/")]
        self.url = f"{self._base}/{'/'.join(parts)}"
        self._app = "/".join(parts[:2])

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Key {api_key}"} if api_key else {}

    def job(self, payload: Any) -> RemoteJob:
        get = payload.get if isinstance(payload, dict) else (lambda _: None)
        ident = text_of(get("request_id"))
        if ident is None:
            raise ValueError("the answer names no request (request_id)")
        documented = self.at_base(RemoteJob(self.kind, ident, ""))
        return RemoteJob(
            self.kind,
            ident,
            text_of(get("status_url")) or documented.poll,
            result=text_of(get("response_url")) or documented.result,
            cancel=text_of(get("cancel_url")) or documented.cancel,
        )

    def at_base(self, job: RemoteJob) -> RemoteJob:
        path = f"/{self._app}/requests/{segment(job.id)}"
        return self._under_base(job, path + "/status", result=path, cancel=path + "/cancel")

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
            if isinstance(image, dict) and (url := text_of(image.get("url")))
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


KIND = Kind(
    KindFacts(
        name="fal",
        default_base_url="https://queue.fal.run",
        key_variable="FAL_KEY",
        needs_model=True,
        has_jobs=True,
        has_batch=False,
        model_hint="an endpoint such as fal-ai/flux/dev",
    ),
    job_wire=FalWire,
    example_model="fal-ai/flux/dev",
)
