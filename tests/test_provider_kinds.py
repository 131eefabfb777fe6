"""Each kind of image API that answers with its images (OpenAI, Azure OpenAI, Gemini), through
the CLI against the loopback provider serving that kind's wire format: the same engine, store,
log and claims behind each, only the wire differs (adapters/imageapi/wires.py)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider

KINDS = ["openai", "azure", "gemini"]
KEY_VARIABLE = {"openai": "OPENAI_API_KEY", "azure": "AZURE_OPENAI_API_KEY",
                "gemini": "GEMINI_API_KEY", "replicate": "REPLICATE_API_TOKEN", "fal": "FAL_KEY",
                "bfl": "BFL_API_KEY"}  # fmt: skip
MODEL = {"openai": "gpt-image-2", "azure": "my-gpt-image-2", "gemini": "gemini-3.1-flash-image",
         "replicate": "black-forest-labs/flux-schnell", "fal": "fal-ai/flux/dev",
         "bfl": "flux-pro-1.1"}  # fmt: skip
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
        "gemini": "/v1beta/models/gemini-3.1-flash-image:generateContent",
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


@pytest.mark.parametrize("kind", [*KINDS, "replicate", "fal", "bfl"])
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


@pytest.mark.parametrize("kind", ["gemini", "replicate", "fal", "bfl"])
def test_batch_with_an_api_that_has_no_batch_api_is_a_usage_error(cli, rows, kind: str):
    rows.put("p1", incident_document(1))
    ran = cli("generate", "p1", "--batch", env={"IMGSAVE_PROVIDER": kind, "IMGSAVE_API_KEY": "k"})
    assert ran.code == 2
    assert f"the {kind} API has no Batch API imgsave can use" in ran.stderr


def test_provider_params_go_where_each_api_takes_options():
    from imgsave.adapters.imageapi.jobs import job_wire_for
    from imgsave.adapters.imageapi.wires import wire_for
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
