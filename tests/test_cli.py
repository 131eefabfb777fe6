"""The command line's own behaviour: -v and internal errors."""

from __future__ import annotations

import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.operations.execution import EXPIRING

PASSWORD = "s3cret-Passw0rd-xyz"


def test_verbose_shows_retries_and_is_silent_without_it(cli, rows):
    def run(project: str, *flags: str, env: dict[str, str] | None = None):
        rows.put(project, incident_document(1))
        with LoopbackProvider(faults=lambda n: "500" if n == 1 else "ok") as api:
            environ = {"IMGSAVE_BASE_URL": api.base_url, **(env or {})}
            return cli("generate", project, "--allow-http", "--json", *flags, env=environ)

    quiet, loud = run("p1"), run("p2", "-v")
    alias = run("p3", env={"IMGSAVE_DEBUG": "1"})
    assert quiet.code == loud.code == alias.code == 0
    retry = "imgsave: DEBUG: image API: attempt 1 failed (server error 500); retrying in"
    assert quiet.stderr == f"warning: {EXPIRING}\n", "no debug lines without -v"
    assert retry in loud.stderr and retry in alias.stderr
    assert loud.json()["saved"] == 1, "stdout stays one JSON object with -v"


def test_an_internal_error_is_one_masked_line_and_its_traceback_only_with_verbose(
    cli, db_url, monkeypatch: pytest.MonkeyPatch
):
    from psycopg.conninfo import make_conninfo

    import imgsave.commands.prune

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"a bug that saw {PASSWORD}")

    monkeypatch.setattr(imgsave.commands.prune, "run_prune", broken)
    env = {"IMGSAVE_DATABASE_URL": make_conninfo(db_url, password=PASSWORD)}
    plain = cli("prune", env=env)
    verbose = cli("prune", "-v", env=env)
    assert plain.code == verbose.code == 3
    assert plain.stderr == (
        "imgsave: error: internal error: RuntimeError: a bug that saw *** (-v shows the "
        "traceback)\n"
    )
    assert "Traceback (most recent call last)" in verbose.stderr
    assert 'raise RuntimeError(f"a bug that saw {PASSWORD}")' in verbose.stderr
    assert PASSWORD not in plain.stderr + verbose.stderr + plain.stdout + verbose.stdout


@pytest.mark.parametrize(
    ("toml", "env"),
    [
        ('[store]\nendpoint = "http://u:SECRET-STORE-KEY@minio.internal:9000"\n', {}),
        ("", {"AWS_ENDPOINT_URL": "http://u:SECRET-STORE-KEY@minio.internal:9000"}),
        ("", {"AWS_ENDPOINT_URL": "https://u:SECRET-STORE-KEY@minio.internal:9000"}),
    ],
)
def test_a_store_endpoint_with_credentials_is_refused_without_repeating_them(
    cli, rows, tmp_path, toml, env
):
    """Issue 28 item 6: the error names where credentials go, never the URL that holds them."""
    config = tmp_path / "imgsave.toml"
    config.write_text(config.read_text() + toml)
    ran = cli(
        "generate",
        "p1",
        "--json",
        "--store",
        "s3://bucket/prefix",
        env={
            "IMGSAVE_PUBLIC_URL": "https://img.example",
            "IMGSAVE_API_KEY": "sk-x-12345678",
            **env,
        },
    )
    assert ran.code == 2, ran.stderr
    assert "SECRET-STORE-KEY" not in ran.stdout + ran.stderr
    assert "must not carry credentials" in ran.json()["error"]
