"""The provider's pace: --rate spaces request starts evenly, 429s slow it down and it recovers,
published limits cap it. Pure rules on a virtual clock; then real runs against a loopback
provider that enforces a rate the way providers do (a token bucket answering 429)."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave._demo.loopback import LoopbackProvider
from imgsave.adapters.imageapi.pace import (
    CUT_QUIET,
    RECOVERY,
    Pace,
    PaceClosed,
    parse_rate,
    parse_reset,
)
from imgsave.errors import UsageError

from .conftest import process_env, spawn, wait_for
from .test_generate_cli import provider_env
from .test_many_projects import put_projects


class VirtualClock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def paced(rate: float | None) -> tuple[Pace, VirtualClock]:
    clock = VirtualClock()
    return Pace(rate, clock=clock, sleep=clock.sleep), clock


def starts(pace: Pace, clock: VirtualClock, n: int) -> list[float]:
    async def go() -> list[float]:
        times = []
        for _ in range(n):
            await pace.wait()
            times.append(clock.now)
        return times

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("text", "per_minute"),
    [("600/min", 600), ("10/s", 600), ("3000/h", 50), ("90", 90), (" 2.5 / minute ", 2.5)],
)
def test_rates_are_read_per_minute(text, per_minute):
    assert parse_rate(text) == per_minute


@pytest.mark.parametrize("text", ["", "fast", "10/fortnight", "-5/min", "0/min", "0.5/min"])
def test_a_rate_that_is_not_one_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0.5", 0.5)],
)
def test_reset_durations_in_the_providers_spellings(text, seconds):
    assert parse_reset(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "5 s", "1s2"])
def test_a_reset_that_is_not_a_duration_is_ignored(text):
    assert parse_reset(text) is None


def test_starts_are_evenly_spaced_not_bursty():
    pace, clock = paced(600)
    times = starts(pace, clock, 100)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {0.1}
    assert pace.report().achieved == 600


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(min_value=1, max_value=50_000), n=st.integers(min_value=2, max_value=400))
def test_no_minute_ever_holds_more_than_the_rate_allows(rate, n):
    pace, clock = paced(rate)
    times = starts(pace, clock, n)
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u < t + 60 - 1e-9)
        assert in_window <= int(rate) + 1


def test_a_429_pauses_every_start_halves_the_rate_and_it_recovers():
    pace, clock = paced(600)
    starts(pace, clock, 10)
    refused_at = clock.now
    pace.throttle(2.0)
    pace.throttle(2.0)  # the other requests in flight at the old rate: one event, one cut
    assert pace.rate(refused_at) == pytest.approx(300)
    (first,) = starts(pace, clock, 1)
    assert first >= refused_at + 2.0
    assert pace.rate(refused_at + RECOVERY / 2) == pytest.approx(300 + (540 - 300) / 2)
    assert pace.rate(refused_at + RECOVERY) == pytest.approx(540)
    # Above the rate that was refused it only creeps: 5 % a minute.
    assert pace.rate(refused_at + RECOVERY + 60) == pytest.approx(567)
    assert pace.rate(refused_at + RECOVERY + 600) == 600, "never above what was asked"
    clock.now = refused_at + CUT_QUIET + 1
    pace.throttle(None)
    assert pace.report().throttled == 3


def test_without_a_rate_a_429_pauses_everyone_but_no_rate_is_guessed():
    pace, clock = paced(None)
    assert starts(pace, clock, 50)[-1] == 0.0
    clock.now = 1.0
    pace.throttle(0.5)
    assert pace.rate(clock.now) is None
    assert starts(pace, clock, 3) == [1.5, 1.5, 1.5], "all wait out the Retry-After, then go"
    assert pace.report().throttled == 1


def test_the_rate_never_falls_below_a_twentieth_of_what_was_asked():
    pace, clock = paced(600)
    for _ in range(20):
        clock.now += CUT_QUIET + 0.1
        pace.throttle(0.0)
    assert pace.rate(clock.now) == pytest.approx(30)


def test_published_limits_cap_the_rate_and_an_exhausted_one_pauses():
    pace, clock = paced(600)
    pace.observe({"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "7"})
    times = starts(pace, clock, 3)
    assert times[1] - times[0] == pytest.approx(0.5)
    pace.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s"})
    before = clock.now
    (after,) = starts(pace, clock, 1)
    assert after >= before + 3


def test_against_a_stricter_provider_the_429s_fall_after_the_first_minute():
    """240/min asked of a provider that allows 120/min (a bucket of 2, refilled evenly)."""
    pace, clock = paced(240)
    tokens, last = 2.0, 0.0
    refused: list[float] = []

    async def go() -> None:
        nonlocal tokens, last
        done = 0
        while done < 400:
            await pace.wait()
            tokens = min(2.0, tokens + (clock.now - last) * 2)
            last = clock.now
            if tokens >= 1:
                tokens -= 1
                done += 1
            else:
                refused.append(clock.now)
                pace.throttle((1 - tokens) / 2)

    asyncio.run(go())
    first = sum(1 for t in refused if t < 60)
    later = [t for t in refused if t >= 60]
    assert first > 0
    assert len(later) < first
    assert clock.now < 400 / 120 * 60 * 1.25, "and the pace stays close to what is allowed"


def test_a_closed_pace_lets_no_waiting_request_start():
    clock = VirtualClock()

    async def sleep(seconds: float) -> None:
        target = clock.now + seconds
        await asyncio.sleep(0)
        clock.now = max(clock.now, target)

    async def go() -> list[object]:
        pace = Pace(60, clock=clock, sleep=sleep)
        await pace.wait()  # the first starts at once; the next two wait 1 s and 2 s
        waiting = [asyncio.create_task(pace.wait()) for _ in range(2)]
        await asyncio.sleep(0)
        pace.close()
        return await asyncio.gather(*waiting, return_exceptions=True)

    assert [type(r) for r in asyncio.run(go())] == [PaceClosed, PaceClosed]


# Real runs: the loopback provider enforces its rate as a token bucket.


def test_rate_3000_per_minute_over_60_images_takes_a_second_and_never_meets_a_429(cli, db_url):
    """Real time is the point here (the spacing of real requests against a provider that
    counts them), so the rate is high and the run short; the minute-scale dynamics are proved
    on the virtual clock above."""
    put_projects(db_url, 3, 20)
    with LoopbackProvider(rate_limit=3000) as api:
        # The same harness catches a run without --rate: its first burst is refused.
        put_projects(db_url, 1, 80, prefix="burst")
        burst = cli("generate", "burst00000", "-c", "64", "--json", env=provider_env(api))
        assert 429 in api.statuses
        assert burst.json()["pace"]["throttled"] == api.statuses.count(429)
        with psycopg.connect(db_url, autocommit=True) as conn:  # some of it may have failed
            conn.execute("DELETE FROM projects WHERE id = 'burst00000'")
        api.statuses.clear()
        api.timeline.clear()
        time.sleep(1.1)  # the bucket fills up again

        started = time.monotonic()
        ran = cli(
            "generate", "--all", "--rate", "3000/min", "-c", "32", "--json", env=provider_env(api)
        )
        elapsed = time.monotonic() - started
    assert ran.code == 0, ran.stderr
    out = ran.json()
    assert (out["requested"], out["saved"]) == (60, 60)
    assert api.statuses == [200] * 60, "no request was refused"
    assert elapsed >= 59 / 50
    assert out["pace"]["throttled"] == 0 and out["pace"]["asked_per_minute"] == 3000
    # Never faster than asked, to a few percent; slower only as far as a loaded machine falls
    # behind (the lower bound catches a pace that waits twice as long as it should).
    assert 1500 <= out["pace"]["achieved_per_minute"] <= 3150


def test_a_provider_that_allows_fewer_than_asked_slows_the_run_down_and_it_saves_everything(
    cli, db_url, tmp_path
):
    """2,400/min asked, 1,200/min allowed: the real 429s reach the pace, which slows the run
    (what happens after the first minute is the virtual-clock test's; it takes no real minute)."""
    put_projects(db_url, 4, 20)
    config = tmp_path / "imgsave.toml"
    config.write_text(config.read_text().replace("[provider]\n", "[provider]\nmax_attempts = 12\n"))
    with LoopbackProvider(rate_limit=1200) as api:
        ran = cli(
            "generate", "--all", "--rate", "2400/min", "-c", "16", "--json", env=provider_env(api)
        )
        statuses = list(api.statuses)
    assert ran.code == 0, ran.stderr
    out = ran.json()
    assert out["saved"] == 80
    refused = statuses.count(429)
    assert refused > 0, "the run did ask faster than allowed"
    assert out["pace"]["throttled"] == refused
    assert out["pace"]["achieved_per_minute"] < 2400, "and slowed itself down"


def test_a_limit_the_provider_publishes_caps_the_rate_asked(cli, db_url):
    """2,400/min asked; the provider says (x-ratelimit-*) it allows 1,200/min, and means it."""
    put_projects(db_url, 2, 20)
    with LoopbackProvider(rate_limit=1200, rate_headers=True) as api:
        ran = cli(
            "generate", "--all", "--rate", "2400/min", "-c", "8", "--json", env=provider_env(api)
        )
    assert ran.code == 0, ran.stderr
    assert api.statuses == [200] * 40, "the published limit was kept from the first answer on"
    # Measured over 40 starts two seconds apart in all: a few percent either way is timing.
    assert 1080 <= ran.json()["pace"]["achieved_per_minute"] <= 1260


def test_a_second_429_asking_more_reaches_the_requests_already_waiting():
    clock = VirtualClock()

    async def sleep(seconds: float) -> None:  # a sleep that lets others run meanwhile
        target = clock.now + seconds
        await asyncio.sleep(0)
        clock.now = max(clock.now, target)

    async def go() -> float:
        pace = Pace(None, clock=clock, sleep=sleep)
        pace.throttle(1.0)
        waiting = asyncio.create_task(pace.wait())
        await asyncio.sleep(0)  # it sleeps until t = 1 ...
        pace.throttle(5.0)  # ... when another 429 asks for 5 s
        await waiting
        return clock.now

    assert asyncio.run(go()) == 5.0


def test_ctrl_c_sends_none_of_the_requests_still_waiting_for_their_start(db_url, log_dir, tmp_path):
    """Under --rate, requests queue for their start; Ctrl-C must not let them go out after it."""
    put_projects(db_url, 2, 20)
    with LoopbackProvider(latency=0.05) as api:
        env = process_env(db_url, api, log_dir)
        proc = spawn(["generate", "--all", "-c", "8", "--rate", "600/min", "--json"], env, tmp_path)
        wait_for(lambda: api.requests >= 3, timeout=30)
        proc.send_signal(signal.SIGINT)
        at_signal = api.requests
        out, err = proc.communicate(timeout=60)
        after = api.requests
    assert proc.returncode == 130, err
    result = json.loads(out)
    # At most the one that was being sent as the signal came; without the stop, the seven
    # requests already waiting in line would have gone out over the next 0.7 s.
    assert after <= at_signal + 1, (at_signal, after)
    assert result["saved"] == after
    assert result["not_requested"] == 40 - after
