"""Open the database the settings name, or the embedded one when they name none."""

from __future__ import annotations

from . import embedded
from .config import Settings
from .db import Database


async def open_database(settings: Settings, *, max_size: int = 4) -> Database:
    if settings.database_url:
        return await Database.open(
            settings.database_url, settings.names, settings.database, max_size=max_size
        )
    url = embedded.start()
    return await Database.open(
        url, settings.names, settings.database, max_size=max_size, create_table=True
    )
