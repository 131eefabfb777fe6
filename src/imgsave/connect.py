"""Open the database the settings name: a URL, or the embedded server when asked for by name."""

from __future__ import annotations

from . import embedded
from .config import Settings
from .db import Database
from .errors import UsageError

EMBEDDED = "embedded"

NO_DATABASE = (
    "no database given: set IMGSAVE_DATABASE_URL (or DATABASE_URL, or database_url in "
    "imgsave.toml) to a PostgreSQL URL, or to 'embedded' for imgsave's built-in server"
)


async def open_database(settings: Settings, *, max_size: int = 4) -> Database:
    # No silent fallback: a cron line that lost its environment must alert, not audit an empty
    # embedded database and report a clean run.
    if not settings.database_url:
        raise UsageError(NO_DATABASE)
    if settings.database_url.strip().lower() == EMBEDDED:
        url = embedded.start()
        return await Database.open(
            url, settings.names, settings.database, max_size=max_size, create_table=True
        )
    return await Database.open(
        settings.database_url, settings.names, settings.database, max_size=max_size
    )
