"""Control characters written out, so that text from outside (a provider's error, a log line,
a URL, an object name) can be shown on a terminal without the terminal obeying it: an ESC
sequence can clear the screen, move the cursor over a line already printed or set the window's
title; a bidirectional override shows text in another order than it is."""

from __future__ import annotations

import re

# C0 controls (ESC, BEL, CR, backspace, ...), DEL, the C1 controls (0x9b is an 8-bit CSI), and
# the bidirectional overrides that make a terminal show text in another order than it is.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
UNSAFE_IN_TEXT = re.compile(f"[{_CONTROLS}]")
UNSAFE_IN_DATA = re.compile(f"[{_CONTROLS}\t\n]")
UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def escape_controls(text: str, *, keep_line_breaks: bool = False) -> str:
    r"""`text` with every control character written out as an escape (`\x1b`, `\u202e`)."""
    unsafe = UNSAFE_IN_TEXT if keep_line_breaks else UNSAFE_IN_DATA
    if not unsafe.search(text):
        return text
    return unsafe.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
