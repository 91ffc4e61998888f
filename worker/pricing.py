"""Money: attempt cost from usage and the price table, in integer nano-USD so sums are exact."""

from __future__ import annotations

from worker.config.schema import Price, Tier
from worker.models import Usage

NANOS_PER_USD = 1_000_000_000


def cost_nanos(price: Price, usage: Usage, batch_pricing: bool = False) -> int:
    """What a call cost, in nano-USD (prices are USD per million tokens, so 1 token = price * 1000 nanos)."""
    cached = price.input if price.cached_input is None else price.cached_input
    nanos = (usage.input_tokens * price.input + usage.cached_tokens * cached + usage.output_tokens * price.output) * 1000
    if batch_pricing:
        nanos *= 1 - price.batch_discount
    return round(nanos)


def to_usd(nanos: int) -> float:
    """Nano-USD to USD."""
    return nanos / NANOS_PER_USD


def estimate_tokens(text: str) -> int:
    """A network-free token estimate for reservations: ~4 characters per token, rounded up, plus framing."""
    return (len(text) + 3) // 4 + 8


def reserve_nanos(price: Price, tier: Tier, prompt_tokens: int) -> int:
    """The most a call can cost: the prompt estimate plus every allowed output token."""
    usage = Usage(input_tokens=prompt_tokens, output_tokens=tier.max_tokens)
    return cost_nanos(price, usage, tier.batch_pricing)
