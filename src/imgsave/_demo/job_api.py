"""Image APIs that answer with a job to poll, for the loopback provider, in the shapes their
documentation and SDKs give (replicate-python's Prediction, fal-client's queue, BFL's
get_result), so the client under test parses what a real provider sends:

- `replicate`: `POST /v1/models/{owner}/{name}/predictions` (or `/v1/predictions` with a
  version) → `{id, model, version, input, status, output, error, logs, metrics, created_at,
  urls: {get, cancel, stream}}`; `Prefer: wait` answers the prediction done when it already is;
  `GET /v1/predictions/{id}`; `POST /v1/predictions/{id}/cancel`. A refusal is `failed` with an
  NSFW error.
- `fal`: `POST /{model}` → `{request_id, response_url, status_url, cancel_url}`, each under
  the model's app id (`namespace/name`: a subpath such as `/dev` is dropped);
  `GET /{app}/requests/{id}/status` → `{status: IN_QUEUE | IN_PROGRESS | COMPLETED}`;
  `GET /{app}/requests/{id}` → `{images: [{url, content_type, width, height}], seed, ...}`;
  `PUT /{app}/requests/{id}/cancel`. A refusal is a 422 with detail `content_policy_violation`.
- `bfl`: `POST /v1/{model}` → `{id, polling_url}`; `GET /v1/get_result?id=` → `{id, status:
  Pending | Ready | Error | Content Moderated | Task not found, result: {sample}}`.

A job is done after `polls` polls (0: at once). A job id in `gone` is one the provider no
longer holds, as after its retention (Replicate about an hour, BFL ten minutes): polls answer
404 (BFL: `Task not found`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, bytes, str]
JSON = "application/json"
# The job APIs emulated here (the loopback checks every job kind of the registry has one).
EMULATED = frozenset({"replicate", "fal", "bfl"})


class JobEmulation:
    def __init__(
        self,
        kind: str,
        origin: Callable[[], str],
        image_url: Callable[[int], str],
        *,
        polls: int = 0,
        seconds: float = 0.0,
    ):
        """`image_url(n)` is image n's URL (served by the loopback provider, counted sent). A
        job is done once it was polled `polls` times and `seconds` have passed since it was
        submitted."""
        self.kind = kind
        self._origin = origin
        self._image_url = image_url
        self.polls = polls
        self.seconds = seconds
        self._lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}
        # Jobs submitted: what a test counts as money spent.
        self.submitted = 0
        self.cancelled: list[str] = []
        self.gone: set[str] = set()

    # -- requests ------------------------------------------------------------------------

    def submit(self, path: str, body: dict[str, Any], n: int, fault: str, wait: bool) -> Reply:
        """A new job for request `n` (its fault decides how it ends)."""
        if self.kind == "fal" and fault == "refuse":
            detail = [{"loc": ["body", "prompt"], "msg": "content policy violation",
                       "type": "content_policy_violation"}]  # fmt: skip
            return 422, json.dumps({"detail": detail}).encode(), JSON
        ident = secrets.token_hex(10)
        count = 2 if fault == "two" else 1
        urls = [self._image_url(n * 10 + k) for k in range(count)]
        job = {"id": ident, "fault": fault, "urls": urls, "polls": 0, "body": body,
               "paths": [urlsplit(u).path for u in urls], "route": path.split("?")[0],
               "created": time.time(), "cancelled": False}  # fmt: skip
        with self._lock:
            self.jobs[ident] = job
            self.submitted += 1
        if self.kind == "replicate":
            # Prefer: wait holds the request until the prediction is done (here: at once when
            # it needs no polls).
            state = self._replicate(job, advance=wait and self.polls == 0 and not self.seconds)
            return 201, _dump(state), JSON
        if self.kind == "fal":
            app = "/".join(str(job["route"]).split("/")[:3])  # "/namespace/name"
            base = f"{self._origin()}{app}/requests/{ident}"
            answer = {"request_id": ident, "response_url": base, "status_url": base + "/status",
                      "cancel_url": base + "/cancel", "queue_position": 0}  # fmt: skip
            return 200, _dump(answer), JSON
        polling = f"{self._origin()}/v1/get_result?id={ident}"
        return 200, _dump({"id": ident, "polling_url": polling}), JSON

    def get(self, path: str) -> Reply | None:
        """A poll or a result; None when `path` is not this API's."""
        split = urlsplit(path)
        if self.kind == "replicate" and split.path.startswith("/v1/predictions/"):
            job = self._job(split.path.removeprefix("/v1/predictions/"))
            if job is None:
                return _not_found()
            return 200, _dump(self._replicate(job, advance=True)), JSON
        if self.kind == "bfl" and split.path == "/v1/get_result":
            ident = parse_qs(split.query).get("id", [""])[0]
            job = self._job(ident)
            if job is None:
                return 200, _dump({"id": ident, "status": "Task not found"}), JSON
            return 200, _dump(self._bfl(job)), JSON
        if self.kind == "fal" and "/requests/" in split.path:
            rest = split.path.partition("/requests/")[2]
            ident, _, what = rest.partition("/")
            job = self._job(ident)
            if job is None:
                return _not_found()
            if what == "status":
                done = self._advance(job)
                return 200, _dump({"status": "COMPLETED" if done else "IN_PROGRESS",
                                   "request_id": ident, "logs": None}), JSON  # fmt: skip
            if not self._done(job):
                return 400, _dump({"detail": "Request is still in progress"}), JSON
            if job["fault"] == "fail":
                failed = {"detail": "Internal error while generating",
                          "error_type": "internal_error"}  # fmt: skip
                return 500, _dump(failed), JSON
            images = [{"url": u, "content_type": "image/png", "width": 1024, "height": 1024}
                      for u in job["urls"]]  # fmt: skip
            return 200, _dump({"images": images, "seed": 42, "has_nsfw_concepts": [False],
                               "prompt": job["body"].get("prompt")}), JSON  # fmt: skip
        return None

    def cancel(self, path: str) -> Reply | None:
        split = urlsplit(path).path
        ident = ""
        if self.kind == "replicate" and split.startswith("/v1/predictions/"):
            ident = split.removeprefix("/v1/predictions/").removesuffix("/cancel")
        elif self.kind == "fal" and split.endswith("/cancel") and "/requests/" in split:
            ident = split.partition("/requests/")[2].removesuffix("/cancel")
        job = self._job(ident) if ident else None
        if job is None:
            return None
        with self._lock:
            job["cancelled"] = True
            self.cancelled.append(ident)
        if self.kind == "fal":
            return 202, _dump({"status": "CANCELLATION_REQUESTED"}), JSON
        return 200, _dump(self._replicate(job, advance=False)), JSON

    # -- states ----------------------------------------------------------------------------

    def _job(self, ident: str) -> dict[str, Any] | None:
        with self._lock:
            return None if ident in self.gone else self.jobs.get(ident)

    def _advance(self, job: dict[str, Any]) -> bool:
        """One poll; whether the job is done now."""
        with self._lock:
            job["polls"] += 1
            return self._done(job)

    def _done(self, job: dict[str, Any]) -> bool:
        aged = time.time() - job["created"] >= self.seconds
        return bool(job["polls"] > self.polls and aged)

    def _replicate(self, job: dict[str, Any], *, advance: bool) -> dict[str, Any]:
        done = self._advance(job) if advance else self._done(job)
        base = f"{self._origin()}/v1/predictions/{job['id']}"
        state: dict[str, Any] = {
            "id": job["id"], "model": "black-forest-labs/flux-schnell", "version": "dp-4d0bcc",
            "input": job["body"].get("input"), "logs": "", "output": None, "error": None,
            "status": "processing", "created_at": "2026-11-29T12:00:00.000Z",
            "data_removed": False, "metrics": {},
            "urls": {"get": base, "cancel": base + "/cancel", "stream": base + "/stream"},
        }  # fmt: skip
        if job["cancelled"]:
            state["status"] = "canceled"
        elif not done:
            state["status"] = "starting" if job["polls"] == 0 else "processing"
        elif job["fault"] == "refuse":
            state["status"] = "failed"
            state["error"] = (
                "NSFW content detected. Try running it again, or try a different prompt."
            )
        elif job["fault"] == "fail":
            state["status"], state["error"] = "failed", "CUDA out of memory"
        else:
            state["status"] = "succeeded"
            # One image: a URL; several: a list, as image models' output schemas say.
            state["output"] = job["urls"] if len(job["urls"]) > 1 else job["urls"][0]
            state["metrics"] = {"predict_time": 1.2}
        return state

    def _bfl(self, job: dict[str, Any]) -> dict[str, Any]:
        done = self._advance(job)
        state: dict[str, Any] = {"id": job["id"], "status": "Pending", "result": None,
                                 "progress": 0.5}  # fmt: skip
        if not done:
            return state
        if job["fault"] == "refuse":
            state["status"] = "Content Moderated"
        elif job["fault"] == "fail":
            state["status"], state["details"] = "Error", "generation failed"
        else:
            state["status"], state["progress"] = "Ready", 1.0
            state["result"] = {"sample": job["urls"][0], "prompt": job["body"].get("prompt"),
                               "seed": 42}  # fmt: skip
        return state


def prompt_of(kind: str, body: dict[str, Any]) -> str | None:
    """The prompt a submission carries (Replicate's is in `input`)."""
    holder = body.get("input") if kind == "replicate" else body
    prompt = holder.get("prompt") if isinstance(holder, dict) else None
    return prompt if isinstance(prompt, str) and prompt else None


def _not_found() -> Reply:
    return 404, _dump({"detail": "Not found."}), JSON


def _dump(payload: object) -> bytes:
    return json.dumps(payload).encode()
