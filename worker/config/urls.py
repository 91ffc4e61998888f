"""The URLs a config names, checked at load: a Redis URL and a provider endpoint. Messages never show a password."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def masked(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r":[^:@/]*@", ":***@", url)


def redis_url(value: str) -> str:
    """Empty (embedded mode), or a redis://, rediss:// or unix:// URL whose port is a number; else ValueError."""
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss:// or unix:// (got {masked(value)!r})")
    if not _port_ok(value):
        raise ValueError(f"the port is not a number from 0 to 65535 (got {masked(value)!r})")
    return value


def http_url(value: str) -> str:
    """Empty (the provider's own endpoint), or an http(s) URL with a host and a numeric port; else ValueError."""
    if value and (urlsplit(value).scheme not in ("http", "https") or not _port_ok(value)
                  or not urlsplit(value).hostname):
        raise ValueError(f"must be an http:// or https:// URL with a host (got {masked(value)!r})")
    return value


def _port_ok(value: str) -> bool:
    try:
        _ = urlsplit(value).port       # ValueError: a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return True
