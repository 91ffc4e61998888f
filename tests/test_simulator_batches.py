"""The simulator's Batch APIs (OpenAI Files + Batches, Anthropic Message Batches), driven through the official
SDKs over HTTP: a batch line gets exactly the answer a live call with the same body gets."""

from __future__ import annotations

import pytest

from cascade.errors import ConfigError
from cascade.simulator import parse_scenario
from cascade.simulator.schema import BatchProfile


def test_the_batch_table_of_a_scenario_is_checked_like_the_others():
    scenario = parse_scenario("[batch]\ndelay_s = 2\nerror_rate = 0.1\nexpire_next = 3\n")
    assert (scenario.batch.delay_s, scenario.batch.error_rate, scenario.batch.expire_next) == (2.0, 0.1, 3)
    assert parse_scenario("seed = 1").batch == BatchProfile(delay_s=1.0, error_rate=0.0, expire_next=0)
    with pytest.raises(ConfigError, match="s.toml: batch.delay: unknown key"):
        parse_scenario("[batch]\ndelay = 2\n", "s.toml")
    with pytest.raises(ConfigError, match="batch.error_rate: must be between 0 and 1"):
        parse_scenario("[batch]\nerror_rate = 1.5\n")
    with pytest.raises(ConfigError, match="batch.expire_next: must be a non-negative integer"):
        parse_scenario("[batch]\nexpire_next = -1\n")
