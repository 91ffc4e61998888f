"""Model calls on behalf of a verifier (judge, self-consistency): the engine's call path, priced."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from worker.config.schema import Settings, Tier
from worker.errors import Permanent, ProviderError
from worker.models import Completion, CompletionRequest, Usage
from worker.pricing import cost_nanos, estimate_tokens, to_usd
from worker.runtime import ProviderPool

#: the engine's `_call(tier, request, prompt_tokens) -> (completion | None, retries, error reason)`
EngineCall = Callable[[Tier, CompletionRequest, int], tuple[Completion | None, int, str]]


class VerifierCalls:
    """`VerifyContext.call` for one attempt: limiter and retries via the engine, cost from the price table."""

    def __init__(self, settings: Settings, providers: ProviderPool, tier: Tier, engine_call: EngineCall):
        self.settings = settings
        self.providers = providers
        self.tier = tier
        self.engine_call = engine_call

    def __call__(self, tier_name: str | None, request: CompletionRequest) -> tuple[Completion, float]:
        """Call `tier_name` (None: the attempt's tier) with its own model and timeout; return (completion, USD)."""
        if tier_name is not None and tier_name not in self.settings.tiers:
            raise Permanent(f"verifier: unknown tier '{tier_name}'")
        tier = self.tier if tier_name is None else self.settings.tiers[tier_name]
        request = replace(request, model=tier.model, timeout=tier.timeout_s)
        if request.n > 1 and not self.providers.get(tier.name).supports_n:
            completion = self._parallel(tier, request)
        else:
            completion = self._once(tier, request)
        nanos = cost_nanos(self.settings.price(tier), completion.usage, tier.batch_pricing)
        return completion, to_usd(nanos)

    def _once(self, tier: Tier, request: CompletionRequest) -> Completion:
        prompt_tokens = estimate_tokens(request.system) + estimate_tokens(request.user)
        completion, _, error = self.engine_call(tier, request, prompt_tokens)
        if completion is None:
            raise ProviderError(f"verifier call on '{tier.name}': {error}")
        return completion

    def _parallel(self, tier: Tier, request: CompletionRequest) -> Completion:
        """n single calls side by side (each through the limiter), merged like one n-call."""
        single = replace(request, n=1)
        with ThreadPoolExecutor(max_workers=request.n, thread_name_prefix=f"verify-{tier.name}") as pool:
            answers = list(pool.map(lambda _: self._once(tier, single), range(request.n)))
        first = answers[0]
        return Completion(
            text=first.text, usage=sum((a.usage for a in answers), Usage()), finish_reason=first.finish_reason,
            model=first.model, latency_ms=max(a.latency_ms for a in answers), samples=tuple(a.text for a in answers),
        )
