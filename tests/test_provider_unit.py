"""The image API client's retry logic against httpx.MockTransport: fast, and every branch.

The loopback HTTP server (tests/test_faults.py, test_generate_cli.py) stays the end-to-end proof;
these pin the arithmetic: Retry-After in both forms and capped, backoff bounds, what is retried,
what stops the run, and that a key the provider echoes is masked.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgsave.adapters.imageapi.client import (
    ImageFailed,
    Provider,
    Seams,
    backoff,
    retry_after_seconds,
)
from imgsave.core.settings import ProviderSettings
from imgsave.errors import ProviderRefused, ProviderUnreachable

SETTINGS = ProviderSettings(max_attempts=6, max_retry_after=60.0, backoff_initial=0.5)
OK = httpx.Response(200, json={"data": [{"url": "https://img.example/1.png"}]})
KEY = "sk-test-0123456789abcdef"


class Api:
    """A scripted provider: answers in order, then repeats the last; records what it got."""

    def __init__(self, *answers: httpx.Response | Callable[[], httpx.Response]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer() if callable(answer) else answer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def provider(self, settings: ProviderSettings = SETTINGS) -> Provider:
        return Provider(
            "https://api.example/v1",
            KEY,
            "gpt-image-1",
            settings,
            seams=Seams(httpx.MockTransport(self.handle), self.sleep, random.Random(7)),
        )


async def generate(api: Api, settings: ProviderSettings = SETTINGS) -> str | None:
    async with api.provider(settings) as provider:
        answer = await provider.generate("a lighthouse")
    return answer.images[0].url


async def test_a_429_with_retry_after_in_seconds_waits_that_long_then_succeeds():
    api = Api(httpx.Response(429, headers={"Retry-After": "7"}), OK)
    assert await generate(api) == "https://img.example/1.png"
    assert len(api.requests) == 2
    assert len(api.sleeps) == 1 and 7.0 <= api.sleeps[0] <= 7.05


async def test_retry_after_as_an_http_date_waits_until_then():
    def later() -> httpx.Response:
        when = email.utils.formatdate(time.time() + 30, usegmt=True)
        return httpx.Response(503, headers={"Retry-After": when})

    api = Api(later, OK)
    assert await generate(api) == "https://img.example/1.png"
    # One second of slack each way: the header has whole seconds.
    assert 28.5 <= api.sleeps[0] <= 31.05


async def test_retry_after_beyond_the_cap_waits_only_the_cap():
    api = Api(httpx.Response(429, headers={"Retry-After": "86400"}), OK)
    await generate(api)
    assert 60.0 <= api.sleeps[0] <= 60.05


async def test_without_retry_after_the_backoff_grows_and_stays_within_its_bounds():
    api = Api(*[httpx.Response(500)] * 5, OK)
    await generate(api)
    assert len(api.requests) == 6
    for attempt, slept in enumerate(api.sleeps, start=1):
        ceiling = min(SETTINGS.backoff_max, SETTINGS.backoff_initial * 2 ** (attempt - 1))
        assert ceiling / 2 <= slept <= ceiling


async def test_it_gives_up_after_max_attempts_with_that_number_in_the_message():
    api = Api(httpx.Response(502))
    with pytest.raises(ImageFailed, match="gave up after 6 attempts: server error 502"):
        await generate(api)
    assert len(api.requests) == 6 and len(api.sleeps) == 5


async def test_answers_without_an_image_are_possibly_billed_retries_bounded_on_their_own():
    empty, html = httpx.Response(200, json={"data": []}), httpx.Response(200, text="<html>")
    generous = ProviderSettings(max_attempts=6, max_billed_retries=2, backoff_initial=0.01)
    api = Api(empty, html, OK)
    async with api.provider(generous) as provider:
        answer = await provider.generate("a lighthouse")
    assert answer.images[0].url == "https://img.example/1.png"
    assert answer.possibly_billed_retries == 2 and len(api.requests) == 3

    api = Api(empty, html, OK)  # the default bound: one such retry, then the image fails
    with pytest.raises(ImageFailed, match="may have billed") as raised:
        await generate(api)
    assert len(api.requests) == 2 and raised.value.possibly_billed_retries == 1


async def test_5xx_and_429_retries_are_not_counted_as_billed():
    api = Api(httpx.Response(500), httpx.Response(429), OK)
    async with api.provider() as provider:
        answer = await provider.generate("a lighthouse")
    assert answer.possibly_billed_retries == 0 and len(api.requests) == 3


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


async def test_b64_answers_many_images_usage_and_params_pass_through():
    import base64
    import json

    encoded = base64.b64encode(PNG).decode()
    body = {
        "data": [{"b64_json": encoded}, {"b64_json": "abc"}, {"b64_json": "%%%"}],
        "usage": {"input_tokens": 10, "output_tokens": 4160, "total_tokens": 4170, "x": "y"},
    }
    api = Api(httpx.Response(201, json=body))
    settings = ProviderSettings(params={"quality": "high", "output_format": "png"})
    async with api.provider(settings) as provider:
        answer = await provider.generate("a lighthouse")
    # "abc" is base64 without its padding (the intake then refuses the bytes by signature);
    # "%%%" is no base64 at all: kept as sent, to be spooled, never dropped.
    assert [(image.data, image.undecodable) for image in answer.images] == [
        (PNG, False),
        (b"i\xb7", False),
        (b"%%%", True),
    ]
    assert answer.usage == {"input_tokens": 10, "output_tokens": 4160, "total_tokens": 4170}
    sent = json.loads(api.requests[0].content)
    assert sent["quality"] == "high" and sent["output_format"] == "png"
    assert sent["model"] == "gpt-image-1" and sent["n"] == 1


async def test_a_200_with_one_good_image_among_refused_urls_keeps_the_good_one():
    body = {"data": [{"url": "javascript:alert(1)"}, {"url": "https://img.example/ok.png"}]}
    api = Api(httpx.Response(200, json=body))
    async with api.provider() as provider:
        answer = await provider.generate("a lighthouse")
    assert [i.url for i in answer.images] == ["https://img.example/ok.png"]
    assert "will not save" in answer.problems[0] and len(api.requests) == 1


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_refusal_stops_at_once_and_the_echoed_key_is_masked(status: int):
    body = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    api = Api(httpx.Response(status, json=body))
    with pytest.raises(ProviderRefused) as raised:
        await generate(api)
    assert len(api.requests) == 1 and api.sleeps == []
    assert KEY not in str(raised.value) and str(status) in str(raised.value)
    assert api.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_a_rejected_prompt_fails_only_that_image_without_retrying():
    api = Api(httpx.Response(400, json={"error": {"message": "content policy"}}))
    with pytest.raises(ImageFailed, match="rejected the prompt: 400: content policy"):
        await generate(api)
    assert len(api.requests) == 1


async def test_no_connection_at_all_is_unreachable_after_every_attempt():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api = Api(OK)
    api.handle = refuse  # type: ignore[method-assign]
    with pytest.raises(ProviderUnreachable, match="cannot reach the image API at https://api"):
        await generate(api)
    assert len(api.sleeps) == SETTINGS.max_attempts - 1


def test_retry_after_parsing_in_both_forms():
    now = 1_700_000_000.0
    in_90s = email.utils.formatdate(now + 90, usegmt=True)
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(in_90s, now=now) == pytest.approx(90.0)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0  # past
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds(None) is None


@given(
    attempt=st.integers(min_value=1, max_value=64),
    initial=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=0.01, max_value=120),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_never_zero_and_never_beyond_its_cap(
    attempt: int, initial: float, cap: float, seed: int
):
    settings = ProviderSettings(backoff_initial=initial, backoff_max=cap)
    pause = backoff(attempt, settings, rng=random.Random(seed))
    ceiling = min(cap, initial * 2 ** (attempt - 1))
    assert ceiling / 2 <= pause <= ceiling


async def test_a_refusal_after_a_possibly_billed_retry_still_counts_it():
    calls = {"n": 0}

    def cut_then_refuse(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadError("connection reset while reading the answer", request=request)
        return httpx.Response(401, json={"error": {"message": "key revoked"}})

    api = Api(OK)
    api.handle = cut_then_refuse  # type: ignore[method-assign]
    with pytest.raises(ProviderRefused) as raised:
        await generate(api)
    assert raised.value.possibly_billed_retries == 1 and calls["n"] == 2


def test_every_base64_form_a_provider_sends_decodes_to_the_same_bytes():
    import base64

    from hypothesis import given
    from hypothesis import strategies as st

    from imgsave.core.image_bytes import decode_base64

    @given(st.binary(max_size=300), st.sampled_from(["plain", "mime", "lf", "nopad", "urlsafe"]))
    def same(data: bytes, form: str) -> None:
        text = base64.b64encode(data).decode()
        if form == "mime":
            text = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\r\n"
        elif form == "lf":
            text = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
        elif form == "nopad":
            text = text.rstrip("=")
        elif form == "urlsafe":
            text = base64.urlsafe_b64encode(data).decode()
        assert decode_base64(text) == data
        assert decode_base64("data:image/png;base64," + text) == data

    same()
    assert decode_base64("not*base64") is None and decode_base64("abcde") is None


async def test_an_answer_is_read_no_further_than_its_images_could_be():
    sent: list[int] = []

    async def endless_base64():
        yield b'{"data":[{"b64_json":"'
        while True:  # a 210 MB answer, and more: it must not be read to the end
            sent.append(1)
            yield b"A" * 65536

    api = Api(lambda: httpx.Response(200, content=endless_base64()))
    async with Provider(
        "https://api.example/v1",
        KEY,
        None,
        SETTINGS,
        max_image_bytes=1_000_000,
        seams=Seams(httpx.MockTransport(api.handle), api.sleep),
    ) as provider:
        with pytest.raises(ImageFailed, match="not read further, not retried"):
            await provider.generate("a lighthouse")
    assert len(api.requests) == 1, "never asked again: it was answered, and billed"
    # 2 images' worth of base64 (the one asked for, one more) and 1 MB of JSON around them.
    assert len(sent) * 65536 <= 2 * 1_000_000 * 4 // 3 + (1 << 20) + 65536


# -- where the key goes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url", "admitted"),
    [
        ("https://api.example.com/v1", "https://api.example.com/v1/predictions/x", True),
        ("https://api.example.com/v1", "https://API.example.com:443/other", True),
        ("https://api.example.com/v1", "https://api.example.com:8443/v1/x", False),
        ("https://api.example.com/v1", "http://api.example.com/v1/x", False),
        ("https://api.example.com/v1", "https://files.example.com/x", False),
        ("https://api.example.com/v1", "https://example.com/x", False),
        ("https://app.herokuapp.com/v1", "https://evil.herokuapp.com/x", False),
        ("https://api.example.co.uk/v1", "https://evil.co.uk/x", False),
        ("https://me.workers.dev/v1", "https://you.workers.dev/x", False),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1/x", False),
        ("http://127.0.0.1:8000/v1", "http://10.0.0.1:8000/v1/x", False),
        ("http://127.0.0.1:8000/v1", "http://1.0.0.1:8000/v1/x", False),
        ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1/x", False),
        ("https://api.example.com/v1", "https://api.example.com.evil.com/x", False),
        ("https://api.example.com/v1", "https://user@api.example.com:99999/x", False),
        ("https://api.example.com/v1", "not a url", False),
    ],
)
def test_the_key_goes_to_the_base_urls_exact_origin_only(base: str, url: str, admitted: bool):
    from imgsave.adapters.imageapi.key_scope import KeyScope

    assert KeyScope(base).admits(url) is admitted


@pytest.mark.parametrize(
    ("base", "url", "admitted"),
    [
        ("https://api.bfl.ai/v1", "https://api.us1.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai/v1", "https://api.eu.bfl.ai/v1/get_result?id=1", True),
        ("https://api.eu.bfl.ai/v1", "https://api.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai/v1", "http://api.us1.bfl.ai/v1/get_result?id=1", False),
        ("https://api.bfl.ai/v1", "https://api.us1.bfl.ai:8443/v1/get_result", False),
        ("https://api.bfl.ai/v1", "https://delivery-us1.bfl.ai/x.png", False),
        ("https://api.bfl.ai/v1", "https://api.us1.bfl.ai.evil.com/v1/get_result", False),
        ("https://api.bfl.ai/v1", "https://evilbfl.ai/v1/get_result", False),
        # Behind a gateway, BFL's own hosts get nothing: the gateway holds the key's use.
        ("https://gw.example.com/bfl/v1", "https://api.us1.bfl.ai/v1/get_result?id=1", False),
    ],
)
def test_bfls_own_regional_hosts_get_the_key_only_while_the_base_is_one_of_them(
    base: str, url: str, admitted: bool
):
    from imgsave.adapters.imageapi.key_scope import KeyScope
    from imgsave.adapters.imageapi.kinds import kind_named

    assert KeyScope(base, kind_named("bfl").api_hosts).admits(url) is admitted


class JobApi(Api):
    """A scripted job API: the submission's answer, then the answers to the polls."""

    def provider_for(self, kind: str, base: str, **settings: object) -> Provider:
        conf = ProviderSettings(kind=kind, poll_interval=1.0, **settings)  # type: ignore[arg-type]
        return Provider(
            base,
            KEY,
            {"replicate": "o/m", "fal": "fal-ai/flux/dev", "bfl": "flux-pro-1.1"}[kind],
            conf,
            seams=Seams(httpx.MockTransport(self.handle), self.sleep, random.Random(7)),
        )


PREDICTION = {
    "id": "p1",
    "status": "starting",
    "urls": {
        "get": "https://api.replicate.com/v1/predictions/p1",
        "cancel": "https://api.replicate.com/v1/predictions/p1/cancel",
    },
}
DONE = {"id": "p1", "status": "succeeded", "output": ["https://replicate.delivery/p1/out.png"]}


async def test_a_job_behind_a_gateway_is_polled_under_the_gateway_with_the_key():
    api = JobApi(httpx.Response(201, json=PREDICTION), httpx.Response(200, json=DONE))
    async with api.provider_for("replicate", "https://gw.example.com/replicate/v1") as provider:
        logged = []

        async def on_job(job) -> None:
            logged.append(job)

        answer = await provider.generate("a lighthouse", on_job=on_job)
    assert [i.url for i in answer.images] == ["https://replicate.delivery/p1/out.png"]
    assert [str(r.url) for r in api.requests] == [
        "https://gw.example.com/replicate/v1/models/o/m/predictions",
        "https://gw.example.com/replicate/v1/predictions/p1",
    ]
    assert logged[0].poll == "https://gw.example.com/replicate/v1/predictions/p1"
    assert logged[0].cancel == "https://gw.example.com/replicate/v1/predictions/p1/cancel"
    assert "prefer" not in api.requests[0].headers, "the id comes back at once, not after 60 s"


async def test_a_job_on_bfls_own_api_is_polled_at_the_polling_url_it_names():
    polling = "https://api.us1.bfl.ai/v1/get_result?id=t1"
    ready = {
        "id": "t1",
        "status": "Ready",
        "result": {"sample": "https://delivery-us1.bfl.ai/t1.png"},
    }
    api = JobApi(httpx.Response(200, json={"id": "t1", "polling_url": polling}),
                 httpx.Response(200, json=ready))  # fmt: skip
    async with api.provider_for("bfl", "https://api.bfl.ai/v1") as provider:
        await provider.generate("a lighthouse")
    assert str(api.requests[1].url) == polling and api.requests[1].headers["x-key"] == KEY
    api = JobApi(httpx.Response(200, json={"id": "t1", "polling_url": polling}),
                 httpx.Response(200, json=ready))  # fmt: skip
    async with api.provider_for("bfl", "https://gw.example.com/bfl/v1") as provider:
        await provider.generate("a lighthouse")
    assert str(api.requests[1].url) == "https://gw.example.com/bfl/v1/get_result?id=t1"


async def test_a_resumed_job_logged_at_another_origin_is_polled_under_todays_base_url():
    from imgsave.adapters.imageapi.jobs import RemoteJob

    logged = RemoteJob(
        "fal",
        "r1",
        "https://queue.fal.run/fal-ai/flux/requests/r1/status",
        "https://queue.fal.run/fal-ai/flux/requests/r1",
    )
    images = {"images": [{"url": "https://v3.fal.media/r1.png"}]}
    api = JobApi(
        httpx.Response(200, json={"status": "COMPLETED"}), httpx.Response(200, json=images)
    )
    async with api.provider_for("fal", "https://gw.example.com/fal") as provider:
        answer = await provider.resume(logged)
    assert answer.job == "r1"
    assert [str(r.url) for r in api.requests] == [
        "https://gw.example.com/fal/fal-ai/flux/requests/r1/status",
        "https://gw.example.com/fal/fal-ai/flux/requests/r1",
    ]


# -- one retry policy ---------------------------------------------------------------------------


async def test_polls_are_retried_by_the_same_policy_and_are_never_billed():
    api = JobApi(
        httpx.Response(201, json=PREDICTION),
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(200, text="<html>proxy error</html>"),
        httpx.Response(200, json=DONE),
    )
    async with api.provider_for("replicate", "https://api.replicate.com/v1") as provider:
        answer = await provider.generate("a lighthouse")
    assert answer.possibly_billed_retries == 0 and len(api.requests) == 5
    assert len(api.sleeps) == 3
    assert SETTINGS.backoff_initial / 2 <= api.sleeps[0] <= SETTINGS.backoff_initial
    assert 7.0 <= api.sleeps[1] <= 7.05, "Retry-After honoured on a poll as on a submission"


async def test_a_poll_that_keeps_failing_leaves_the_job_for_the_next_run():
    api = JobApi(httpx.Response(201, json=PREDICTION), httpx.Response(502))
    async with api.provider_for("replicate", "https://api.replicate.com/v1") as provider:
        with pytest.raises(ImageFailed, match=r"cannot poll job p1 .*next run polls it") as failed:
            await provider.generate("a lighthouse")
    assert failed.value.job is None, "not over: a later run polls it again"
    assert len(api.requests) == 1 + SETTINGS.max_attempts


# -- refusals that stop the run, and settings no request could succeed with ---------------------


GEMINI_WRONG_KEY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}


async def test_geminis_400_api_key_invalid_stops_the_run_and_its_other_400s_fail_one_image():
    def gemini(api: Api) -> Provider:
        return Provider(
            "https://generativelanguage.googleapis.com/v1beta",
            KEY,
            "gemini-nano-banana-2.1",
            ProviderSettings(kind="gemini"),
            seams=Seams(httpx.MockTransport(api.handle), api.sleep, random.Random(7)),
        )

    api = Api(httpx.Response(400, json=GEMINI_WRONG_KEY))
    async with gemini(api) as provider:
        with pytest.raises(ProviderRefused, match="400"):
            await provider.generate("a lighthouse")
    bad_prompt = {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}
    api = Api(httpx.Response(400, json=bad_prompt))
    async with gemini(api) as provider:
        with pytest.raises(ImageFailed) as failed:
            await provider.generate("a lighthouse")
    assert failed.value.refusal == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("base", "key", "allow_http", "refused"),
    [
        ("http://api.example.com/v1", KEY, False, True),
        ("http://10.0.0.7:8080/v1", KEY, False, True),
        ("http://api.example.com/v1", KEY, True, False),
        ("http://api.example.com/v1", None, False, False),
        ("http://127.0.0.1:8080/v1", KEY, False, False),
        ("http://[::1]:8080/v1", KEY, False, False),
        ("http://localhost:8080/v1", KEY, False, False),
        ("https://api.example.com/v1", KEY, False, False),
    ],
)
def test_a_key_that_would_travel_in_clear_to_another_machine_is_refused(
    base: str, key: str | None, allow_http: bool, refused: bool
):
    from imgsave.errors import UsageError

    if refused:
        with pytest.raises(UsageError, match="travel in clear"):
            Provider(base, key, None, SETTINGS, allow_http=allow_http)
    else:
        Provider(base, key, None, SETTINGS, allow_http=allow_http)


async def test_a_name_that_does_not_resolve_stops_at_once_without_retries():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with Provider(
        "https://no-such-host.invalid/v1", KEY, None, SETTINGS, seams=Seams(sleep=sleep)
    ) as provider:
        with pytest.raises(ProviderUnreachable, match=r"no-such-host\.invalid does not resolve"):
            await provider.generate("a lighthouse")
    assert slept == [], "one attempt: no retry makes a name exist"
