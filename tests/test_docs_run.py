"""The docs run as written: every SQL and shell block a reader is told to paste (README.md,
docs/usage.md) is executed, in order, against a fresh database and the loopback image API, as
a reader's shell would run it. Cron blocks, TOML settings and the Kubernetes example are
checked as what they are (a crontab, an imgsave.toml, a manifest).

Sybil (a well-kept tool for exactly this) finds the blocks and the skip markers; this module
only says how each language is run. A block that cannot run here (a real Supabase database, an
S3 bucket) says so in the page itself, with its reason, as a comment Sybil reads:
`<!-- skip: next "why" -->`; its imgsave lines are still parsed by tests/test_docs.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import SkipTest

import psycopg
import pytest
import yaml
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from imgsave.adapters.imageapi.kinds import FACTS
from imgsave.core.settings import load_settings

from .test_docs import parse

ROOT = Path(__file__).parents[1]
# Each page and the database it starts from: the README creates its own table.
PAGES = {"README.md": "empty", "docs/usage.md": "projects"}
# Skipped blocks a page may have: each one is something a reader cannot paste here.
MOST_SKIPPED = {"README.md": 2, "docs/usage.md": 4}
BLOCK_TIMEOUT = 180


@dataclass
class Reader:
    """A reader's shell session: a working directory of its own, the environment the page
    assumes (IMGSAVE_DATABASE_URL names the database), and what earlier blocks exported."""

    cwd: Path
    env: dict[str, str]
    database_url: str
    groups: list[int] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def sh(self, example: Example) -> str | None:
        exported = self.cwd / ".exported.sh"
        script = (
            "set -eo pipefail\n"
            f"if [ -f {shlex.quote(str(exported))} ]; then . {shlex.quote(str(exported))}; fi\n"
            f"{example.parsed}\n"
            f"export -p > {shlex.quote(str(exported))}\n"
        )
        out = self.cwd / ".block-output"
        with out.open("wb") as sink:
            # A session of its own: what the block leaves in the background (the loopback
            # API) is stopped with its group when the page is done.
            proc = subprocess.Popen(
                ["bash", "-c", script],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(proc.pid)
            try:
                code = proc.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = -1
        self.ran.append(example.line)
        if code != 0:
            return f"line {example.line}: the block exited {code}:\n{out.read_text()[-4000:]}"
        return None

    def sql(self, example: Example) -> str | None:
        try:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                conn.execute(str(example.parsed).encode())
        except psycopg.Error as exc:
            return f"line {example.line}: the SQL fails: {exc}"
        self.ran.append(example.line)
        return None

    def stop(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)


def check_toml(example: Example) -> str | None:
    """A settings block is one imgsave.toml (or the part of it a section shows) that
    imgsave reads without complaint."""
    with tempfile.TemporaryDirectory() as home:
        path = Path(home) / "imgsave.toml"
        path.write_text(str(example.parsed))
        try:
            load_settings(config_path=path, environ={}, kinds=FACTS)
        except Exception as exc:
            return f"line {example.line}: imgsave does not take this imgsave.toml: {exc}"
    return None


# A crontab line: five time fields, then the command.
_CRON_LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.+)$")


def _cron_field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step = part.partition("/")
        if body == "*":
            first, last = low, high
        elif "-" in body:
            first, last = (int(x) for x in body.split("-"))
        else:
            first = last = int(body)
        values.update(range(first, last + 1, int(step or 1)))
    return values


def _takes_the_repair_lock(words: list[str]) -> bool:
    at = next((i for i, w in enumerate(words) if Path(w).name == "imgsave"), None)
    return at is not None and words[at + 1 : at + 2] == ["repair"] and "--execute" in words


def check_cron(example: Example) -> str | None:
    """Every imgsave line of a crontab parses, and no two lines that take the host's repair
    lock can start in the same minute (the second would exit 4 and page someone)."""
    locking: list[tuple[int, set[int], set[int]]] = []
    for offset, line in enumerate(str(example.parsed).splitlines()):
        match = _CRON_LINE.match(line.strip())
        if line.lstrip().startswith("#") or "=" in line.split(" ")[0] or match is None:
            continue
        words = shlex.split(match[6], comments=True)
        at = next((i for i, w in enumerate(words) if Path(w).name == "imgsave"), None)
        if at is not None:
            args = []
            for word in words[at + 1 :]:
                if re.match(r"^(\d?>>?|\||\|\||&&|;|&)$", word):
                    break
                args.append(word)
            try:
                parse(args)
            except Exception as exc:
                return f"line {example.line + offset + 1}: `{line}` is refused: {exc}"
        if _takes_the_repair_lock(words):
            minutes, hours = _cron_field(match[1], 0, 59), _cron_field(match[2], 0, 23)
            for other, other_minutes, other_hours in locking:
                if minutes & other_minutes and hours & other_hours:
                    return (
                        f"line {example.line + offset + 1}: two repair --execute lines start "
                        f"in the same minute (with line {other}): the second exits 4"
                    )
            locking.append((example.line + offset + 1, minutes, hours))
    return None


def check_yaml(example: Example) -> str | None:
    """A Kubernetes manifest: its imgsave container's arguments parse, and its image is the
    one the page's own `docker build` line builds (from a Dockerfile in this repository).
    Prometheus rules: every imgsave metric they name is one imgsave writes."""
    document = yaml.safe_load(str(example.parsed))
    if "groups" in document:
        from imgsave.adapters.monitor.metrics import WRITTEN

        for group in document["groups"]:
            for rule in group["rules"]:
                unknown = set(re.findall(r"imgsave_\w+", rule["expr"])) - WRITTEN
                if unknown:
                    return f"line {example.line}: no metric {sorted(unknown)} is written"
        return None
    spec = document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    page = example.document.text
    builds = re.findall(r"docker build -f (\S+) -t (\S+) \.", page)
    if not builds:
        return f"line {example.line}: the page says nowhere how to build the image"
    for dockerfile, _ in builds:
        if not (ROOT / dockerfile).is_file():
            return f"line {example.line}: {dockerfile} does not exist"
    for container in spec["containers"]:
        if container["image"] not in {tag for _, tag in builds}:
            return f"line {example.line}: {container['image']} is built by no documented line"
        try:
            parse(list(container["args"]))
        except Exception as exc:
            return f"line {example.line}: the container's args are refused: {exc}"
    return None


@pytest.fixture
def reader(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Reader]:
    page = request.node.callspec.params["page"]
    if PAGES[page] == "empty":
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP TABLE projects")
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("IMGSAVE_", "AWS_", "XDG_"))
        and key not in ("DATABASE_URL", "OPENAI_API_KEY", "PYTHONPATH")
    }
    env.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(home),
            "IMGSAVE_DATABASE_URL": db_url,
            # The reader's log, state and config directories are the test's.
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "COLUMNS": "120",
        }
    )
    session = Reader(cwd=tmp_path, env=env, database_url=db_url)
    yield session
    session.stop()


@pytest.mark.parametrize("page", list(PAGES))
def test_the_page_runs_as_written(page: str, reader: Reader):
    sybil = Sybil(
        parsers=[
            SkipParser(),
            CodeBlockParser("sh", reader.sh),
            CodeBlockParser("sql", reader.sql),
            CodeBlockParser("cron", check_cron),
            CodeBlockParser("toml", check_toml),
            CodeBlockParser("yaml", check_yaml),
        ]
    )
    document = sybil.parse(ROOT / page)
    for example in document:
        try:
            example.evaluate()
        except SkipTest as skipped:
            reason = str(skipped)
            assert len(reason) > 15, f"{page}:{example.line}: a skip needs its reason"
            reader.skipped.append((example.line, reason))
    assert reader.ran, f"{page}: no block ran"
    assert len(reader.skipped) <= MOST_SKIPPED[page], reader.skipped
