"""Cost from usage and the price table, exact in nano-USD."""

from cascade.models import Usage
from cascade.worker.config.schema import Price, Tier
from cascade.worker.pricing import cost_nanos, reserve_nanos, to_usd

MINI = Price(input=0.15, output=0.60, cached_input=0.075, batch_discount=0.5)


def test_cost_of_input_and_output_tokens():
    # 1,000 input tokens at $0.15/M + 200 output tokens at $0.60/M = $0.00015 + $0.00012
    assert cost_nanos(MINI, Usage(1000, 200, 0)) == 270_000
    assert to_usd(270_000) == 0.00027


def test_cached_tokens_at_the_cached_price_and_batch_discount():
    assert cost_nanos(MINI, Usage(0, 0, 1000)) == 75_000
    assert cost_nanos(MINI, Usage(1000, 200, 0), batch_pricing=True) == 135_000


def test_cached_price_defaults_to_input_price():
    assert cost_nanos(Price(input=3.0, output=15.0), Usage(0, 0, 1000)) == 3_000_000


def test_reservation_covers_every_allowed_output_token():
    tier = Tier(name="t", provider="openai", model="m", max_tokens=100)
    assert reserve_nanos(MINI, tier, prompt_tokens=400) == cost_nanos(MINI, Usage(400, 100, 0))
