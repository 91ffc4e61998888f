"""Per-process resources: provider clients built once per tier and reused by every thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping

from cascade.errors import ConfigError
from cascade.worker.config.schema import Pipeline, Settings, Tier
from cascade.worker.providers import PROVIDERS, build_provider
from cascade.worker.providers.base import Provider
from cascade.worker.providers.spec import ProviderSpec

#: with CASCADE_PROVIDER_BASE_URL (every tier on one endpoint), the key sent to that endpoint;
#: `cascade sim exec` and examples/sim.env set it to the simulator's
ENDPOINT_KEY_ENV = "CASCADE_PROVIDER_API_KEY"
MIN_CONNECTIONS = 8


def provider_spec(settings: Settings, tier: Tier, environ: Mapping[str, str] | None = None,
                  max_connections: int = MIN_CONNECTIONS) -> ProviderSpec:
    """The connection details of a tier: endpoint and key, the one-endpoint override applied.

    A missing key is an error, never silently replaced: with CASCADE_PROVIDER_BASE_URL the endpoint's
    own key comes from CASCADE_PROVIDER_API_KEY (the tiers' keys are not sent to it)."""
    environ = os.environ if environ is None else environ
    base_url = settings.provider_base_url or tier.base_url or None
    if settings.provider_base_url and tier.provider == "openai":
        base_url = settings.provider_base_url.rstrip("/") + "/v1"
    if settings.provider_base_url:
        key = environ.get(ENDPOINT_KEY_ENV, "")
        if not key:
            raise ConfigError(f"tier '{tier.name}': CASCADE_PROVIDER_BASE_URL sends every tier to "
                              f"{settings.provider_base_url}, and {ENDPOINT_KEY_ENV} (that endpoint's key) is not set")
    else:
        key = environ.get(tier.key_env, "")
        if not key:
            raise ConfigError(f"tier '{tier.name}': environment variable {tier.key_env} is not set "
                              f"(the {tier.provider} API key)")
    return ProviderSpec(kind=tier.provider, api_key=key, base_url=base_url, timeout=tier.timeout_s,
                        max_connections=max(max_connections, MIN_CONNECTIONS))


def called_tiers(pipeline: Pipeline) -> list[str]:
    """Every tier a pipeline calls: its ladder, and the tiers its judges name."""
    tiers = list(pipeline.ladder)
    for specs in pipeline.verifiers.values():
        tiers += [spec["tier"] for spec in specs if isinstance(spec.get("tier"), str) and spec["tier"] not in tiers]
    return tiers


class ProviderPool:
    """Provider clients by tier name, each built on first use and then shared.

    `threads` is how many threads of this process may call at once. A tier's HTTP pool holds that many
    connections times the samples one call fans out to (a provider without `n`), so fan-out and judge
    calls never wait for a connection."""

    def __init__(self, settings: Settings, overrides: Mapping[str, Provider] | None = None, threads: int = 0):
        self._settings = settings
        self._providers: dict[str, Provider] = dict(overrides or {})
        self._lock = threading.Lock()
        self._threads = threads or sum(t.concurrency for t in settings.tiers.values())

    def get(self, tier_name: str) -> Provider:
        """The provider of a tier."""
        provider = self._providers.get(tier_name)
        if provider is None:
            with self._lock:
                provider = self._providers.get(tier_name)
                if provider is None:
                    tier = self._settings.tiers[tier_name]
                    spec = provider_spec(self._settings, tier, max_connections=self._threads * self._fan_out(tier))
                    provider = build_provider(spec)
                    self._providers[tier_name] = provider
        return provider

    def check(self, tier_names: Iterable[str]) -> None:
        """Build the clients of these tiers now: a missing key is a ConfigError at startup, not a failed job."""
        for name in tier_names:
            self.get(name)

    def _fan_out(self, tier: Tier) -> int:
        """Parallel requests one call to `tier` can make: its samples when the provider has no `n`."""
        if getattr(PROVIDERS.get(tier.provider), "supports_n", True):
            return 1
        from cascade.verifiers.registry import build_chain

        most = 1
        for pipeline in self._settings.pipelines.values():
            if tier.name in pipeline.ladder:
                chain = build_chain(pipeline.verifier_specs(tier.name), self._settings.config_dir, str(pipeline.source))
                most = max(most, (chain.sampling or (1, 0.0))[0])
        return most
