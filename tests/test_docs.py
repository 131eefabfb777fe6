"""Every `imgsave ...` command line the README and docs/ show is one the CLI accepts: parsed
by the real command (not run), so a documented cron line cannot be wrong (a `-q` a command
lacks, a flag renamed)."""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import pytest
import typer

from imgsave.cli import app

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Where a shell command line ends: redirections, pipes, lists, a comment.
_END = re.compile(r"^(\d?>>?|\||\|\||&&|;|&|#.*)$")


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, imgsave's arguments) for every imgsave call in a sh/bash/cron block."""
    found = []
    for page in PAGES:
        fenced = None
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.startswith("```"):
                fenced = None if fenced is not None else line[3:].strip()
                continue
            if fenced not in ("sh", "bash", "cron", "console"):
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            at = next((i for i, w in enumerate(words) if Path(w).name == "imgsave"), None)
            if at is None:
                continue
            args = []
            for word in words[at + 1 :]:
                if _END.match(word):
                    break
                args.append(word)
            found.append((f"{page.relative_to(ROOT)}:{number}", args))
    return found


COMMAND_LINES = command_lines()


def test_the_docs_show_every_command():
    shown = {args[0] for _, args in COMMAND_LINES if args}
    assert {"generate", "audit", "repair", "rehost", "prune", "sql", "journal", "demo"} <= shown


def parse(args: list[str]) -> None:
    """Parse `imgsave ARGS` the way the installed script would, without running it; raises
    what the command line would refuse. (Typer ships its own click: its classes are reached
    through the command objects, not imported.)"""
    command = typer.main.get_command(app)
    info = "imgsave"
    rest = list(args)
    # Walk down the groups (imgsave, journal) to the command, then parse its arguments.
    while hasattr(command, "get_command") and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(command.make_context(info, [], resilient_parsing=True), name)
        if sub is None:
            raise LookupError(f"no command {name!r}")
        command, info = sub, f"{info} {name}"
    with contextlib.suppress(typer.Exit):  # --help, --version
        command.make_context(info, rest)


def test_the_parser_refuses_what_the_cli_refuses():
    parse(["prune", "--older-than", "30d", "--execute", "-q"])
    for wrong in (
        ["prune", "--bogus"],
        ["nosuch"],
        ["journal", "prune", "-k", "2"],
        ["audit", "-k"],
    ):
        with pytest.raises(Exception):  # noqa: B017 (whichever error the CLI raises)
            parse(wrong)


@pytest.mark.parametrize(("where", "args"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_each_documented_command_line_parses(where: str, args: list[str]):
    try:
        parse(args)
    except Exception as exc:
        pytest.fail(f"{where}: `imgsave {shlex.join(args)}` is refused: {exc}")
