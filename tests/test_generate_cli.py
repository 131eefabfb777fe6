"""`imgsave generate` through the installed entry point: exit codes, stdout JSON, stderr."""

from __future__ import annotations

import json

import psycopg
import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.operations.execution import EXPIRING


def provider_env(api: LoopbackProvider, **extra: str) -> dict[str, str]:
    return {"IMGSAVE_BASE_URL": api.base_url, "IMGSAVE_API_KEY": "sk-test-SECRET-123", **extra}


def events(log_dir, name: str) -> list[dict]:
    return [
        record
        for path in sorted(log_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if (record := json.loads(line))["event"] == name
    ]


def test_generate_fills_every_scene_and_prints_one_json_object(
    cli, api, rows, incident_project, log_dir
):
    ran = cli("generate", incident_project, "-k", "2", "--json", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    out = ran.json()
    assert out["project"] == "p1"
    assert (out["requested"], out["saved"], out["failed"], out["skipped_scenes"]) == (40, 40, 0, [])
    assert out["run"] and ran.stdout.count("\n") == 1
    assert all(len(urls) == 2 for urls in rows.urls("p1").values())
    generated = events(log_dir, "image.generated")
    assert len(generated) == 40
    assert {"v", "ts", "run", "event", "project", "scene", "scene_id", "url"} <= set(generated[0])
    assert generated[0]["scene_id"] == f"scene-{generated[0]['scene']}"
    # Everything the app owns is untouched.
    doc = rows.doc("p1")
    expected = incident_document(20)
    for scene in doc["scenes"]:
        scene.pop("imageUrls")
    assert doc == expected


def test_rerun_skips_complete_scenes_and_only_fills_what_is_missing(
    cli, api, rows, incident_project
):
    first = cli("generate", "p1", "--scenes", "1-5,7", "--json", env=provider_env(api))
    assert first.json()["saved"] == 6
    second = cli("generate", "p1", "--json", env=provider_env(api))
    assert second.code == 0
    assert second.json()["skipped_scenes"] == [1, 2, 3, 4, 5, 7]
    assert second.json()["requested"] == 14
    third = cli("generate", "p1", "--json", env=provider_env(api))
    assert (third.json()["requested"], third.code) == (0, 0)
    assert api.requests == 20
    forced = cli("generate", "p1", "--scenes", "3", "--force", "--json", env=provider_env(api))
    assert forced.json()["saved"] == 1
    assert len(rows.urls("p1")[3]) == 2


def test_transient_provider_faults_are_retried_to_success(cli, rows, incident_project):
    script = {1: "429", 2: "500", 3: "garbage", 4: "429:0", 5: "500", 6: "garbage"}
    with LoopbackProvider(faults=lambda n: script.get(n, "ok")) as api:
        ran = cli("generate", "p1", "--concurrency", "2", "--json", env=provider_env(api))
        statuses = list(api.statuses)
    assert ran.code == 0, ran.stderr
    assert ran.json()["saved"] == 20
    assert statuses.count(429) == 2 and statuses.count(500) == 2
    assert sum(len(u) for u in rows.urls("p1").values()) == 20


def test_401_stops_with_exit_3_and_writes_nothing(cli, rows, incident_project):
    before = rows.text("p1")
    with LoopbackProvider(faults=lambda n: "401") as api:
        ran = cli("generate", "p1", "--json", env=provider_env(api))
    assert ran.code == 3
    assert "refused the request with 401" in ran.stderr
    assert "sk-test-SECRET-123" not in ran.stderr + ran.stdout
    assert ran.json()["saved"] == 0
    assert rows.text("p1") == before


def test_a_provider_url_that_breaks_the_rule_is_never_saved(cli, rows, incident_project):
    with LoopbackProvider(faults=lambda n: "badurl" if n == 1 else "ok") as api:
        ran = cli("generate", "p1", "--concurrency", "1", "--json", env=provider_env(api))
    assert ran.code == 1
    assert ran.json()["failed"] == 1 and ran.json()["saved"] == 19
    assert "URL imgsave will not save" in ran.stderr
    assert "javascript" not in json.dumps(rows.doc("p1"))


def test_a_rejected_prompt_fails_that_image_and_others_proceed(cli, rows, incident_project):
    with LoopbackProvider(faults=lambda n: "400" if n == 3 else "ok") as api:
        ran = cli("generate", "p1", "--concurrency", "1", env=provider_env(api))
    assert ran.code == 1
    assert "rejected the prompt: 400" in ran.stderr
    assert "19 of 20 images saved" in ran.stdout


def test_scene_without_prompt_is_skipped_and_reported_and_fails_only_with_strict(cli, api, rows):
    doc = incident_document(3)
    del doc["scenes"][1]["imagePrompt"]
    rows.put("p2", doc)
    ran = cli("generate", "p2", "--json", env=provider_env(api))
    # Nothing imgsave can do gives it a prompt: a cron run must not alert on it forever.
    assert ran.code == 0, ran.stderr
    assert ran.json()["unprompted_scenes"] == [2]
    assert "project p2: scene 2 has no prompt" in ran.stderr
    assert [len(u) for u in rows.urls("p2").values()] == [1, 0, 1]
    strict = cli("generate", "p2", "--strict", "--json", env=provider_env(api))
    assert strict.code == 1 and strict.json()["unprompted_scenes"] == [2]


def test_double_encoded_document_stays_double_encoded_and_updated_at_moves(cli, api, rows):
    rows.put("p3", json.dumps(json.dumps(incident_document(2))), raw=True)
    before = rows.updated_at("p3")
    ran = cli("generate", "p3", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    stored = rows.doc("p3")
    assert isinstance(stored, str)
    assert [len(s["imageUrls"]) for s in json.loads(stored)["scenes"]] == [1, 1]
    assert rows.updated_at("p3") > before


@pytest.mark.parametrize("column_type", ["json", "text"])
def test_json_and_text_columns_and_uuid_keys_and_custom_names(
    cli, api, db_url, tmp_path, column_type
):
    key = "9b2f6c7e-3f1a-4d2b-8c9e-0a1b2c3d4e5f"
    doc = {"shots": [{"id": "a", "desc": "x", "pics": None}, {"id": "b", "desc": "y"}]}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE stories (uid uuid PRIMARY KEY, body {column_type})")
        conn.execute("INSERT INTO stories VALUES (%s, %s)", (key, json.dumps(doc)))
    (tmp_path / "custom.toml").write_text(
        '[names]\ntable = "stories"\nkey_column = "uid"\ndocument_column = "body"\n'
        'scenes_key = "shots"\nprompt_keys = ["desc"]\nurls_key = "pics"\n'
        "[provider]\nbackoff_initial = 0.01\n"
    )
    ran = cli("generate", key.upper(), "--config", "custom.toml", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    with psycopg.connect(db_url) as conn:
        body = conn.execute("SELECT body::text FROM stories").fetchone()[0]
    stored = json.loads(body)
    assert [len(s["pics"]) for s in stored["shots"]] == [1, 1]
    assert stored["shots"][0]["desc"] == "x"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "project bad: document is null"),
        ("not json at all", "document is a string that is not JSON"),
        ([1, 2], "document is list, not an object"),
        ({"title": "x"}, "document has no 'scenes' key"),
        ({"scenes": "many"}, "'scenes' is str, not an array"),
        ({"scenes": [{"prompt": "a"}, 7]}, "scene at position 2 is int, not an object"),
        ({"scenes": [{"id": "s", "prompt": "a"}, {"id": "s", "prompt": "b"}]}, "share id 's'"),
        ({"scenes": [{"index": 1, "prompt": "a"}, {"index": 1, "prompt": "b"}]}, "share index 1"),
    ],
)
def test_malformed_documents_exit_3_with_one_line_and_no_write(cli, api, rows, document, message):
    rows.put("bad", document)
    before = rows.text("bad")
    ran = cli("generate", "bad", env=provider_env(api))
    assert ran.code == 3
    assert message in ran.stderr
    assert ran.stderr.strip().count("\n") == 0, ran.stderr
    assert ran.stdout == ""
    assert rows.text("bad") == before
    assert api.requests == 0


def test_unknown_project_exits_3(cli, api, rows, incident_project):
    ran = cli("generate", "nope", "--json", env=provider_env(api))
    assert ran.code == 3
    assert ran.json() == {"error": "project nope not found", "exit_code": 3}
    assert "project nope not found" in ran.stderr


def test_unreachable_database_exits_3_with_the_password_masked(cli, api):
    url = "postgresql://app:hunter2-secret@127.0.0.1:1/app"
    ran = cli("generate", "p1", env=provider_env(api, IMGSAVE_DATABASE_URL=url))
    assert ran.code == 3
    assert "cannot connect to the database at postgresql://app:***@127.0.0.1:1/app" in ran.stderr
    assert "hunter2" not in ran.stderr + ran.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "p1", "--scenes", "2-x"], "--scenes: '2-x' is not a number"),
        (["generate", "p1", "--scenes", "21"], "project p1 has no scene 21"),
        (["generate", "p1", "--scenes", "1-20000000"], "project p1 has no scene 21"),
        (["generate", "p1", "--concurrency", "0"], "Invalid value"),
        (["generate"], "name the projects to generate for, or give --all"),
        (["generate", "p1", "--all"], "name the projects to generate for, or give --all"),
        (["generate", "p1", "--rate", "fast"], "--rate: 'fast' is not a rate like 600/min"),
        (["generate", "p1", "--rate", "0.5/min"], "below the least rate, 1/min"),
        (["generate", "p1", "--max-images", "0"], "Invalid value"),
    ],
)
def test_usage_errors_exit_2(cli, api, incident_project, args, message):
    ran = cli(*args, env=provider_env(api))
    assert ran.code == 2
    assert message in ran.stderr
    assert api.requests == 0


def test_no_image_api_at_all_is_a_usage_error_naming_what_to_set(cli, incident_project):
    ran = cli("generate", "p1")
    assert ran.code == 2
    assert ran.stderr == (
        "imgsave: error: no image API: set IMGSAVE_API_KEY (or OPENAI_API_KEY), and "
        "IMGSAVE_BASE_URL "
        "for an API at another address\n"
    )
    azure = cli("generate", "p1", env={"IMGSAVE_PROVIDER": "azure", "AZURE_OPENAI_API_KEY": "k"})
    assert azure.code == 2 and "set IMGSAVE_BASE_URL to your azure endpoint" in azure.stderr
    unknown = cli("generate", "p1", env={"IMGSAVE_PROVIDER": "dall-e"})
    assert unknown.code == 2 and "unknown image API kind 'dall-e'" in unknown.stderr


def test_human_output_is_one_summary_line(cli, api, incident_project):
    ran = cli("generate", "p1", env=provider_env(api))
    assert ran.code == 0
    assert ran.stdout.startswith("project p1: 20 of 20 images saved in ")
    assert ran.stdout.count("\n") == 1
    # No store here: the one warning that the provider's URLs will expire, and nothing else.
    assert ran.stderr == f"warning: {EXPIRING}\n"


def test_the_apps_keys_and_numbers_are_preserved_exactly_in_jsonb(cli, api, db_url, rows):
    original = (
        '{"price": 6.50, "tiny": 0.00000010, "big": 123456789012345678901234567890, '
        '"nested": {"a": [1, 2.0, null, true, "\\u00e9\\n"]}, '
        '"scenes": [{"prompt": "a", "weight": 1.250, "imageUrls": []}]}'
    )
    rows.put("exact", original, raw=True)
    ran = cli("generate", "exact", env=provider_env(api))
    assert ran.code == 0, ran.stderr
    with psycopg.connect(db_url) as conn:
        same = conn.execute(
            "SELECT (generated_output #- '{scenes,0,imageUrls}')::text = "
            "(%s::jsonb #- '{scenes,0,imageUrls}')::text FROM projects WHERE id = 'exact'",
            (original,),
        ).fetchone()[0]
    assert same
    assert len(rows.urls("exact")[1]) == 1


def test_integer_keys(cli, api, db_url, tmp_path):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE films (id bigint PRIMARY KEY, generated_output jsonb)")
        conn.execute("INSERT INTO films VALUES (42, %s)", (json.dumps(incident_document(2)),))
    (tmp_path / "films.toml").write_text('[names]\ntable = "films"\n')
    ran = cli("generate", "42", "--config", "films.toml", "--json", env=provider_env(api))
    assert (ran.code, ran.json()["saved"]) == (0, 2), ran.stderr
    missing = cli("generate", "forty-two", "--config", "films.toml", env=provider_env(api))
    assert missing.code == 3 and "project forty-two not found" in missing.stderr
    audit = cli("audit", "--config", "films.toml", "--json")
    assert audit.code == 0 and audit.json()["summary"]["present"] == 2


def test_version_and_help(cli):
    from imgsave import __version__

    ran = cli("--version")
    assert (ran.code, ran.stdout, ran.stderr) == (0, f"imgsave {__version__}\n", "")
    helped = cli("--help")
    assert helped.code == 0
    assert all(command in helped.stdout for command in ("generate", "audit", "repair", "demo"))
