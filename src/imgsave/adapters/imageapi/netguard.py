"""Downloads reach the public internet only: an image URL, or any redirect it takes, that
resolves to a loopback, private, link-local (169.254.169.254, the cloud metadata service),
shared or reserved address is refused, after DNS resolution and on every hop, so an answer or a
log line cannot make imgsave fetch an internal service and publish it in the bucket.

An IPv6 address that carries an IPv4 one is judged by the IPv4 one: IPv4-mapped
(`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), the
NAT64 well-known prefix (`64:ff9b::/96`, which a NAT64 gateway turns into the IPv4 address it
ends with), 6to4 (`2002::/16`) and Teredo (`2001::/32`, its server and its client). The local-use
NAT64 prefix (`64:ff9b:1::/48`) embeds its IPv4 where the local network decides, so it is
refused whole.

The check and the connection use the same address: the request is sent to the address that was
checked (the Host header and TLS's SNI keep the name), so a DNS answer that changes between the
two (rebinding) cannot slip through. `allow_private_network` (for a provider or image host on
your own network, and the tests' loopback provider) turns the refusal off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

import httpx

from imgsave.adapters.imageapi.tls import shared_context


class PrivateAddress(httpx.TransportError):
    """The URL's host resolves to an address downloads may not reach."""


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        embedded = embedded_ipv4(ip)
        if embedded:
            return all(_public(v4) for v4 in embedded)
    return _public(ip)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address stands for, where it carries any."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo
    if ip in _NAT64 or ip in _TRANSLATED or ip in _COMPATIBLE:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    return ()


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


class PublicOnly(httpx.AsyncBaseTransport):
    """An httpx transport that resolves each request's host itself, refuses non-public
    addresses, and connects to the address it checked."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        public: Callable[[str], bool] = is_public,
    ) -> None:
        """`public` judges an address (the tests give loopback addresses roles)."""
        self._inner = inner or httpx.AsyncHTTPTransport(verify=shared_context())
        self._public = public

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}", request=request) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        refused = [a for a in addresses if not self._public(a)]
        if refused or not addresses:
            raise PrivateAddress(
                f"{host} resolves to {refused[0] if refused else 'nothing'}, a private, "
                "loopback or link-local address: not downloaded (allow_private_network = true "
                "allows it)",
                request=request,
            )
        pinned = request.url.copy_with(host=addresses[0])
        request.url = pinned
        request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def download_transport(
    allow_private_network: bool, inner: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncBaseTransport | None:
    """The transport downloads use: `inner` (or httpx's) as it is when private addresses are
    allowed, else guarded by PublicOnly."""
    if allow_private_network:
        return inner
    return PublicOnly(inner)
