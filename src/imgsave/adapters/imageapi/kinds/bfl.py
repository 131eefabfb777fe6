"""Black Forest Labs: `POST {base}/{model}` (api.bfl.ai/v1), header `x-key`; body `{"prompt",
...params}` → `{id, polling_url}`; `GET polling_url` until `status` is `Ready`
(`result.sample`, a URL valid for ten minutes) or a failure (`Error`, `Failed`; `Content
Moderated` and `Request Moderated` are refusals; `Task not found` means the job is gone). No
cancel.

BFL's own endpoints (api.bfl.ai, api.eu.bfl.ai, api.us.bfl.ai, and the single-cluster
api.eu1/us1) answer with a `polling_url` on the regional host that took the task, and BFL's
integration guide says to poll that exact URL and never rebuild it: so when the base URL is one
of BFL's API hosts, the key follows a polling_url on another of them (`api.*.bfl.ai`, https,
port 443: names only BFL can point anywhere). Behind any other base URL (a gateway), the task
is polled at `{base}/get_result?id=`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from imgsave.adapters.imageapi.jobs import JobWireDefaults, Progress, RemoteJob, text_of, urls_of
from imgsave.adapters.imageapi.kind import Kind
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings


class BflWire(JobWireDefaults):
    kind = "bfl"
    _REFUSALS = ("Content Moderated", "Request Moderated")

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        super().__init__(base_url, settings)
        self.url = f"{self._base}/{quote(model or '', safe='.-_')}"

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-key": api_key} if api_key else {}

    def job(self, payload: Any) -> RemoteJob:
        get = payload.get if isinstance(payload, dict) else (lambda _: None)
        ident = text_of(get("id"))
        if ident is None:
            raise ValueError("the answer names no task (id)")
        polling = text_of(get("polling_url"))
        if polling is None:
            return self.at_base(RemoteJob(self.kind, ident, ""))
        return RemoteJob(self.kind, ident, polling)

    def at_base(self, job: RemoteJob) -> RemoteJob:
        return self._under_base(job, f"/get_result?id={quote(job.id, safe='')}")

    def progress(self, payload: Any) -> Progress:
        status = payload.get("status") if isinstance(payload, dict) else None
        if status == "Ready":
            result = payload.get("result")
            sample = result.get("sample") if isinstance(result, dict) else None
            return Progress("done", urls_of(sample))
        if status == "Task not found":
            return Progress("gone", reason=status)
        if status in self._REFUSALS:
            return Progress("failed", reason=status, refusal=True)
        if status in ("Error", "Failed"):
            return Progress("failed", reason=text_of(payload.get("details")) or status)
        return Progress("running")


KIND = Kind(
    KindFacts(
        name="bfl",
        default_base_url="https://api.bfl.ai/v1",
        key_variable="BFL_API_KEY",
        needs_model=True,
        has_jobs=True,
        has_batch=False,
        model_hint="an endpoint such as flux-pro-1.1",
    ),
    job_wire=BflWire,
    example_model="flux-pro-1.1",
    key_header="x-key",
    api_hosts=r"api(?:\.[a-z0-9-]+)?\.bfl\.ai",
)
