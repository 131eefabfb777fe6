"""Each kind of image API that answers with its images (OpenAI, Azure OpenAI, Gemini), through
the CLI against the loopback provider serving that kind's wire format: the same engine, store,
log and claims behind each, only the wire differs (adapters/imageapi/kinds/). And what holds for
every kind, jobs or not, as the registry lists them: its settings, a refused key, the loopback
emulation from the command line."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from pathlib import Path

import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.adapters.imageapi.kinds import KINDS as REGISTRY

# Every kind, and those that answer with their images, as the registry says.
ALL_KINDS = sorted(REGISTRY)
KINDS = sorted(name for name, kind in REGISTRY.items() if not kind.facts.has_jobs)
KEY_VARIABLE = {name: kind.facts.key_variable for name, kind in REGISTRY.items()}
MODEL = {name: kind.example_model for name, kind in REGISTRY.items()} | {"azure": "my-gpt-image-2"}
# What each API calls the refusal the loopback provider answers with ("refuse").
REFUSAL = {"openai": "moderation_blocked", "azure": "moderation_blocked",
           "gemini": "PROHIBITED_CONTENT"}  # fmt: skip


def env_for(api: LoopbackProvider, tmp_path: Path) -> dict[str, str]:
    """A user's set-up for the kind: its own key variable, its base URL, a store."""
    return {
        "IMGSAVE_PROVIDER": api.kind,
        "IMGSAVE_BASE_URL": api.base_url,
        KEY_VARIABLE[api.kind]: f"{api.kind}-key-SECRET-42",
        "IMGSAVE_MODEL": MODEL[api.kind],
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
        # The job APIs' images are served on 127.0.0.1.
        "IMGSAVE_ALLOW_PRIVATE_NETWORK": "1",
    }


def stored(tmp_path: Path) -> Counter[str]:
    return Counter(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "store").rglob("*.png")
    )


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_asked_in_its_own_wire_format_and_every_image_is_saved(
    cli, rows, tmp_path: Path, kind: str
):
    rows.put("p1", incident_document(3))
    with LoopbackProvider(kind=kind, answer="b64") as api:
        ran = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path))
        out = ran.json()
        assert ran.code == 0, ran.stderr
        assert (out["requested"], out["saved"], out["refusals"]) == (3, 3, {})
        assert stored(tmp_path) == Counter(api.sent), "each answered image in the store, once"
        paths = {path for path, _ in api.calls}
        keys = {key for _, key in api.calls}
    assert len(paths) == 1
    expected = {
        "openai": "/v1/images/generations",
        "azure": "/openai/deployments/my-gpt-image-2/images/generations"
        "?api-version=2025-04-01-preview",
        "gemini": "/v1beta/models/gemini-nano-banana-2.1:generateContent",
    }[kind]
    assert paths == {expected}
    sent_key = {"openai": "Bearer openai-key-SECRET-42"}.get(kind, f"{kind}-key-SECRET-42")
    assert keys == {sent_key}, "the kind's own key variable, in the kind's own header"
    assert out["usage"]["total_tokens"] > 0, "token counts read from the kind's own shape"
    assert "SECRET" not in ran.stdout + ran.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_with_several_images_keeps_them_all(cli, rows, tmp_path: Path, kind: str):
    rows.put("p1", incident_document(2))
    with LoopbackProvider(kind=kind, answer="b64", faults=lambda _: "two") as api:
        ran = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path))
        out = ran.json()
        assert (out["requested"], out["received"], out["saved"]) == (2, 4, 4), ran.stdout
        assert stored(tmp_path) == Counter(api.sent) and len(api.sent) == 4
    assert sorted(len(u) for u in rows.urls("p1").values()) == [2, 2]


@pytest.mark.parametrize("kind", KINDS)
def test_a_refusal_fails_that_image_with_the_providers_reason_and_is_not_retried(
    cli, rows, tmp_path: Path, kind: str
):
    rows.put("p1", incident_document(3))
    rows.put("p2", incident_document(1))
    with LoopbackProvider(
        kind=kind, answer="b64", faults=lambda n: "refuse" if n in (1, 4) else "ok"
    ) as api:
        ran = cli("generate", "p1", "--json", "-c", "1", "--allow-http",
                  env=env_for(api, tmp_path))  # fmt: skip
        out = ran.json()
        assert ran.code == 1, ran.stderr
        assert (out["saved"], out["failed"], out["refusals"]) == (2, 1, {REFUSAL[kind]: 1})
        assert api.requests == 3, "a refusal is the provider's answer: asking again pays again"
        human = cli("generate", "p2", "--allow-http", env=env_for(api, tmp_path))
        assert human.code == 1
        assert f"refused: 1 {REFUSAL[kind]}" in human.stdout, human.stdout


def test_a_gemini_image_blocked_after_generation_is_a_refusal_too(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(1))
    with LoopbackProvider(kind="gemini", faults=lambda _: "refuse-image") as api:
        out = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path)).json()
        assert (out["failed"], out["refusals"], api.requests) == (1, {"IMAGE_SAFETY": 1}, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["429:0", "500"])
def test_a_429_or_a_5xx_is_retried_and_then_saved(cli, rows, tmp_path: Path, kind: str, fault: str):
    rows.put("p1", incident_document(2))
    with LoopbackProvider(
        kind=kind, answer="b64", faults=lambda n: fault if n == 1 else "ok"
    ) as api:
        ran = cli("generate", "p1", "--json", "--allow-http", env=env_for(api, tmp_path))
        out = ran.json()
        assert ran.code == 0, ran.stderr
        assert (out["saved"], out["failed"], api.requests) == (2, 0, 3)
        assert api.statuses.count(int(fault[:3])) == 1


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_rate_headers_of_a_429_pace_the_run(cli, rows, tmp_path: Path, kind: str):
    rows.put("p1", incident_document(30))
    with LoopbackProvider(kind=kind, answer="b64", rate_limit=1200, rate_headers=True) as api:
        ran = cli("generate", "p1", "--json", "-c", "30", "--allow-http",
                  env=env_for(api, tmp_path))  # fmt: skip
        out = ran.json()
        assert ran.code == 0, ran.stderr
        assert out["saved"] == 30
        assert 429 in api.statuses, "the bucket of 20 a second ran dry at 30 at once"
        assert out["pace"]["throttled"] >= 1


@pytest.mark.parametrize("kind", ["azure", "gemini"])
def test_a_missing_key_is_refused_by_the_api_and_stops_the_run(
    cli, rows, tmp_path: Path, kind: str
):
    rows.put("p1", incident_document(2))
    with LoopbackProvider(kind=kind, answer="b64") as api:
        env = env_for(api, tmp_path) | {KEY_VARIABLE[kind]: ""}
        ran = cli("generate", "p1", "--allow-http", env=env)
        assert ran.code == 3 and "401" in ran.stdout + ran.stderr, ran.stdout
        assert api.requests_started == 0


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if not REGISTRY[k].facts.has_batch])
def test_batch_with_an_api_that_has_no_batch_api_is_a_usage_error(cli, rows, kind: str):
    rows.put("p1", incident_document(1))
    env = {"IMGSAVE_PROVIDER": kind, "IMGSAVE_API_KEY": "k", "IMGSAVE_MODEL": MODEL[kind]}
    ran = cli("generate", "p1", "--batch", env=env)
    assert ran.code == 2
    assert f"the {kind} API has no Batch API imgsave can use" in ran.stderr


def test_provider_params_go_where_each_api_takes_options():
    from imgsave.adapters.imageapi.kinds import job_wire_for, wire_for
    from imgsave.core.settings import ProviderSettings

    params = {"aspect_ratio": "16:9", "seed": 7}
    settings = ProviderSettings(params=params)
    base = "https://api.example.com/v1"
    assert wire_for("openai", base, "gpt-image-2", settings).body("p") == {
        "prompt": "p", "n": 1, "size": "1024x1024", "model": "gpt-image-2", **params,
    }  # fmt: skip
    assert "model" not in wire_for("azure", base, "dep", settings).body("p"), "in the path"
    assert wire_for("gemini", base, "g", settings).body("p") == {
        "contents": [{"parts": [{"text": "p"}]}], "generationConfig": params,
    }  # fmt: skip
    assert job_wire_for("replicate", base, "o/n", settings).body("p") == {
        "input": {"prompt": "p", **params}
    }
    version = "a" * 64
    assert job_wire_for("replicate", base, version, settings).body("p")["version"] == version
    for kind in ("fal", "bfl"):
        assert job_wire_for(kind, base, "m", settings).body("p") == {"prompt": "p", **params}


def test_the_settings_loader_knows_every_kind_from_the_registry_alone():
    """A kind is its module: the loader takes the registry's facts (its default base URL, its
    key's own variable), and the Batch API serves exactly the kinds that say they have one."""
    from imgsave.adapters.imageapi.batches import BATCH_KINDS
    from imgsave.adapters.imageapi.kinds import FACTS
    from imgsave.core.settings import load_settings

    for name, facts in FACTS.items():
        env = {"IMGSAVE_PROVIDER": name, facts.key_variable: f"{name}-key-0123456789"}
        loaded = load_settings(environ=env, kinds=FACTS, cwd=Path("/nonexistent"),
                               user_file=Path("/nonexistent"))  # fmt: skip
        assert loaded.api_key == f"{name}-key-0123456789"
        assert loaded.api_base == facts.default_base_url
    assert {name for name, facts in FACTS.items() if facts.has_batch} == BATCH_KINDS


def test_a_kind_is_one_module_that_describes_itself():
    from imgsave.adapters.imageapi.kinds import kind_named
    from imgsave.errors import UsageError

    for name, kind in REGISTRY.items():
        assert kind.name == name and kind_named(name) is kind
        assert (kind.job_wire is not None) == kind.facts.has_jobs
        assert (kind.wire is not None) != kind.facts.has_jobs
    with pytest.raises(UsageError, match="unknown image API kind 'dall-e'"):
        kind_named("dall-e")


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if REGISTRY[k].facts.needs_model])
def test_a_kind_that_needs_a_model_and_has_none_is_a_usage_error_before_any_request(
    cli, rows, tmp_path: Path, kind: str
):
    rows.put("p1", incident_document(1))
    with LoopbackProvider(kind=kind) as api:
        env = env_for(api, tmp_path)
        del env["IMGSAVE_MODEL"]
        ran = cli("generate", "p1", "--allow-http", env=env)
        assert ran.code == 2, ran.stdout + ran.stderr
        assert "set IMGSAVE_MODEL" in ran.stderr
        assert api.calls == [], "no /models/:generateContent, no /models//predictions"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_refused_key_stops_the_run_whatever_status_the_api_says_it_with(
    cli, rows, tmp_path: Path, kind: str
):
    """Gemini answers a wrong key with 400 INVALID_ARGUMENT (API_KEY_INVALID), BFL with 403,
    the others with 401: each stops the run (exit 3) at the first answer, not image by
    image."""
    rows.put("p1", incident_document(4))
    with LoopbackProvider(kind=kind, answer="b64", api_key="the-right-key") as api:
        ran = cli("generate", "p1", "--json", "-c", "1", "--allow-http",
                  env=env_for(api, tmp_path))  # fmt: skip
        assert ran.code == 3, ran.stdout + ran.stderr
        assert len(api.calls) == 1, "the first refusal stopped it"
        assert "SECRET" not in ran.stdout + ran.stderr


def settings_of(lines: list[str], tmp_path: Path) -> dict[str, str]:
    """The loopback's printed settings as an environment, with a store."""
    env = {}
    for line in lines:
        name, _, value = line.partition("=")
        env[name] = value.split("  #")[0].strip()
    return env | {"IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
                  "IMGSAVE_PUBLIC_URL": "https://images.example.com"}  # fmt: skip


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_settings_the_loopback_prints_for_each_kind_are_enough_to_generate(
    cli, rows, tmp_path: Path, kind: str
):
    from imgsave._demo.loopback import settings_lines

    rows.put("p1", incident_document(2))
    with LoopbackProvider(kind=kind, answer="b64") as api:
        api.image_base = api.origin + "/"
        env = settings_of(settings_lines(api, answer="b64"), tmp_path)
        assert env["IMGSAVE_PROVIDER"] == kind
        assert ("IMGSAVE_MODEL" in env) == REGISTRY[kind].facts.needs_model
        ran = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert (ran.code, ran.json()["saved"]) == (0, 2), ran.stdout + ran.stderr


def test_the_loopback_emulation_of_another_kind_runs_from_the_command_line(
    cli, rows, tmp_path: Path
):
    """`python -m imgsave._demo.loopback --kind gemini`, as a newcomer types it."""
    import subprocess
    import sys

    rows.put("p1", incident_document(1))
    with subprocess.Popen(
        [sys.executable, "-m", "imgsave._demo.loopback", "--kind", "gemini", "--latency", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            lines = list(itertools.takewhile(lambda x: not x.startswith("serving"), server.stdout))
            env = settings_of(lines, tmp_path)
            assert env["IMGSAVE_PROVIDER"] == "gemini" and "IMGSAVE_MODEL" in env, lines
            ran = cli("generate", "p1", "--json", "--allow-http", env=env)
            assert (ran.code, ran.json()["saved"]) == (0, 1), ran.stdout + ran.stderr
        finally:
            server.terminate()


def test_a_key_for_a_plain_http_api_on_another_machine_is_a_usage_error(cli, rows):
    rows.put("p1", incident_document(1))
    env = {"IMGSAVE_BASE_URL": "http://images.example.com/v1", "IMGSAVE_API_KEY": "sk-SECRET-1"}
    ran = cli("generate", "p1", env=env)
    assert ran.code == 2 and "the API key would travel in clear" in ran.stderr, ran.stderr
    assert "SECRET" not in ran.stdout + ran.stderr


def test_an_api_whose_name_does_not_resolve_stops_the_run_at_once(cli, rows):
    import time

    rows.put("p1", incident_document(3))
    env = {"IMGSAVE_BASE_URL": "https://images.no-such-host.invalid/v1", "IMGSAVE_API_KEY": "k"}
    started = time.monotonic()
    ran = cli("generate", "p1", "--json", env=env)
    assert ran.code == 3 and "does not resolve" in ran.stdout, ran.stdout
    assert time.monotonic() - started < 5, "not six attempts with backoff"
