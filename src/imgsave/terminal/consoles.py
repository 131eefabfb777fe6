"""Where text goes: stdout for the result, stderr for diagnostics; one JSON object with --json."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from rich.console import Console
from rich.markup import escape


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into a file or a pager: keep URLs whole rather than folded at 80 columns.
        console.width = 200
    return console


def printable(text: str) -> str:
    """Text any terminal can take: a lone surrogate from a document or a log becomes `\\udcxx`."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(text: str) -> str:
    """Data (a project key, a URL) made safe to embed in rich markup."""
    return escape(printable(text))


def print_json(payload: Mapping[str, object]) -> None:
    # No masking here: data is printed as it is; secrets were masked in the error texts of
    # outside systems where imgsave took them in (the adapters).
    text = json.dumps(payload, ensure_ascii=False) + "\n"
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace"))
    sys.stdout.flush()


def warn(message: str, console: Console | None = None) -> None:
    (console or stderr_console()).print(f"[yellow]warning:[/] {shown(message)}")


def error(message: str) -> None:
    stderr_console().print(f"[bold red]imgsave: error:[/] {shown(message)}")
