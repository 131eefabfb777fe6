"""imgsave's own logger (`logging.getLogger("imgsave")`), for people debugging a run.

The library only logs; the command line decides what is shown. Without `-v` nothing below a
warning from imgsave is printed, and other libraries' records are not shown at all: psycopg's
pool, for one, logs each connection it discards as a multi-line warning, which imgsave's retries
already handle and report as one line. With `-v`, imgsave's debug records and other libraries'
warnings go to stderr, with every secret masked.
"""

from __future__ import annotations

import logging
import sys
import traceback

from imgsave.core.control_chars import escape_controls
from imgsave.core.redaction import redact

logger = logging.getLogger("imgsave")

_HANDLER_NAME = "imgsave-cli"


class _Redacting(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...]):
        super().__init__("%(name)s: %(levelname)s: %(message)s")
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        # Records quote providers and logs: their control characters are written out.
        text = redact(super().format(record), self._secrets)
        return escape_controls(text, keep_line_breaks=True)


def configure_logging(*, verbose: bool, secrets: tuple[str, ...]) -> None:
    """Route log records for one command run (called again by the next run in the same process,
    as in tests, it replaces its own handler rather than adding a second)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    # Always a handler of our own on the root: without one, Python's last-resort handler would
    # print other libraries' warnings unformatted and unmasked.
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if verbose else logging.NullHandler()
    )
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Redacting(secrets))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


def log_internal_error(exc: BaseException) -> None:
    """The traceback of a bug, shown with -v (masked like everything else)."""
    logger.error(
        "internal error\n%s",
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(),
    )
