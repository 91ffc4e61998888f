"""What a process needs to build one provider client: kind, endpoint, key and limits."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProviderSpec:
    """One provider endpoint; `repr` and `str` never show the API key, so a spec is safe to log."""

    kind: str                                   # "openai" | "anthropic"
    api_key: str = field(repr=False)            # secret: kept out of repr so it never reaches a log line
    base_url: str | None = None                 # None: the SDK's default (or its *_BASE_URL variable)
    timeout: float = 60.0                       # client default; each request passes its own tier timeout
    max_connections: int = 64                   # pooled HTTP connections shared by every thread of the process
