"""Secrets never reach output: find them the way their owners parse them, mask them where
they can appear (error texts from PostgreSQL, the image API, the store), nowhere else.

Masking is applied to the text of outside errors at the point imgsave takes them in, never to
data it prints: a project called `abc-project` stays `abc-project` whatever the API key is.
"""

from __future__ import annotations

import re

# A string this short cannot be told apart from ordinary text: masking it would rewrite
# messages (and it is no real secret). It is left alone, and the user is told it looks wrong.
MIN_SECRET_LENGTH = 8


def url_secrets(url: str) -> tuple[str, ...]:
    """The password a database URL or key=value conninfo string carries, in every spelling it
    may appear in text: as parsed, percent-encoded, and quoted with escapes.

    Found the way libpq finds it (`conninfo_to_dict`), so a password holding `#`, `?`, `/`,
    spaces or quotes is found whole; a regex is the fallback for strings libpq rejects.
    """
    from urllib.parse import quote, unquote

    found = _passwords(url)
    spellings = set()
    for secret in found:
        for form in (secret, unquote(secret), quote(secret, safe=""), quote(secret)):
            spellings.add(form)
            spellings.add(form.replace("\\", "\\\\").replace("'", "\\'"))
    return tuple(s for s in spellings if s)


def mask_url(url: str) -> str:
    """A database URL or conninfo fit to print: every spelling of the password is ***."""
    return redact(url, url_secrets(url))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret replaced, longest first so no fragment survives."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return text


def _passwords(url: str) -> list[str]:
    """The password as libpq parses it (decoded), then as written, wherever else it is found."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(url).get("password")
    except Exception:  # psycopg.ProgrammingError: not a conninfo at all
        password = None
    found = [str(password)] if password else []
    found += re.findall(r"password\s*=\s*'((?:[^'\\]|\\.)+)'", url)
    found += re.findall(r"password\s*=\s*([^\s'&]+)", url)
    match = re.match(r"^[a-z]+://[^:/@]*:(.+)@[^@]*$", url, re.IGNORECASE | re.DOTALL)
    if match:
        found.append(match[1])
    return found


def weak_secret_warnings(api_key: str | None, database_url: str | None) -> list[str]:
    """A warning for each secret too short to mask (or to be real)."""

    warnings = []
    found = _passwords(database_url or "")
    # Decoded once: the parsed password is already decoded, and "%00" in it is four characters.
    password = found[0] if found else None
    if api_key and len(api_key) < MIN_SECRET_LENGTH:
        warnings.append(
            f"the API key is only {len(api_key)} characters long: it looks wrong, and imgsave "
            "does not mask so short a string in messages"
        )
    if password is not None and len(password) < MIN_SECRET_LENGTH:
        warnings.append(
            f"the database password is shorter than {MIN_SECRET_LENGTH} characters: imgsave "
            "does not mask so short a string in messages"
        )
    return warnings
