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


def userinfo_secret(url: str | None) -> str | None:
    """What a URL carries before `@` in its authority (user:password), if anything."""
    from urllib.parse import urlsplit

    if not url:
        return None
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    userinfo, at, _ = netloc.rpartition("@")
    return userinfo if at and userinfo else None


def credentials_problem(url: str | None, setting: str, where_they_go: str) -> str | None:
    """A one-line refusal when a URL setting carries credentials, naming where credentials go
    instead; the URL itself is never repeated (it holds the secret)."""
    if userinfo_secret(url) is None:
        return None
    return f"{setting} must not carry credentials (user:secret@ in the URL): {where_they_go}"


def database_url_problem(url: str) -> str | None:
    """Why a database URL cannot be what its writer meant, before libpq sees it: a password
    holding an unencoded `?`, `/` or `#` ends the URL's authority early, and libpq's error
    would then show the rest of the password as a host or a parameter. Nothing of the URL is
    repeated."""
    text = url.strip()
    if text.lower() == "embedded":
        return None
    match = re.match(r"^postgres(?:ql)?://(.*)$", text, re.IGNORECASE | re.DOTALL)
    if match is None:
        return None if _is_conninfo(text) else NOT_POSTGRESQL
    rest = match[1]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" not in authority and "@" in rest:
        return (
            "the database URL's user or password holds a character that must be "
            "percent-encoded (/ ? # @ : as %2F %3F %23 %40 %3A), e.g. "
            "postgresql://app:pa%3Fss@host/db; the password is not shown"
        )
    return None


NOT_POSTGRESQL = (
    "the database URL is not a PostgreSQL URL: use postgresql://USER:PASSWORD@HOST:5432/DB, "
    "a key=value connection string (host=... dbname=...), or 'embedded'"
)


def _is_conninfo(text: str) -> bool:
    """Whether libpq reads `text` as a key=value connection string (no scheme://)."""
    from psycopg.conninfo import conninfo_to_dict

    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        return False
    try:
        return bool(conninfo_to_dict(text))
    except Exception:  # psycopg.ProgrammingError: libpq's "missing '='", and the like
        return False


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
