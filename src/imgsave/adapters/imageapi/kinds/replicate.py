"""Replicate: `POST {base}/models/{owner}/{name}/predictions` (or `{base}/predictions` with
`{"version"}` when the model is a version id), `Authorization: Bearer`; body `{"input":
{"prompt", ...params}}`; the prediction `{id, status, output, error, urls: {get, cancel}}`,
polled at `{base}/predictions/{id}` until `succeeded`, `failed` or `canceled`; `output` is a
URL, a list of URLs, or data URIs. A failure naming NSFW content is a refusal. Cancel:
`POST {base}/predictions/{id}/cancel`.

Submitted without `Prefer: wait`: Replicate's sync mode holds the request up to 60 s before
the prediction's id comes back, and a run killed meanwhile never learns the id (the rerun pays
again). The default (async) mode answers the id at once, so the job is logged before anything
is waited for; a prediction that is already done in that answer is taken without a poll.
"""

from __future__ import annotations

import re
from typing import Any

from imgsave.adapters.imageapi.jobs import (
    JobWireDefaults,
    Progress,
    RemoteJob,
    segment,
    text_of,
    urls_of,
)
from imgsave.adapters.imageapi.kind import Kind
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings

_VERSION = re.compile(r"^(?:[\w.-]+/[\w.-]+:)?([0-9a-f]{64})$")


class ReplicateWire(JobWireDefaults):
    kind = "replicate"
    cancel_method: str | None = "POST"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        super().__init__(base_url, settings)
        version = _VERSION.match(model or "")
        self._version = version.group(1) if version else None
        if self._version:
            self.url = f"{self._base}/predictions"
        else:
            owner, _, name = (model or "").partition("/")
            self.url = f"{self._base}/models/{segment(owner)}/{segment(name)}/predictions"

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"input": {"prompt": prompt, **self._settings.params}}
        if self._version:
            body["version"] = self._version
        return body

    def job(self, payload: Any) -> RemoteJob:
        urls = payload.get("urls") if isinstance(payload, dict) else None
        ident = text_of(payload.get("id")) if isinstance(payload, dict) else None
        if ident is None:
            raise ValueError("the answer names no prediction (id)")
        given = RemoteJob(self.kind, ident, "")
        documented = self.at_base(given)
        if not isinstance(urls, dict):
            return documented
        return RemoteJob(
            self.kind,
            ident,
            text_of(urls.get("get")) or documented.poll,
            cancel=text_of(urls.get("cancel")) or documented.cancel,
        )

    def at_base(self, job: RemoteJob) -> RemoteJob:
        path = f"/predictions/{segment(job.id)}"
        return self._under_base(job, path, cancel=path + "/cancel")

    def progress(self, payload: Any) -> Progress:
        status = payload.get("status") if isinstance(payload, dict) else None
        if status == "succeeded":
            return Progress("done", urls_of(payload.get("output")))
        if status in ("failed", "canceled"):
            error = text_of(payload.get("error")) or status
            nsfw = "nsfw" in error.lower()
            return Progress("failed", reason="nsfw" if nsfw else error, refusal=nsfw)
        return Progress("running")


KIND = Kind(
    KindFacts(
        name="replicate",
        default_base_url="https://api.replicate.com/v1",
        key_variable="REPLICATE_API_TOKEN",
        needs_model=True,
        has_jobs=True,
        has_batch=False,
        model_hint="owner/name, or a version id",
    ),
    job_wire=ReplicateWire,
    example_model="black-forest-labs/flux-schnell",
)
