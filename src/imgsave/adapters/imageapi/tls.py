"""One TLS context for every HTTP client imgsave opens. Loading the CA bundle costs about 17 ms
each time; the image API client keeps eight connection pools, and a run also opens a
downloader, so building one context per client was most of a short run's start-up."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def shared_context() -> ssl.SSLContext:
    """httpx's own default (certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR), built once."""
    return httpx.create_ssl_context()
