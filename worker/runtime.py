"""Per-process resources: provider clients built once per tier and reused by every thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from cascade.errors import ConfigError
from cascade.worker.config.schema import Settings, Tier
from cascade.worker.providers import build_provider
from cascade.worker.providers.base import Provider
from cascade.worker.providers.spec import ProviderSpec

SIMULATOR_KEY = "sim-key"   # what a simulator endpoint gets when no real key is set


def provider_spec(settings: Settings, tier: Tier, environ: Mapping[str, str] | None = None) -> ProviderSpec:
    """The connection details of a tier: endpoint and key, the simulator override applied."""
    environ = os.environ if environ is None else environ
    base_url = settings.provider_base_url or tier.base_url or None
    if settings.provider_base_url and tier.provider == "openai":
        base_url = settings.provider_base_url.rstrip("/") + "/v1"
    key = environ.get(tier.key_env, "")
    if not key:
        if not settings.provider_base_url:
            raise ConfigError(f"tier '{tier.name}': environment variable {tier.key_env} is not set "
                              f"(the {tier.provider} API key)")
        key = SIMULATOR_KEY
    return ProviderSpec(kind=tier.provider, api_key=key, base_url=base_url, timeout=tier.timeout_s,
                        max_connections=max(tier.concurrency, 8))


class ProviderPool:
    """Provider clients by tier name, each built on first use and then shared."""

    def __init__(self, settings: Settings, overrides: Mapping[str, Provider] | None = None):
        self._settings = settings
        self._providers: dict[str, Provider] = dict(overrides or {})
        self._lock = threading.Lock()

    def get(self, tier_name: str) -> Provider:
        """The provider of a tier."""
        provider = self._providers.get(tier_name)
        if provider is None:
            with self._lock:
                provider = self._providers.get(tier_name)
                if provider is None:
                    tier = self._settings.tiers[tier_name]
                    provider = build_provider(provider_spec(self._settings, tier))
                    self._providers[tier_name] = provider
        return provider
