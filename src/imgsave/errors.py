"""The errors imgsave raises on purpose, each carrying the exit code DESIGN.md gives it.

The CLI is the only place that turns these into exit codes; library code raises them with a
message that is already fit for a user: one line naming the project, scene or line at fault.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_CANNOT_WORK = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130


class ImgsaveError(Exception):
    """Base class: a problem the user must hear about in one line."""

    exit_code = EXIT_CANNOT_WORK


class UsageError(ImgsaveError):
    """The command line or configuration is wrong."""

    exit_code = EXIT_USAGE


class CannotWork(ImgsaveError):
    """The database or provider is unreachable or refusing, or the data is unusable."""

    exit_code = EXIT_CANNOT_WORK


class DatabaseUnavailable(CannotWork):
    pass


class ClaimsUnavailable(CannotWork):
    """The claims table cannot be made or used: no scene can be claimed, so none is generated."""


class LedgerUnavailable(CannotWork):
    """The ledger cannot be made or written: nothing may be bought."""


class ProjectNotFound(CannotWork):
    pass


class MalformedDocument(CannotWork):
    """The document cannot be read, or cannot be written without guessing."""


class ProviderStopped(CannotWork):
    """The image API stops the run; it may have billed some of the attempts made before."""

    def __init__(self, message: str, *, possibly_billed_retries: int = 0):
        super().__init__(message)
        self.possibly_billed_retries = possibly_billed_retries


class ProviderRefused(ProviderStopped):
    """The image provider said no in a way retrying will not change (401, 403, 404)."""


class ProviderUnreachable(ProviderStopped):
    """The image API could not be reached at all (connection refused, DNS, TLS) after retries."""


class LogUnwritable(CannotWork):
    """The generation log cannot be written (disk full, I/O error): stop spending money."""


class LockHeld(ImgsaveError):
    """Another run already holds the host-wide lock."""

    exit_code = EXIT_LOCKED
