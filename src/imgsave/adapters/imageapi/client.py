"""The image API client: one request per image, through the wire of the API's kind. Its answer
holds the images (wires.py: OpenAI, Azure OpenAI, Gemini; bytes, or a link that expires) or a
job to poll until it holds them (jobs.py: Replicate, fal, BFL; the caller logs the job first).

Transient trouble (429, 5xx, timeouts, dropped connections, answers that are not the JSON we
expect) is retried with backoff and jitter, honouring `Retry-After` up to a cap. A retry after a
request the provider may already have billed (a timeout once the body was sent, a cut or
unreadable 200) is counted and bounded on its own (`max_billed_retries`). A refusal that no retry
will change stops the run (401, 403, 404); one that concerns a single prompt (another 4xx, such
as a content-policy 400) fails that image and lets the others go on. A 200 or 201 that carries a
usable image is never thrown away, whatever else it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from imgsave.adapters.imageapi.jobs import JobWire, Progress, RemoteJob, job_wire_for
from imgsave.adapters.imageapi.pace import Pace, PaceClosed, parse_rate
from imgsave.adapters.imageapi.tls import shared_context
from imgsave.adapters.imageapi.wires import Answer, Received, Wire, wire_for
from imgsave.core.image_bytes import decode_base64
from imgsave.core.redaction import redact
from imgsave.core.settings import JOB_KINDS, ProviderSettings, Settings, no_image_api
from imgsave.core.url_rule import shorten, url_problem
from imgsave.errors import ProviderRefused, ProviderStopped, ProviderUnreachable, UsageError
from imgsave.logs import logger

FATAL_STATUSES = frozenset({401, 403, 404})
_T = TypeVar("_T")

# HTTP connection pools requests are spread over (see Provider.__init__).
POOLS = 8
# What an answer may hold around its base64 images: JSON, usage, a revised prompt.
ANSWER_SLACK = 1 << 20


# base64 this long is decoded in a worker thread: a few ms of CPU would stall every other
# request and save on the event loop.
DECODE_OFF_LOOP = 256 * 1024


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


class _Retryable(Exception):
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


@dataclass
class _Call:
    """One image's attempts: how many retries followed a possibly billed failure."""

    billed_retries: int = 0


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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        pace: Pace | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`transport`, `sleep`, `rng` and `clock` are for tests: an `httpx.MockTransport`
        instead of the network, a recorder instead of real waits, a seeded jitter, the time a
        job's polling is bounded by. `pace` spaces the starts of every request of the run and
        learns from 429s (pace.py)."""
        if not base_url:
            raise UsageError(no_image_api(settings.kind))
        problem = url_problem(base_url, allow_http=True)
        if problem:
            raise UsageError(f"IMGSAVE_BASE_URL is not usable: {problem}")
        self._jobs: JobWire | None = None
        if settings.kind in JOB_KINDS:
            self._jobs = job_wire_for(settings.kind, base_url, model, settings)
            self._endpoint = self._jobs.url
            headers = self._jobs.headers(api_key)
            self._refusal: Callable[[int, Any], str | None] = self._jobs.refusal
        else:
            wire = wire_for(settings.kind, base_url, model, settings)
            self._wire: Wire = wire
            self._endpoint = wire.url
            headers = wire.headers(api_key)
            self._refusal = wire.refusal
        self._base = urlsplit(base_url)
        # Jobs being polled when their task was cancelled (a second Ctrl-C): cancelled at the
        # provider where its API allows it, on close.
        self._abandoned: list[RemoteJob] = []
        self._clock = clock
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
        # Several small pools instead of one: httpcore's pool does work in proportion to its
        # connections times its queued requests on every request and every answer (encode/
        # httpcore#1035), which at concurrency 64 cost more CPU than everything else per image.
        self._clients = [
            httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
                follow_redirects=False,
                transport=transport,
                verify=shared_context(),
            )
            for _ in range(POOLS)
        ]
        self._turn = itertools.count()
        self._sleep = sleep
        self._random = rng or random.Random()
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

    async def _cancel(self, job: RemoteJob) -> None:
        """Ask the provider to stop a job no one will wait for (Replicate, fal); best effort."""
        if not job.cancel or not self._same_site(job.cancel):
            return
        method = "PUT" if job.kind == "fal" else "POST"
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(5):
                await self._clients[0].request(method, job.cancel)

    async def generate(
        self, prompt: str, on_job: Callable[[RemoteJob], Awaitable[None]] | None = None
    ) -> Answer:
        """The images the API answers for `prompt`; raises ImageFailed or ProviderRefused.
        An API that answers with a job: `on_job(job)` is awaited (the caller logs it, fsynced)
        before the job is first polled."""
        call = _Call()

        async def asked() -> Answer:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_Retryable),
                stop=stop_after_attempt(self._settings.max_attempts),
                wait=lambda state: self._wait(state, call),
                sleep=self._sleep,
                reraise=True,
            )
            if self._jobs is None:
                answer: Answer = await retrying(self._once, prompt, call, self._images)
                return answer
            submitted: tuple[RemoteJob, Progress | None] = await retrying(
                self._once, prompt, call, self._submitted
            )
            job, first = submitted
            if on_job is not None:
                await on_job(job)
            return await self._follow(job, first)

        return await self._guarded(asked, call)

    async def resume(self, job: RemoteJob) -> Answer:
        """The images of a job an earlier run submitted and logged: polled, never submitted
        again. ImageFailed with `lost` when the provider no longer holds its result."""
        return await self._guarded(lambda: self._follow(job, None), _Call())

    async def _guarded(self, work: Callable[[], Awaitable[Answer]], call: _Call) -> Answer:
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
        except _Retryable as exc:
            reason = redact(str(exc), self._secrets)
            if exc.unreachable:
                raise ProviderUnreachable(
                    f"cannot reach the image API at {self._endpoint} after "
                    f"{self._settings.max_attempts} attempts: {reason}",
                    possibly_billed_retries=call.billed_retries,
                ) from None
            raise ImageFailed(
                f"gave up after {self._settings.max_attempts} attempts: {reason}",
                possibly_billed_retries=call.billed_retries,
            ) from None
        answer.possibly_billed_retries = call.billed_retries
        return answer

    def _wait(self, state: RetryCallState, call: _Call) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, _Retryable) else None
        if isinstance(exc, _Retryable) and exc.billed:
            call.billed_retries += 1
        pause = backoff(
            state.attempt_number, self._settings, retry_after=retry_after, rng=self._random
        )
        logger.debug(
            "image API: attempt %d failed (%s); retrying in %.2fs",
            state.attempt_number,
            redact(str(exc), self._secrets),
            pause,
        )
        return pause

    async def _once(
        self,
        prompt: str,
        call: _Call,
        read: Callable[[httpx.Response], Awaitable[_T]],
    ) -> _T:
        try:
            return await read(await self._attempt(prompt))
        except _Retryable as exc:
            if exc.billed and call.billed_retries >= self._settings.max_billed_retries:
                raise ImageFailed(
                    f"{exc}; not retried: the provider may have billed this attempt, and "
                    f"{call.billed_retries} such retr{'y' if call.billed_retries == 1 else 'ies'}"
                    f" is the limit (max_billed_retries)"
                ) from None
            raise

    async def _attempt(self, prompt: str) -> httpx.Response:
        """One request, its answer read, every status that is not a 200 or 201 raised."""
        body = self._jobs.body(prompt) if self._jobs else self._wire.body(prompt)
        extra = self._jobs.submit_headers() if self._jobs else {}
        if self.pace:
            await self.pace.wait()
        if not self._sending:
            raise NotSent
        try:
            # httpx's timeout is per read: a server trickling a byte at a time never trips it.
            # The whole request, body included, gets one deadline.
            async with asyncio.timeout(self._settings.timeout):
                client = self._clients[next(self._turn) % POOLS]
                async with client.stream(
                    "POST", self._endpoint, json=body, headers=extra
                ) as streamed:
                    response = await self._read(streamed)
        except TimeoutError:
            raise _Retryable(
                f"no complete answer within {self._settings.timeout:g}s", billed=True
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise _Retryable(
                f"connection failed: {type(exc).__name__}: {exc}", unreachable=True
            ) from None
        except httpx.TimeoutException as exc:
            raise _Retryable(
                f"no answer within {self._settings.timeout:g}s",
                billed=isinstance(exc, httpx.ReadTimeout),
            ) from None
        except httpx.TransportError as exc:
            # Cut while the answer was coming: the request reached the provider.
            billed = isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError)
            raise _Retryable(
                f"connection failed: {type(exc).__name__}: {exc}", billed=billed
            ) from None
        status = response.status_code
        if self.pace:
            self.pace.observe(response.headers)
        if status == 429:
            if self.pace:
                self.pace.throttle(_retry_after(response))
            raise _Retryable("rate limited (429)", _retry_after(response))
        if status >= 500:
            raise _Retryable(f"server error {status}", _retry_after(response))
        if status in FATAL_STATUSES:
            raise ProviderRefused(
                f"image API refused the request with {status} {response.reason_phrase}"
                f"{_detail(response)} (check IMGSAVE_API_KEY, IMGSAVE_BASE_URL and IMGSAVE_MODEL)"
            )
        if status >= 400:
            try:
                refusal = self._refusal(status, response.json())
            except ValueError:
                refusal = None
            raise ImageFailed(
                f"image API rejected the prompt: {status}{_detail(response)}", refusal=refusal
            )
        if status not in (200, 201):
            raise _Retryable(f"unexpected status {status}")
        return response

    async def _read(self, response: httpx.Response) -> httpx.Response:
        """The answer with its body read, up to the cap (see __init__); ImageFailed past it:
        the provider has answered (and billed), and asking again would only pay again."""
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
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=b"".join(chunks),
            request=response.request,
        )

    async def _images(self, response: httpx.Response) -> Answer:
        content = response.content
        try:
            # A base64 answer is megabytes: parsed and decoded in one worker-thread hop, so
            # other requests and saves are not held up meanwhile.
            if len(content) > DECODE_OFF_LOOP:
                payload, decoded = await asyncio.to_thread(self._wire.parse, content)
            else:
                payload, decoded = self._wire.parse(content)
        except ValueError:
            raise _Retryable("the answer is not JSON", billed=True) from None
        answer = self._wire.read(payload, decoded, allow_http=self._allow_http)
        if not answer.images:
            if answer.refusal or answer.refused_urls:
                # The provider's answer, not a fault: asking again would pay again.
                raise ImageFailed("; ".join(answer.problems), refusal=answer.refusal)
            raise _Retryable(f"the answer holds no image: {answer.problems[0]}", billed=True)
        return answer

    # -- jobs (Replicate, fal, BFL) ---------------------------------------------------------

    async def _submitted(self, response: httpx.Response) -> tuple[RemoteJob, Progress | None]:
        """The job a submission's answer names, and its state when the answer already says
        (Replicate's `Prefer: wait` answers a prediction that finished in time as done)."""
        assert self._jobs is not None
        try:
            payload = json.loads(response.content)
            job = self._jobs.job(payload)
        except ValueError as exc:
            # The job may exist, and be billed: a retry is counted as one that may pay twice.
            raise _Retryable(f"the answer names no job: {exc}", billed=True) from None
        first = self._jobs.progress(payload)
        return job, (None if first.state == "running" else first)

    async def _follow(self, job: RemoteJob, first: Progress | None) -> Answer:
        """Poll `job` until it is done, failed or gone, within `poll_timeout`; its images."""
        assert self._jobs is not None
        for url in filter(None, (job.poll, job.result)):
            if not self._same_site(url):
                raise ImageFailed(
                    f"job {job.id}: the provider names {shorten(url)!r}, on another site than "
                    "IMGSAVE_BASE_URL; the API key is not sent there, and the job is left in "
                    "the log"
                )
        progress = first
        deadline = self._clock() + self._settings.poll_timeout
        try:
            while progress is None or progress.state == "running":
                if progress is not None:
                    if self._clock() >= deadline:
                        raise ImageFailed(
                            f"job {job.id} still running after {self._settings.poll_timeout:g}s"
                            " (poll_timeout); left in the log, the next run polls it again"
                        )
                    await self._sleep(self._settings.poll_interval)
                polled = await self._get(job, job.poll)
                progress = (
                    Progress("gone", reason="the provider answers 404 for it")
                    if polled is _GONE
                    else self._jobs.progress(polled)
                )
        except asyncio.CancelledError:
            self._abandoned.append(job)
            raise
        if progress.state == "gone":
            raise ImageFailed(
                f"job {job.id} is no longer held by the provider ({progress.reason}): "
                "paid for, and its images are lost",
                job=job.id,
                lost=True,
            )
        if progress.state == "failed":
            refusal = progress.reason if progress.refusal else None
            raise ImageFailed(
                f"job {job.id} failed: {progress.reason}", job=job.id, refusal=refusal
            )
        outputs = progress.outputs
        if not outputs and job.result:
            result = await self._get(job, job.result)
            if result is _GONE:
                raise ImageFailed(
                    f"job {job.id}'s result is no longer held by the provider: paid for, and "
                    "its images are lost",
                    job=job.id,
                    lost=True,
                )
            outputs = self._jobs.outputs(result)
        answer = Answer([], job=job.id)
        for output in outputs:
            if output.startswith("data:"):
                data = decode_base64(output)
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

    async def _get(self, job: RemoteJob, url: str) -> Any:
        """A job's state or result, as JSON. Polls are not billed: transient trouble is
        retried; a job the provider no longer knows (404, 410) is `gone`."""
        assert self._jobs is not None
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                async with asyncio.timeout(self._settings.timeout):
                    client = self._clients[next(self._turn) % POOLS]
                    response = await client.get(url)
                status = response.status_code
                if status in (404, 410):
                    return _GONE
                if status in (401, 403):
                    raise ProviderRefused(
                        f"image API refused to show job {job.id} with {status}"
                        f"{_detail(response)} (check IMGSAVE_API_KEY)"
                    )
                failure = self._jobs.failure(status, response.headers, _json_or_none(response))
                if failure and status >= 400:
                    raise ImageFailed(f"job {job.id} failed: {failure}", job=job.id)
                if 400 <= status < 500 and status != 429:
                    refusal = self._refusal(status, _json_or_none(response))
                    raise ImageFailed(
                        f"job {job.id} failed: {status}{_detail(response)}",
                        job=job.id,
                        refusal=refusal,
                    )
                if status == 200:
                    return response.json()
                reason, retry_after = f"status {status}", _retry_after(response)
            except (httpx.TransportError, TimeoutError, ValueError) as exc:
                reason, retry_after = f"{type(exc).__name__}: {exc}", None
            if attempt == self._settings.max_attempts:
                raise ImageFailed(
                    f"cannot poll job {job.id} ({reason}); left in the log, the next run polls "
                    "it again"
                )
            await self._sleep(
                backoff(attempt, self._settings, retry_after=retry_after, rng=self._random)
            )
        raise AssertionError("unreachable")

    def _same_site(self, url: str) -> bool:
        """Whether the API key may go to `url`: the base URL's scheme, and its host or a host
        of the same site (BFL polls at api.us1.bfl.ai for api.bfl.ai)."""
        parts = urlsplit(url)
        host, base = parts.hostname or "", self._base.hostname or ""
        if parts.scheme != self._base.scheme or not host:
            return False
        site = ".".join(base.split(".")[-2:])
        return host in (base, site) or host.endswith("." + site)


def add_usage(total: dict[str, int], usage: dict[str, int]) -> None:
    """Token counts summed by name, into `total`."""
    for name, tokens in usage.items():
        total[name] = total.get(name, 0) + tokens


def backoff(
    attempt: int,
    settings: ProviderSettings,
    *,
    retry_after: float | None = None,
    rng: random.Random,
) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): the server's Retry-After up to
    a cap, else exponential backoff with jitter, bounded by `backoff_max`."""
    if retry_after is not None:
        return min(retry_after, settings.max_retry_after) + rng.uniform(0, 0.05)
    ceiling = min(settings.backoff_max, settings.backoff_initial * 2 ** (attempt - 1))
    # "Equal jitter": never less than half the ceiling, so retries spread out without
    # collapsing to zero wait.
    return rng.uniform(ceiling / 2, ceiling)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header, in either form (seconds, or an HTTP date), as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read the same way
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _retry_after(response: httpx.Response) -> float | None:
    # retry-after-ms (OpenAI, Azure) is finer than Retry-After's whole seconds.
    millis = response.headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return retry_after_seconds(response.headers.get("retry-after"))


# What a poll of a job the provider no longer holds (404, 410) returns.
_GONE: Any = object()


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _detail(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {' '.join(str(message).split())[:200]}"
