"""Downloads reach public addresses only (adapters/imageapi/netguard.py), IPv4 addresses carried
inside IPv6 ones included: a NAT64 gateway, a 6to4 relay or a dual stack turns them back into
the private IPv4 address they carry."""

from __future__ import annotations

import pytest

from imgsave.adapters.imageapi.netguard import is_public

HOSTILE = {
    "64:ff9b::a9fe:a9fe": "NAT64 of 169.254.169.254, the cloud metadata service",
    "64:ff9b::a00:5": "NAT64 of 10.0.0.5",
    "64:ff9b::7f00:1": "NAT64 of 127.0.0.1",
    "64:ff9b::c0a8:101": "NAT64 of 192.168.1.1",
    "64:ff9b::6440:1": "NAT64 of 100.64.0.1 (shared address space)",
    "64:ff9b:1::a00:5": "the local-use NAT64 prefix, 10.0.0.5",
    "64:ff9b:1::808:808": "the local-use NAT64 prefix: where it embeds is the network's choice",
    "64:ff9b:1:ff00::": "the local-use NAT64 prefix, anywhere in it",
    "2002:a9fe:a9fe::": "6to4 of 169.254.169.254",
    "2002:a00:1::1": "6to4 of 10.0.0.1",
    "2002:7f00:1::": "6to4 of 127.0.0.1",
    "::7f00:1": "IPv4-compatible 127.0.0.1",
    "::a9fe:a9fe": "IPv4-compatible 169.254.169.254",
    "::ffff:127.0.0.1": "IPv4-mapped 127.0.0.1",
    "::ffff:169.254.169.254": "IPv4-mapped metadata",
    "::ffff:0:7f00:1": "IPv4-translated 127.0.0.1",
    "::ffff:0:a00:1": "IPv4-translated 10.0.0.1",
    "2001:0:a00:1::1": "Teredo through 10.0.0.1",
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fc00::1": "unique local",
    "ff02::1": "multicast",
    "127.0.0.1": "loopback",
    "10.1.2.3": "private",
    "169.254.169.254": "link-local: the metadata service",
    "100.64.0.1": "shared address space",
    "0.0.0.0": "this host",
    "224.0.0.1": "multicast",
    "fe80::1%eth0": "link-local with a zone",
}
PUBLIC = {
    "93.184.215.14": "a public IPv4 address",
    "2606:4700::1111": "a public IPv6 address",
    "64:ff9b::808:808": "NAT64 of 8.8.8.8: how an IPv6-only network reaches a public host",
    "2002:808:808::1": "6to4 of 8.8.8.8",
    "::ffff:8.8.8.8": "IPv4-mapped 8.8.8.8",
    "::ffff:0:808:808": "IPv4-translated 8.8.8.8",
}


@pytest.mark.parametrize("address", HOSTILE, ids=HOSTILE.get)
def test_a_private_address_is_refused_in_every_form(address: str):
    assert not is_public(address), HOSTILE[address]


@pytest.mark.parametrize("address", PUBLIC, ids=PUBLIC.get)
def test_a_public_address_is_downloaded_from_in_every_form(address: str):
    assert is_public(address), PUBLIC[address]


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::ffff:0:7f00:1"])
async def test_a_download_from_a_translated_private_address_never_connects(address: str):
    from imgsave.adapters.imageapi.downloads import DownloadFailed, Fetcher

    async with Fetcher(max_bytes=1000, timeout=5, allow_http=True) as fetcher:
        with pytest.raises(DownloadFailed, match="private, loopback or link-local") as failed:
            await fetcher.download(f"http://[{address}]/latest/meta-data/")
    assert failed.value.refused
