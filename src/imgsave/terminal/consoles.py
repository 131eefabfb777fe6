"""Where text goes: stdout for the result, stderr for diagnostics; one JSON object with --json.

Nothing from outside drives the terminal. Provider errors, log lines, URLs and object names
can hold control characters: an ESC sequence in a provider's error could clear the screen,
print a fake "all saved", move the cursor over a real line or set the window's title. Every
console made here writes the text it prints with its control characters escaped (`\x1b`, as
Python writes them), whatever printed it; only Rich's own control output (colours, the progress
bar's redraws) reaches the terminal as such. `shown` escapes line breaks too, for data embedded
in a line of imgsave's own, and the JSON on stdout escapes the few characters JSON leaves raw.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping

from rich.console import Console, ConsoleOptions, RenderableType
from rich.markup import escape
from rich.segment import Segment

from imgsave.core.control_chars import UNSAFE_IN_JSON, UNSAFE_IN_TEXT, escape_controls


class _Console(Console):
    """A Rich console that writes the text it renders with control characters escaped; its
    own control segments (styles are not in the text; cursor moves, clears) pass as they are."""

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control or not UNSAFE_IN_TEXT.search(segment.text):
                yield segment
            else:
                text = escape_controls(segment.text, keep_line_breaks=True)
                yield Segment(text, segment.style, segment.control)


# A line's width when stdout is not a terminal: the longest URL saved, with room beside it.
PIPED_WIDTH = 4096


def stderr_console() -> Console:
    return _Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    console = _Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into a file, grep or a pager: no line is folded, so a URL (up to 2,048
        # characters) stays whole in its table cell, and a table is as wide as its content.
        console.width = PIPED_WIDTH
    return console


def printable(text: str) -> str:
    """Text any terminal can take and no terminal obeys: a lone surrogate from a document or a
    log becomes `\\udcxx`, a control character `\\x1b`, a line break `\\n`."""
    return escape_controls(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def shown(text: str) -> str:
    """Data (a project key, a URL, a provider's message) made safe to embed in rich markup and
    in one line of imgsave's own."""
    return escape(printable(text))


def print_json(payload: Mapping[str, object]) -> None:
    write_stdout(json_text(payload) + "\n")


def json_text(value: object) -> str:
    """`value` as JSON fit for a terminal. No masking here: data is printed as it is; secrets
    were masked in the error texts of outside systems where imgsave took them in (the
    adapters)."""
    text = json.dumps(value, ensure_ascii=False)
    # JSON escapes C0 controls itself; C1 controls and bidi overrides it leaves raw.
    return UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def write_stdout(text: str) -> None:
    """Text on stdout as it is (JSON made by json_text, printed a piece at a time)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace"))
    sys.stdout.flush()


def warn(message: str, console: Console | None = None) -> None:
    (console or stderr_console()).print(f"[yellow]warning:[/] {shown(message)}")


def error(message: str) -> None:
    stderr_console().print(f"[bold red]imgsave: error:[/] {shown(message)}")
