"""Model calls on behalf of a verifier (judge, self-consistency): the engine's call path, priced."""

from __future__ import annotations

from dataclasses import replace

from cascade.errors import Permanent, ProviderError
from cascade.models import Completion, CompletionRequest
from cascade.worker.config.schema import Settings, Tier
from cascade.worker.leases import ShuttingDown
from cascade.worker.pricing import cost_nanos, estimate_tokens, to_usd
from cascade.worker.tier_call import TierCaller


class VerifierCalls:
    """`VerifyContext.call` for one attempt: limiter and retries as any call, cost from the price table.

    A verifier turns any exception into a failed verdict. A worker that is stopping is not the answer's
    fault: ShuttingDown is kept in `stopping`, and the engine raises it after the chain, so the job is
    given back instead of being judged.
    """

    def __init__(self, settings: Settings, caller: TierCaller, tier: Tier):
        self.settings = settings
        self.caller = caller
        self.tier = tier
        self.stopping: ShuttingDown | None = None

    def __call__(self, tier_name: str | None, request: CompletionRequest) -> tuple[Completion, float]:
        """Call `tier_name` (None: the attempt's tier) with its own model and timeout; return (completion, USD)."""
        if tier_name is not None and tier_name not in self.settings.tiers:
            raise Permanent(f"verifier: unknown tier '{tier_name}'")
        tier = self.tier if tier_name is None else self.settings.tiers[tier_name]
        request = replace(request, model=tier.model, timeout=tier.timeout_s)
        try:
            result = self.caller.call(tier, request, estimate_tokens(request.system) + estimate_tokens(request.user))
        except ShuttingDown as stopping:
            self.stopping = stopping
            raise
        if result.completion is None:
            raise ProviderError(f"verifier call on '{tier.name}': {result.error}")
        nanos = cost_nanos(self.settings.price(tier), result.completion.usage)
        return result.completion, to_usd(nanos)
