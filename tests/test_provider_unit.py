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
