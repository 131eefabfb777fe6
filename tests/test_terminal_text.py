"""Nothing from outside drives the terminal: a provider's error carrying ESC sequences, a URL
or a log line with control characters reach the terminal written out (`\\x1b`), checked on the
bytes a terminal receives (a real pty)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import time

from hypothesis import given
from hypothesis import strategies as st

from imgsave._demo.loopback import HOSTILE_TEXT, LoopbackProvider
from imgsave.core.control_chars import UNSAFE_IN_DATA, escape_controls
from imgsave.terminal import consoles

from .conftest import imgsave_command, process_env

# What the hostile text must never do once printed.
OBEYED = (b"\x1b[2J", b"\x1b]0;PWNED", b"\x07", b"\r\xc2\x9b", b"\xc2\x9b31m")


def run_in_a_terminal(args: list[str], env: dict[str, str], cwd) -> bytes:
    """`imgsave ARGS` with stdout and stderr on a pseudo-terminal: what a person's terminal
    would receive, colours and progress bar included."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*imgsave_command(), *args],
        env={**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    received = bytearray()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            received += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    return bytes(received)


def test_a_providers_error_with_escape_sequences_reaches_the_terminal_written_out(
    db_url, rows, incident_project, log_dir, tmp_path
):
    with LoopbackProvider(faults=lambda n: "hostile" if n % 2 else "ok") as api:
        env = process_env(db_url, api, log_dir)
        out = run_in_a_terminal(["generate", incident_project, "--allow-http"], env, tmp_path)
    text = out.decode("utf-8", "replace")
    assert "failed" in text, text
    for sequence in OBEYED:
        assert sequence not in out, (sequence, text)
    assert "\\x1b[2J\\x1b[Hall 40 images saved\\x1b]0;PWNED\\x07" in text, text
    # The terminal still gets Rich's own colours: escaping is of the text, not of the display.
    assert b"\x1b[" in out


def test_everything_a_console_prints_is_written_out_whoever_printed_it():
    sink = io.StringIO()
    console = consoles._Console(file=sink, force_terminal=True, width=100, highlight=False)
    console.print(f"[bold]job failed:[/] {HOSTILE_TEXT}", "second\nline")
    printed = sink.getvalue()
    assert "\x1b[2J" not in printed and "\x07" not in printed and "\x9b" not in printed
    assert "\\x1b[2J" in printed and "\\x9b31m" in printed
    assert "second\nline" in printed and "\x1b[1m" in printed  # line breaks and styles stay


def test_json_on_stdout_escapes_what_json_leaves_raw(capsysbinary):
    consoles.print_json({"error": "c1 \x9b31m bidi \u202e end \x1b[2J"})
    raw = capsysbinary.readouterr().out
    assert b"\xc2\x9b" not in raw and "\u202e".encode() not in raw and b"\x1b" not in raw
    assert raw == b'{"error": "c1 \\u009b31m bidi \\u202e end \\u001b[2J"}\n'


def test_shown_data_stays_on_its_line():
    assert consoles.shown("a\nb\tc\x1b[1A[red]") == "a\\x0ab\\x09c\\x1b[1A\\[red]"


@given(st.text())
def test_escaped_text_holds_no_control_character_and_plain_text_is_unchanged(text):
    escaped = escape_controls(text)
    assert not UNSAFE_IN_DATA.search(escaped)
    if not UNSAFE_IN_DATA.search(text):
        assert escaped == text
    # Nothing is lost: every control character became its escape, in order.
    assert len(escaped) >= len(text)


def test_a_log_line_shown_by_audit_is_written_out(cli, rows, tmp_path):
    rows.put("p1", {"scenes": [{"index": 1, "imageUrls": []}]})
    log = tmp_path / "app.log"
    log.write_text("[Scene 1] Saved image to database: https://img.test/a.png\x1b]0;PWNED\x07\n")
    ran = cli("audit", "--log", str(log), "--project", "p1", "--pattern",
              r"\[Scene (?P<scene>\d+)\] Saved image to database: (?P<url>\S+)")  # fmt: skip
    assert "\x1b]0;PWNED" not in ran.stdout + ran.stderr
