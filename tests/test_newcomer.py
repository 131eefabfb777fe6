"""What a newcomer hit on a fresh clone (issue 27), each held by a test that failed before its
fix: the progress bar at 80 columns, a database URL that is not PostgreSQL's, usage errors
with --json, rehosted links shown as stale, the store's probe folder, help text, completion,
settings found outside the working directory, the licence."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from imgsave._demo.loopback import LoopbackProvider
from imgsave.terminal.progress import ProgressReporter

from .test_generate_cli import provider_env

ROOT = Path(__file__).parents[1]
PROJECTS = [
    "6f1c0f1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f",
    "9a2b0f1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f",
    "77c40f1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f",
    "5d3e0f1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f",
]


@pytest.mark.parametrize("width", [80, 120])
def test_the_progress_bar_shows_beside_the_projects_in_flight(width):
    """Item 4: three project keys in flight used to squeeze the bar out of the line."""
    reporter = ProgressReporter()
    reporter._console = Console(
        file=io.StringIO(), force_terminal=True, width=width, color_system="standard"
    )
    for name in PROJECTS:
        reporter.project(name).start(20, "generate")
    reporter.advance(ok=True)
    progress = reporter._progress
    assert progress is not None
    progress.stop()
    sink = io.StringIO()
    Console(file=sink, width=width, force_terminal=True, color_system="standard").print(
        progress.make_tasks_table(progress.tasks)
    )
    line = re.sub(r"\x1b\[[0-9;]*m", "", sink.getvalue()).rstrip("\n")
    assert "\n" not in line and len(line) <= width
    assert line.count("━") >= 20, line
    assert "1/80" in line and "0 failed" in line and "projects in flight: 6f1" in line
    if width >= 120:
        assert PROJECTS[0] in line


@pytest.mark.parametrize("url", ["mysql://app:SECRETPASS1@db.example/app", "not a url"])
def test_a_database_url_that_is_not_postgresql_is_a_usage_error(cli, url):
    """Item 10: it was exit 3 with libpq's `missing "="`."""
    ran = cli("audit", "--json", "--database-url", url)
    assert ran.code == 2
    assert "not a PostgreSQL URL" in ran.json()["error"]
    assert "SECRETPASS1" not in ran.stdout + ran.stderr
    from_env = cli("audit", "--json", env={"IMGSAVE_DATABASE_URL": url})
    assert from_env.code == 2 and "not a PostgreSQL URL" in from_env.json()["error"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["generate", "p1", "--json", "--bogus"], "No such option: --bogus"),
        (["generate", "p1", "-k", "0", "--json"], "Invalid value for '--images-per-scene'"),
        (["audit", "--json", "--run-gap"], "requires an argument"),
        (["nosuch", "--json"], "No such command"),
        (["batches", "cancel", "--json"], "Missing argument"),
    ],
)
def test_json_asked_for_is_one_json_object_even_for_a_refused_command_line(cli, args, says):
    """Item 11: click's usage text alone used to be the answer."""
    ran = cli(*args)
    assert ran.code == 2
    out = ran.json()
    assert set(out) == {"error", "exit_code"} and out["exit_code"] == 2
    assert says in out["error"] and ran.stdout.count("\n") == 1
    assert says in ran.stderr


def test_without_json_a_refused_command_line_still_shows_usage(cli):
    ran = cli("generate", "--bogus")
    assert ran.code == 2 and ran.stdout == "" and "Usage: imgsave generate" in ran.stderr


@pytest.fixture
def serving():
    """The loopback API, answering with links to images it serves itself (as Replicate or fal
    do), so a store and rehost can download them."""
    from imgsave._demo.loopback import LoopbackProvider

    with LoopbackProvider() as provider:
        provider.image_base = provider.origin + "/"
        yield provider


def test_audit_after_a_rehost_counts_the_replaced_links_as_present(cli, serving, rows, tmp_path):
    """Item 14: the links rehost replaced showed as `stale` under "Lost and unrecoverable
    images"; a copy and the link it replaced are one image, present while the copy is there
    (a dead link that --regenerate replaced stays stale: tests/test_audit_repair.py)."""
    rows.put("p1", {"scenes": [{"index": i, "prompt": f"scene {i}"} for i in (1, 2)]})
    env = provider_env(serving)
    assert cli("generate", "p1", "--allow-http", env=env).code == 0
    store = {
        **env,
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://img.example",
    }
    rehosted = cli("rehost", "p1", "--execute", "--json", "--allow-http", env=store)
    assert rehosted.code == 0 and rehosted.json()["rehosted"] == 2, rehosted.stderr
    audit = cli("audit", "--json", "--allow-http", env=store)
    summary = audit.json()["summary"]
    assert audit.code == 0
    assert (summary["stale"], summary["lost"], summary["present"]) == (0, 0, 4)
    human = cli("audit", "--allow-http", env=store)
    assert "Lost and unrecoverable" not in human.stdout and "0 stale" in human.stdout


def test_a_file_store_leaves_no_probe_folder(cli, serving, rows, tmp_path):
    """Item 15: the probe's empty `.imgsave-probe/` was left in the user's directory."""
    rows.put("p1", {"scenes": [{"index": 1, "prompt": "a lighthouse"}]})
    store = tmp_path / "store"
    env = provider_env(
        serving, IMGSAVE_STORE=f"file://{store}", IMGSAVE_PUBLIC_URL="https://img.example"
    )
    assert cli("generate", "p1", "--allow-http", env=env).code == 0
    assert [p.name for p in store.iterdir()] == ["p1"]


def help_of(cli, *command: str, columns: int = 120) -> str:
    ran = cli(*command, "--help", env={"COLUMNS": str(columns)})
    assert ran.code == 0, ran.stderr
    return ran.stdout


COMMANDS = [
    ("generate",),
    ("audit",),
    ("repair",),
    ("rehost",),
    ("prune",),
    ("sql",),
    ("demo",),
    ("config",),
    ("journal", "prune"),
    ("batches",),
    ("batches", "cancel"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_plain_arguments_each_variable_and_the_terminals_width(cli, command):
    """Item 18: `PROJECT <list[str]>`, `{ID}`, help cut at 80 columns with COLUMNS=120; and
    every command takes --ping and --metrics-file, naming their variables."""
    text = help_of(cli, *command)
    assert not re.search(r"<(?:list\[)?(?:str|int|float|bool|path)\]?>", text), text
    assert "{" not in text.split("\n")[0], text
    assert "docs/" not in text  # item 20: an installed package has no docs folder
    for flag, variable in (
        ("--ping", "IMGSAVE_PING_URL"),
        ("--metrics-file", "IMGSAVE_METRICS_FILE"),
    ):
        assert flag in text and variable in text, (command, flag)
    if "--database-url" in text:
        assert "IMGSAVE_DATABASE_URL" in text
    if "--config" in text:
        assert "IMGSAVE_CONFIG" in text
    if "--store" in text:
        assert "IMGSAVE_STORE" in text
    narrow = help_of(cli, *command, columns=80).splitlines()
    # Example command lines are shown whole (click's \b blocks); the rest is wrapped.
    assert max(len(line) for line in narrow if "imgsave " not in line) <= 80


def test_help_fills_a_wide_terminal(tmp_path):
    """The installed script, as a terminal of 120 columns runs it (click's test runner fixes
    the width at 80)."""
    import os
    import subprocess

    from .conftest import imgsave_command

    wide = subprocess.run(
        [*imgsave_command(), "generate", "--help"],
        env={**os.environ, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert 80 < max(len(line) for line in wide if "imgsave " not in line) <= 120


def test_arguments_read_as_click_writes_them(cli):
    assert "Usage: imgsave generate [OPTIONS] [PROJECT]..." in help_of(cli, "generate")
    cancel = help_of(cli, "batches", "cancel")
    assert "Usage: imgsave batches cancel [OPTIONS] ID\n" in cancel
    # sql's --allow-http is not about downloads: it says what it does there.
    assert "installed function also accepts plain http://" in " ".join(help_of(cli, "sql").split())


def test_version_and_shell_completion(cli):
    from imgsave import __version__

    assert cli("--version").stdout == f"imgsave {__version__}\n"
    top = cli("--help").stdout
    assert "--install-completion" in top and "--show-completion" in top
    script = cli("--show-completion", "bash")
    assert script.code == 0 and "_IMGSAVE_COMPLETE" in script.stdout


def test_settings_are_found_in_the_user_config_directory(cli, tmp_path):
    """Item 20: only ./imgsave.toml was read, and cron's working directory is rarely the
    project's. The order: flags, environment, --config/IMGSAVE_CONFIG, ./imgsave.toml, the
    user config directory."""
    (tmp_path / "imgsave.toml").unlink()
    user = tmp_path / "xdg-config" / "imgsave" / "imgsave.toml"
    user.parent.mkdir(parents=True)
    user.write_text('model = "from-user-dir"\n[names]\ntable = "stories"\n')
    shown = cli("config", "--json").json()
    assert shown["config_file"] == str(user)
    assert shown["settings"]["model"] == {"value": "from-user-dir", "source": f"file {user}"}
    assert shown["settings"]["names.table"]["source"] == f"file {user}"
    assert shown["settings"]["names.key_column"] == {"value": "id", "source": "default"}

    (tmp_path / "imgsave.toml").write_text('model = "from-cwd"\n')
    assert cli("config", "--json").json()["settings"]["model"]["value"] == "from-cwd"

    named = tmp_path / "etc.toml"
    named.write_text('model = "from-named"\n')
    by_env = cli("config", "--json", env={"IMGSAVE_CONFIG": str(named)}).json()
    assert by_env["settings"]["model"] == {"value": "from-named", "source": f"file {named}"}
    by_env = cli("config", "--json", env={"IMGSAVE_CONFIG": str(named), "IMGSAVE_MODEL": "m"})
    assert by_env.json()["settings"]["model"] == {"value": "m", "source": "env IMGSAVE_MODEL"}
    missing = cli("config", "--json", env={"IMGSAVE_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.code == 2 and "does not exist" in missing.json()["error"]


def test_config_names_each_source_and_masks_every_secret(cli, tmp_path, db_url):
    (tmp_path / "imgsave.toml").write_text(
        '[store]\nsecret_access_key = "SECRET-S3-KEY-1"\naccess_key_id = "AKIAEXAMPLE"\n'
        '[monitor]\nping_url = "https://hc-ping.com/SECRET-CHECK-UUID"\n'
    )
    ran = cli(
        "config",
        "--json",
        "--database-url",
        "postgresql://app:SECRET-DB-PASS@db.example:5432/app",
        env={"OPENAI_API_KEY": "sk-SECRET-API-KEY", "IMGSAVE_STORE": "s3://bucket/scenes"},
    )
    assert ran.code == 0
    for secret in ("SECRET-S3-KEY-1", "SECRET-CHECK-UUID", "SECRET-DB-PASS", "SECRET-API-KEY"):
        assert secret not in ran.stdout + ran.stderr
    settings = ran.json()["settings"]
    assert settings["database_url"] == {
        "value": "postgresql://app:***@db.example:5432/app",
        "source": "flag --database-url",
    }
    assert settings["api_key"] == {"value": "***", "source": "env OPENAI_API_KEY"}
    assert settings["store.url"] == {"value": "s3://bucket/scenes", "source": "env IMGSAVE_STORE"}
    assert settings["store.access_key_id"]["value"] == "AKIAEXAMPLE"
    assert settings["monitor.ping_url"]["value"] == "https://hc-ping.com/***"
    assert settings["provider.kind"] == {"value": "openai", "source": "default"}
    # The table for a person says the same.
    human = cli("config", env={"IMGSAVE_DATABASE_URL": db_url}).stdout
    assert re.search(r"database_url\s+.*\s+env IMGSAVE_DATABASE_URL", human), human


def test_the_licence_pyproject_declares_is_in_the_repository():
    """Item 20: Apache-2.0 was declared with no LICENSE file."""
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_the_kubernetes_examples_image_is_built_from_this_repository():
    """Item 20: the CronJob used an image nobody could build. deploy/Dockerfile installs the
    package (pyproject's readme and licence files included) and runs `imgsave`; the docs
    runner checks that the manifest's image is the one its `docker build` line tags."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md LICENSE ./" in dockerfile
    assert "COPY src ./src" in dockerfile and "RUN pip install ." in dockerfile
    assert 'ENTRYPOINT ["imgsave"]' in dockerfile and "USER imgsave" in dockerfile
    assert "docker build -f deploy/Dockerfile -t" in (ROOT / "docs" / "usage.md").read_text()


def test_make_test_needs_no_root(tmp_path):
    """Item 19: `make test` ran `apt-get install pgbouncer`, which needs root; now the pooler
    tests skip (saying how to run them) and CI installs PgBouncer itself."""
    import subprocess

    planned = subprocess.run(
        ["make", "-n", "test", "VENV=" + str(ROOT / ".venv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pytest" in planned and "apt-get" not in planned
    assert "make pgbouncer" in (ROOT / ".ci" / "run").read_text()
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert "pytest.skip(reason)" in conftest and "apt-get install pgbouncer" in conftest


def test_a_piped_table_keeps_each_url_whole(cli, rows, log_dir):
    """Item 18: audit's table, piped into a file or grep, folded long URLs mid-string."""
    from .test_audit_repair import own_line

    rows.put("p1", {"scenes": [{"id": "scene-1", "index": 1, "prompt": "a lighthouse"}]})
    url = "https://img.example/" + "long-path-segment/" * 15 + "image.png"
    log_dir.mkdir(parents=True)
    (log_dir / "r.jsonl").write_text(own_line("r", "2026-11-20T10:00:00.000Z", "p1", 1, url) + "\n")
    ran = cli("audit", "--log", str(log_dir), env={"COLUMNS": None})
    assert ran.code == 1
    assert any(url in line for line in ran.stdout.splitlines()), ran.stdout


def test_a_dry_run_rehost_counts_the_projects_its_links_are_in(cli, serving, rows, tmp_path):
    """Item 9: two links in one project were "2 provider links in 2 projects"."""
    rows.put("p1", {"scenes": [{"index": i, "prompt": f"scene {i}"} for i in (1, 2)]})
    rows.put("p2", {"scenes": [{"index": 1, "prompt": "nothing to copy yet"}]})
    env = provider_env(serving)
    assert cli("generate", "p1", "--allow-http", env=env).code == 0
    store = {**env, "IMGSAVE_STORE": f"file://{tmp_path / 'store'}"}
    store["IMGSAVE_PUBLIC_URL"] = "https://img.example"
    plan = cli("rehost", "--all", "--allow-http", env=store)
    assert plan.code == 1, plan.stderr  # links left to copy: a finding
    assert plan.stdout == (
        "rehost plan: 2 provider links in 1 project would be copied into the store (run again "
        "with --execute)\n"
    )


def test_a_capped_quiet_run_from_cron_prints_one_line(cli, rows):
    """Item 12: `--max-images 50 -q` over many projects printed a line per project it did
    not start (28 of them); -q is one summary line, and the JSON still lists them."""
    from imgsave._demo.incident import incident_document

    for n in range(30):
        rows.put(f"p{n:02d}", incident_document(5))
    with LoopbackProvider() as api:
        quiet = cli("generate", "--all", "--max-images", "10", "-q", env=provider_env(api))
        assert quiet.code == 1, quiet.stderr
        assert len(quiet.stdout.splitlines()) == 1, quiet.stdout
        assert len(quiet.stderr.splitlines()) <= 1, quiet.stderr
        assert api.requests == 10


def test_a_run_that_resumes_jobs_names_the_log_it_wrote(cli, rows, tmp_path):
    """Item 7: `generate --json` whose only work was jobs an earlier run left said
    `"log": null`, though it had written what it resumed to a log."""
    import json

    from .test_provider_jobs import env_for

    rows.put("p1", {"scenes": [{"index": 1, "prompt": "a lighthouse"}]})
    config = tmp_path / "imgsave.toml"  # the cli fixture's, in the folder runs start in
    config.write_text(
        config.read_text().replace(
            "[provider]\n", "[provider]\npoll_interval = 0.01\npoll_timeout = 0.2\n"
        )
    )
    with LoopbackProvider(kind="replicate", job_polls=10**6) as api:
        assert api.jobs is not None
        env = env_for(api, tmp_path)
        first = cli("generate", "p1", "--json", "--allow-http", env=env)
        assert first.json()["jobs_pending"] == 1, first.stdout
        api.jobs.polls = 0  # the job is done now
        rerun = cli("generate", "p1", "--json", "--allow-http", env=env)
    out = rerun.json()
    assert (rerun.code, out["jobs_resumed"], out["requested"]) == (0, 1, 0), rerun.stdout
    assert out["log"] is not None
    events = [json.loads(line)["event"] for line in Path(out["log"]).read_text().splitlines()]
    assert "image.generated" in events and "image.saved" in events
