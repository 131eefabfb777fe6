"""The image API client: one request per image, through the wire of the API's kind (kinds/).
Its answer holds the images (OpenAI, Azure OpenAI, Gemini: bytes, or a link that expires) or a
job to poll until it holds them (Replicate, fal, BFL; the caller logs the job first).

Transient trouble (429, 5xx, timeouts, dropped connections, answers that are not the JSON we
expect) is retried by one policy for submissions and polls alike (retries.py). A retry after a
request the provider may already have billed (a timeout once the body was sent, a cut or
unreadable 200) is counted and bounded on its own (`max_billed_retries`); polls are never
billed. A refusal that no retry will change stops the run (a refused key, whatever status the
API says it with; 404); one that concerns a single prompt (another 4xx, such as a
content-policy 400) fails that image and lets the others go on. A name that does not resolve
stops the run at once. A 200 or 201 that carries a usable image is never thrown away, whatever
else it holds. Every answer, polls included, is read no further than its images could be.

The key goes only where key_scope.py says: a job's URLs on another origin are replaced by the
paths its API documents under the base URL, so a gateway base URL works and the key stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from imgsave.adapters.imageapi.failures import ImageFailed, NotSent, Retryable
from imgsave.adapters.imageapi.jobs import JobWire, Progress, RemoteJob
from imgsave.adapters.imageapi.key_scope import KeyScope, refuse_key_in_clear
from imgsave.adapters.imageapi.kinds import kind_named
from imgsave.adapters.imageapi.pace import Pace, PaceClosed, parse_rate
from imgsave.adapters.imageapi.retries import Call, RetryPolicy, retry_after
from imgsave.adapters.imageapi.retries import backoff as backoff
from imgsave.adapters.imageapi.retries import retry_after_seconds as retry_after_seconds
from imgsave.adapters.imageapi.tls import shared_context
from imgsave.adapters.imageapi.wires import Answer, Received, Wire
from imgsave.core.image_bytes import decode_data_uri
from imgsave.core.redaction import redact
from imgsave.core.settings import ProviderSettings, Settings
from imgsave.core.url_rule import shorten, url_problem
from imgsave.errors import ProviderRefused, ProviderStopped, ProviderUnreachable, UsageError

__all__ = [
    "Answer",
    "ImageFailed",
    "NotSent",
    "Provider",
    "Received",
    "RemoteJob",
    "Seams",
    "add_usage",
    "backoff",
    "retry_after_seconds",
]

# Statuses that stop the run whatever the kind: the route or the model does not exist.
FATAL_STATUSES = frozenset({401, 403, 404})
# HTTP connection pools requests are spread over (see Provider.__init__).
POOLS = 8
# What an answer may hold around its base64 images: JSON, usage, a revised prompt.
ANSWER_SLACK = 1 << 20
# base64 this long is decoded in a worker thread: a few ms of CPU would stall every other
# request and save on the event loop.
DECODE_OFF_LOOP = 256 * 1024
# getaddrinfo's answers that mean the name does not exist (not that DNS is having a bad
# minute, EAI_AGAIN, which is retried).
_NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


@dataclass(frozen=True)
class Seams:
    """What tests put in place of the world: an `httpx.MockTransport` instead of the network,
    a recorder instead of real waits, a seeded jitter, the clock a job's polling is bounded
    by."""

    transport: httpx.AsyncBaseTransport | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic


class Provider:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        model: str | None,
        settings: ProviderSettings,
        *,
        allow_http: bool = False,
        max_image_bytes: int = 50_000_000,
        pace: Pace | None = None,
        seams: Seams | None = None,
    ):
        """`pace` spaces the starts of every request of the run and learns from 429s
        (pace.py). UsageError for settings no request could succeed with: no base URL, no
        model for an API that needs one, a key that would travel in clear."""
        kind = kind_named(settings.kind)
        if not base_url:
            raise UsageError(kind.facts.no_image_api())
        if problem := url_problem(base_url, allow_http=True):
            raise UsageError(f"IMGSAVE_BASE_URL is not usable: {problem}")
        if kind.facts.needs_model and not model:
            raise UsageError(kind.facts.no_model())
        refuse_key_in_clear(base_url, api_key, allow_http=allow_http)
        seams = seams or Seams()
        # The API's wire: one that answers with images, or one that answers with jobs.
        self._wire: Wire | None = kind.wire(base_url, model, settings) if kind.wire else None
        self._jobs: JobWire | None = (
            kind.job_wire(base_url, model, settings) if kind.job_wire else None
        )
        api = self._jobs or self._wire
        assert api is not None  # Kind holds exactly one
        self._api: Wire | JobWire = api
        self._endpoint = api.url
        self._scope = KeyScope(base_url, kind.api_hosts)
        # Jobs being polled when their task was cancelled (a second Ctrl-C): cancelled at the
        # provider where its API allows it, on close.
        self._abandoned: list[RemoteJob] = []
        self._clock = seams.clock
        self._settings = settings
        self._allow_http = allow_http
        # An answer is read no further than what its images could take as base64 (4/3 of the
        # bytes) plus its JSON around them: an answer past that holds an image imgsave would
        # refuse anyway, and reading it whole would hold hundreds of MB per request in flight.
        images = settings.params.get("n", 1)
        per_answer = max(1, images if isinstance(images, int) else 1) + 1
        self._max_answer = max_image_bytes * 4 // 3 * per_answer + ANSWER_SLACK
        # Providers echo a wrong key back ("Incorrect API key provided: sk-..."): every message
        # this client produces is masked before it reaches the run, its log or the terminal.
        self._secrets = (api_key,) if api_key else ()
        self._retries = RetryPolicy(settings, seams.sleep, seams.rng, self._secrets)
        self._sleep = seams.sleep
        # Several small pools instead of one: httpcore's pool does work in proportion to its
        # connections times its queued requests on every request and every answer (encode/
        # httpcore#1035), which at concurrency 64 cost more CPU than everything else per image.
        self._clients = [
            httpx.AsyncClient(
                headers=api.headers(api_key),
                timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
                follow_redirects=False,
                transport=seams.transport,
                verify=shared_context(),
            )
            for _ in range(POOLS)
        ]
        self._turn = itertools.count()
        self.pace = pace
        self._sending = True

    @property
    def job_kind(self) -> str | None:
        """The API's kind when it answers with jobs to poll (Replicate, fal, BFL)."""
        return self._jobs.kind if self._jobs else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        rate = settings.provider.rate
        return cls(
            settings.api_base,
            settings.api_key,
            settings.model,
            settings.provider,
            allow_http=settings.allow_http,
            max_image_bytes=settings.store.max_image_bytes,
            pace=Pace(
                parse_rate(rate) if rate else None, max_pause=settings.provider.max_retry_after
            ),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stop_sending(self) -> None:
        """From now on no request goes out, first attempt or retry; those already sent are
        answered as usual. (Ctrl-C: a request still waiting for its start under --rate has
        not started, and must not start after it.)"""
        self._sending = False
        if self.pace:
            self.pace.close()

    async def aclose(self) -> None:
        abandoned, self._abandoned = self._abandoned, []
        for job in abandoned:
            await self._cancel(job)
        for client in self._clients:
            await client.aclose()

    async def generate(
        self, prompt: str, on_job: Callable[[RemoteJob], Awaitable[None]] | None = None
    ) -> Answer:
        """The images the API answers for `prompt`; raises ImageFailed or ProviderRefused.
        An API that answers with a job: `on_job(job)` is awaited (the caller logs it, fsynced)
        before the job is first polled."""
        call = Call()

        async def asked() -> Answer:
            if self._jobs is None:
                return await self._retries.run(lambda: self._answer(prompt), call)
            job, first = await self._retries.run(lambda: self._job(prompt), call)
            if on_job is not None:
                await on_job(job)
            return await self._follow(job, first)

        return await self._guarded(asked, call)

    async def resume(self, job: RemoteJob) -> Answer:
        """The images of a job an earlier run submitted and logged: polled, never submitted
        again. ImageFailed with `lost` when the provider no longer holds its result."""
        return await self._guarded(lambda: self._follow(self._located(job), None), Call())

    async def _guarded(self, work: Callable[[], Awaitable[Answer]], call: Call) -> Answer:
        """`work`'s answer, with every failure said as imgsave says it, secrets masked."""
        try:
            answer = await work()
        except (NotSent, PaceClosed):
            raise NotSent(possibly_billed_retries=call.billed_retries) from None
        except ImageFailed as exc:
            raise exc.with_reason(redact(str(exc), self._secrets), call.billed_retries) from None
        except ProviderStopped as exc:
            raise type(exc)(
                redact(str(exc), self._secrets), possibly_billed_retries=call.billed_retries
            ) from None
        except Retryable as exc:
            reason = redact(str(exc), self._secrets)
            attempts = self._settings.max_attempts
            if exc.unreachable:
                raise ProviderUnreachable(
                    f"cannot reach the image API at {self._endpoint} after {attempts} attempts: "
                    f"{reason}",
                    possibly_billed_retries=call.billed_retries,
                ) from None
            raise ImageFailed(
                f"gave up after {attempts} attempts: {reason}",
                possibly_billed_retries=call.billed_retries,
            ) from None
        answer.possibly_billed_retries = call.billed_retries
        return answer

    # -- one attempt ---------------------------------------------------------------------------

    async def _submit(self, prompt: str) -> bytes:
        """One request, its answer read within the cap; every status but 200 or 201 raised."""
        body = self._api.body(prompt)
        if self.pace:
            await self.pace.wait()
        if not self._sending:
            raise NotSent
        try:
            # httpx's timeout is per read: a server trickling a byte at a time never trips it.
            # The whole request, body included, gets one deadline.
            async with asyncio.timeout(self._settings.timeout):
                client = self._client()
                async with client.stream("POST", self._endpoint, json=body) as streamed:
                    content = await self._read(streamed)
                    response = streamed
        except TimeoutError:
            raise Retryable(
                f"no complete answer within {self._settings.timeout:g}s", billed=True
            ) from None
        except httpx.TransportError as exc:
            raise _transport_failure(exc, self._endpoint, sent=True) from None
        self._judge(response, content)
        return content

    def _judge(self, response: httpx.Response, content: bytes) -> None:
        status = response.status_code
        if self.pace:
            self.pace.observe(response.headers)
        if status == 429:
            if self.pace:
                self.pace.throttle(retry_after(response))
            raise Retryable("rate limited (429)", retry_after(response))
        if status >= 500:
            raise Retryable(f"server error {status}", retry_after(response))
        if status >= 400:
            # (Parsed here only: a 200's megabytes of base64 are parsed off the event loop.)
            payload = _json_or_none(content)
            if status in FATAL_STATUSES or self._api.key_refused(status, payload):
                raise ProviderRefused(
                    f"image API refused the request with {status} {response.reason_phrase}"
                    f"{_detail(payload)} (check IMGSAVE_API_KEY, IMGSAVE_BASE_URL and "
                    "IMGSAVE_MODEL)"
                )
            raise ImageFailed(
                f"image API rejected the prompt: {status}{_detail(payload)}",
                refusal=self._api.refusal(status, payload),
            )
        if status not in (200, 201):
            raise Retryable(f"unexpected status {status}")

    async def _read(self, response: httpx.Response) -> bytes:
        """The answer's body, up to the cap (see __init__); ImageFailed past it: the provider
        has answered (and billed), and asking again would only pay again."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_answer:
                raise ImageFailed(
                    f"the answer is over {self._max_answer:,} bytes, more than its images may "
                    "be (max_image_bytes); not read further, not retried"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _client(self) -> httpx.AsyncClient:
        return self._clients[next(self._turn) % POOLS]

    # -- answers that hold images (OpenAI, Azure, Gemini) ---------------------------------------

    async def _answer(self, prompt: str) -> Answer:
        """One attempt at an API that answers with images."""
        return await self._images(await self._submit(prompt))

    async def _images(self, content: bytes) -> Answer:
        assert self._wire is not None
        try:
            # A base64 answer is megabytes: parsed and decoded in one worker-thread hop, so
            # other requests and saves are not held up meanwhile.
            if len(content) > DECODE_OFF_LOOP:
                payload, decoded = await asyncio.to_thread(self._wire.parse, content)
            else:
                payload, decoded = self._wire.parse(content)
        except ValueError:
            raise Retryable("the answer is not JSON", billed=True) from None
        answer = self._wire.read(payload, decoded, allow_http=self._allow_http)
        if not answer.images:
            if answer.refusal or answer.refused_urls:
                # The provider's answer, not a fault: asking again would pay again.
                raise ImageFailed("; ".join(answer.problems), refusal=answer.refusal)
            raise Retryable(f"the answer holds no image: {answer.problems[0]}", billed=True)
        return answer

    # -- jobs (Replicate, fal, BFL) -------------------------------------------------------------

    async def _job(self, prompt: str) -> tuple[RemoteJob, Progress | None]:
        """One attempt at an API that answers with a job."""
        return self._submitted(await self._submit(prompt))

    def _submitted(self, content: bytes) -> tuple[RemoteJob, Progress | None]:
        """The job a submission's answer names, at the URLs the key may follow, and its state
        when the answer already says it is over (a prediction that finished in time)."""
        assert self._jobs is not None
        try:
            payload = json.loads(content)
            job = self._located(self._jobs.job(payload))
        except ValueError as exc:
            # The job may exist, and be billed: a retry is counted as one that may pay twice.
            raise Retryable(f"the answer names no job: {exc}", billed=True) from None
        first = self._jobs.progress(payload)
        return job, (None if first.state == "running" else first)

    def _located(self, job: RemoteJob) -> RemoteJob:
        """`job` with each of its URLs the key may follow: the provider's where the key may go
        there (key_scope.py), else the path the API documents under the base URL."""
        assert self._jobs is not None
        documented = self._jobs.at_base(job)

        def pick(given: str | None, under_base: str | None) -> str | None:
            return given if given and self._scope.admits(given) else under_base

        return RemoteJob(
            job.kind,
            job.id,
            pick(job.poll, documented.poll) or documented.poll,
            pick(job.result, documented.result),
            pick(job.cancel, documented.cancel),
        )

    async def _follow(self, job: RemoteJob, first: Progress | None) -> Answer:
        """Poll `job` until it is done, failed or gone, within `poll_timeout`; its images."""
        assert self._jobs is not None
        try:
            progress = first or await self._progress(job)
            deadline = self._clock() + self._settings.poll_timeout
            while progress.state == "running":
                if self._clock() >= deadline:
                    raise ImageFailed(
                        f"job {job.id} still running after {self._settings.poll_timeout:g}s"
                        " (poll_timeout); left in the log, the next run polls it again"
                    )
                await self._sleep(self._settings.poll_interval)
                progress = await self._progress(job)
        except asyncio.CancelledError:
            self._abandoned.append(job)
            raise
        outputs = _ended(job, progress) or await self._results(job)
        return self._answer_of(job, outputs)

    async def _progress(self, job: RemoteJob) -> Progress:
        assert self._jobs is not None
        polled = await self._polled(job, job.poll)
        if polled is _GONE:
            return Progress("gone", reason="the provider answers 404 for it")
        return self._jobs.progress(polled)

    async def _results(self, job: RemoteJob) -> list[str]:
        """fal: the images at the job's result, once its status said it is done."""
        assert self._jobs is not None
        if not job.result:
            return []
        result = await self._polled(job, job.result)
        if result is _GONE:
            raise ImageFailed(
                f"job {job.id}'s result is no longer held by the provider: paid for, and its "
                "images are lost",
                job=job.id,
                lost=True,
            )
        return self._jobs.outputs(result)

    def _answer_of(self, job: RemoteJob, outputs: list[str]) -> Answer:
        answer = Answer([], job=job.id)
        for output in outputs:
            if output[:5].lower() == "data:":
                data = decode_data_uri(output)
                answer.images.append(
                    Received(data=data)
                    if data is not None
                    else Received(data=output.encode(), undecodable=True)
                )
            elif problem := url_problem(output, allow_http=self._allow_http):
                answer.problems.append(
                    f"job {job.id} answered with a URL imgsave will not save ({problem}): "
                    f"{shorten(output)!r}"
                )
            else:
                answer.images.append(Received(url=output))
        if not answer.images:
            raise ImageFailed(
                f"job {job.id} finished with no image"
                + (f": {answer.problems[0]}" if answer.problems else ""),
                job=job.id,
            )
        return answer

    async def _polled(self, job: RemoteJob, url: str) -> Any:
        """A job's state or result as JSON, through the one retry policy (a poll is never
        billed); `_GONE` when the provider no longer knows the job (404, 410)."""
        try:
            return await self._retries.run(lambda: self._poll(job, url), Call())
        except Retryable as exc:
            reason = redact(str(exc), self._secrets)
            raise ImageFailed(
                f"cannot poll job {job.id} ({reason}); left in the log, the next run polls it again"
            ) from None

    async def _poll(self, job: RemoteJob, url: str) -> Any:
        assert self._jobs is not None
        try:
            async with asyncio.timeout(self._settings.timeout):
                async with self._client().stream("GET", url) as response:
                    content = await self._read_poll(job, response)
        except TimeoutError:
            raise Retryable(f"no answer within {self._settings.timeout:g}s") from None
        except httpx.TransportError as exc:
            raise _transport_failure(exc, url, sent=False) from None
        status = response.status_code
        payload = _json_or_none(content)
        if status in (404, 410):
            return _GONE
        if 400 <= status < 500 and self._jobs.key_refused(status, payload):
            raise ProviderRefused(
                f"image API refused to show job {job.id} with {status}{_detail(payload)} "
                "(check IMGSAVE_API_KEY)"
            )
        if status >= 400 and (failure := self._jobs.failure(status, response.headers, payload)):
            raise ImageFailed(f"job {job.id} failed: {failure}", job=job.id)
        if 400 <= status < 500 and status != 429:
            raise ImageFailed(
                f"job {job.id} failed: {status}{_detail(payload)}",
                job=job.id,
                refusal=self._jobs.refusal(status, payload),
            )
        if status != 200:
            raise Retryable(f"status {status}", retry_after(response))
        if payload is None:
            raise Retryable("the answer is not JSON")
        return payload

    async def _read_poll(self, job: RemoteJob, response: httpx.Response) -> bytes:
        """A poll's answer within the same cap as a submission's: one past it cannot hold
        images imgsave would store, so the job is over for imgsave."""
        try:
            return await self._read(response)
        except ImageFailed:
            raise ImageFailed(
                f"job {job.id}: a poll's answer is over {self._max_answer:,} bytes, more than "
                "its images may be (max_image_bytes); not read further",
                job=job.id,
            ) from None

    async def _cancel(self, job: RemoteJob) -> None:
        """Ask the provider to stop a job no one will wait for (Replicate, fal); best effort."""
        method = self._jobs.cancel_method if self._jobs else None
        if not (method and job.cancel and self._scope.admits(job.cancel)):
            return
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(5):
                await self._clients[0].request(method, job.cancel)


def _ended(job: RemoteJob, progress: Progress) -> list[str]:
    """A finished job's outputs; ImageFailed when it is over with none to have."""
    if progress.state == "gone":
        raise ImageFailed(
            f"job {job.id} is no longer held by the provider ({progress.reason}): paid for, "
            "and its images are lost",
            job=job.id,
            lost=True,
        )
    if progress.state == "failed":
        refusal = progress.reason if progress.refusal else None
        raise ImageFailed(f"job {job.id} failed: {progress.reason}", job=job.id, refusal=refusal)
    return progress.outputs


def _transport_failure(exc: httpx.TransportError, url: str, *, sent: bool) -> Exception:
    """What a transport error means: a name that does not exist stops the run at once (no
    retry will make it resolve); no connection is `unreachable`; one cut while the answer was
    coming may have been billed (`sent`: the request was a submission)."""
    host = urlsplit(url).hostname or url
    if _unresolvable(exc):
        return ProviderUnreachable(f"cannot reach the image API: {host} does not resolve ({exc})")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.UnsupportedProtocol):
        return Retryable(f"connection failed: {type(exc).__name__}: {exc}", unreachable=True)
    if isinstance(exc, httpx.TimeoutException):
        billed = sent and isinstance(exc, httpx.ReadTimeout)
        return Retryable(f"no answer in time: {type(exc).__name__}", billed=billed)
    billed = sent and isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError)
    return Retryable(f"connection failed: {type(exc).__name__}: {exc}", billed=billed)


def _unresolvable(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror) and seen.errno in _NO_SUCH_NAME:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def add_usage(total: dict[str, int], usage: dict[str, int]) -> None:
    """Token counts summed by name, into `total`."""
    for name, tokens in usage.items():
        total[name] = total.get(name, 0) + tokens


# What a poll of a job the provider no longer holds (404, 410) returns.
_GONE: Any = object()


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _detail(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if message is None:
        return ""
    return f": {' '.join(str(message).split())[:200]}"
