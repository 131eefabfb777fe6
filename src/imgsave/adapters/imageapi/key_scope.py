"""Where the API key may go: the base URL's exact origin (scheme, host and port), and, for an
API that documents hosts of its own besides (kind.py's `api_hosts`), those hosts over https on
port 443 while the base URL is one of them. Nowhere else: not another port of the same host, not
a sibling subdomain, not an address that shares a suffix. And never in clear: a plain-http base
URL that is not this machine is refused with a key unless the user says --allow-http."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from imgsave.errors import UsageError

_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int | None]


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) with the scheme's default port filled in; None when unparsable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


class KeyScope:
    def __init__(self, base_url: str, api_hosts: str | None = None):
        self._origin = origin_of(base_url)
        hosts = re.compile(api_hosts) if api_hosts else None
        # The API's own hosts count only when the base URL is one of them (not behind a
        # gateway, whose key those hosts have no business seeing).
        self._hosts = hosts if hosts and self._official(self._origin, hosts) else None

    def admits(self, url: str) -> bool:
        origin = origin_of(url)
        if origin is None or self._origin is None:
            return False
        if origin == self._origin:
            return True
        return self._hosts is not None and self._official(origin, self._hosts)

    @staticmethod
    def _official(origin: Origin | None, hosts: re.Pattern[str]) -> bool:
        return (
            origin is not None
            and origin[0] == "https"
            and origin[2] == _DEFAULT_PORTS["https"]
            and hosts.fullmatch(origin[1]) is not None
        )


def refuse_key_in_clear(base_url: str, api_key: str | None, *, allow_http: bool) -> None:
    """UsageError when the key would cross a network in clear: a plain-http base URL whose host
    is not this machine, without --allow-http."""
    parts: SplitResult = urlsplit(base_url)
    if not api_key or allow_http or parts.scheme.lower() != "http":
        return
    if is_loopback(parts.hostname or ""):
        return
    raise UsageError(
        "IMGSAVE_BASE_URL is plain http to another machine: the API key would travel in clear; "
        "use https, or --allow-http if that network is yours"
    )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
