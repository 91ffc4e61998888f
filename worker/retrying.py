"""Retry a provider call on the same tier: capped exponential backoff with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cascade.errors import RateLimited, Retryable
from cascade.worker.config.schema import EngineConfig

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to wait between tries."""

    max_retries: int = 6
    base_s: float = 0.5
    cap_s: float = 20.0

    @classmethod
    def from_config(cls, engine: EngineConfig) -> RetryPolicy:
        """The policy of the [engine] section."""
        return cls(engine.max_retries, engine.backoff_base_s, engine.backoff_max_s)

    def delay(self, retry: int, error: Retryable, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based); a provider's retry-after is a floor."""
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (retry - 1)))
        if isinstance(error, RateLimited) and error.retry_after:
            return max(backoff, min(error.retry_after, self.cap_s * 3))
        return backoff


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rng: random.Random,
    on_retry: Callable[[Retryable, float], None] | None = None,
) -> tuple[T, int]:
    """Run `fn`, retrying Retryable errors; return (result, retries used) or raise the last error."""
    retries = 0
    while True:
        try:
            return fn(), retries
        except Retryable as error:
            if retries >= policy.max_retries:
                raise
            retries += 1
            delay = policy.delay(retries, error, rng)
            if on_retry is not None:
                on_retry(error, delay)
            sleep(delay)
