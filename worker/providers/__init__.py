"""Provider adapters by name, and the one function that builds a provider from its spec."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade.errors import ConfigError
from cascade.worker.providers.anthropic_provider import AnthropicProvider
from cascade.worker.providers.openai_provider import OpenAIProvider
from cascade.worker.providers.spec import ProviderSpec

if TYPE_CHECKING:
    import httpx2

    from cascade.worker.providers.base import Provider

#: config's `provider = "..."` -> adapter class (each is built from a ProviderSpec)
PROVIDERS: dict[str, type] = {
    "anthropic": AnthropicProvider,
    "openai": OpenAIProvider,
}

__all__ = ["PROVIDERS", "AnthropicProvider", "OpenAIProvider", "ProviderSpec", "build_provider"]


def build_provider(spec: ProviderSpec, *, http_client: httpx2.Client | None = None) -> Provider:
    """A provider for `spec`; build one per process and share it (its client is thread-safe).

    `http_client` replaces the pooled client the adapter would make (tests pass a mock transport).
    """
    try:
        cls = PROVIDERS[spec.kind]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError(f"unknown provider '{spec.kind}' (known: {known})") from None
    return cls(spec, http_client=http_client)
