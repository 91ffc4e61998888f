"""What both SDK adapters share: key and pool set-up, and reading rate-limit headers."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime

import httpx2

from cascade.errors import ConfigError
from cascade.worker.providers.spec import ProviderSpec

#: one Go-style duration component, as OpenAI writes resets: "1s", "6m0s", "20ms", "1h2m3.5s"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def require_api_key(spec: ProviderSpec) -> str:
    """The spec's key; an empty one is a ConfigError here rather than an SDK error at the first call."""
    if not spec.api_key:
        # Without this the SDKs would fall back to their own environment variables or config files,
        # so a misconfigured tier could silently run on another account's key.
        raise ConfigError(f"provider '{spec.kind}': empty api_key (set the tier's API key variable)")
    return spec.api_key


def connection_limits(spec: ProviderSpec) -> httpx2.Limits:
    """Pool limits for the one HTTP client every thread of the process shares."""
    # Keep-alive for the whole pool: worker threads reuse connections instead of re-handshaking TLS.
    return httpx2.Limits(max_connections=spec.max_connections, max_keepalive_connections=spec.max_connections)


def parse_number(text: str | None) -> float | None:
    """A finite float, or None when the header is absent or not a number."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None  # a malformed hint is no hint; the call itself succeeded
    return value if math.isfinite(value) else None


def parse_duration(text: str | None) -> float | None:
    """Seconds from a Go-style duration ("6m0s", "20ms") or a bare number of seconds."""
    if text is None:
        return None
    text = text.strip()
    number = parse_number(text)
    if number is not None:
        return number
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(value + unit for value, unit in parts) != text:
        return None
    return sum(float(value) * _UNIT_SECONDS[unit] for value, unit in parts)


def seconds_until(timestamp: str | None, now: float | None = None) -> float | None:
    """Seconds from `now` (epoch, default the clock) to an RFC 3339 timestamp, never negative."""
    if timestamp is None:
        return None
    try:
        moment = datetime.fromisoformat(timestamp.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # a reset without a zone cannot be placed in time
    now = time.time() if now is None else now
    return max(0.0, moment.timestamp() - now)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    # The millisecond header is the more precise one when a provider sends both.
    millis = parse_number(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000)
    value = headers.get("retry-after")
    seconds = parse_number(value)
    if seconds is not None:
        return max(0.0, seconds)
    if value is None:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, moment.timestamp() - now)


def rate_limit_hints(
    headers: Mapping[str, str],
    names: Mapping[str, str],
    parse_reset: Callable[[str | None], float | None],
) -> dict[str, float]:
    """Completion.rate_limit from response headers: `names` maps our keys to the provider's header names.

    Keys starting with "reset_" go through `parse_reset`; the others must be plain numbers.
    Absent or malformed headers are left out, so an empty dict means "no hints".
    """
    hints: dict[str, float] = {}
    for key, header in names.items():
        raw = headers.get(header)
        value = parse_reset(raw) if key.startswith("reset_") else parse_number(raw)
        if value is not None:
            hints[key] = value
    return hints
