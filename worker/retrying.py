"""Retry a provider call on the same tier: capped exponential backoff with full jitter, for as long as the
transient horizon allows. A passing outage never fails a job; only one that outlasts the horizon does."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cascade.errors import RateLimited, Retryable
from cascade.worker.config.schema import EngineConfig

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between tries, and for how long to keep trying."""

    max_retries: int = 6            # quick retries with growing backoff; later ones wait `cap_s` each
    base_s: float = 0.5
    cap_s: float = 20.0
    horizon_s: float = 21600.0      # a job fails for a transient cause only after this long

    @classmethod
    def from_config(cls, engine: EngineConfig) -> RetryPolicy:
        """The policy of the [engine] section."""
        return cls(engine.max_retries, engine.backoff_base_s, engine.backoff_max_s, engine.transient_horizon_s)

    def delay(self, retry: int, error: Retryable, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based); a provider's retry-after is a floor."""
        if retry <= self.max_retries:
            backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (retry - 1)))
        else:
            backoff = rng.uniform(self.cap_s / 2, self.cap_s)
        if isinstance(error, RateLimited) and error.retry_after:
            return max(backoff, min(error.retry_after, self.cap_s * 3))
        return backoff


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    rng: random.Random,
    on_retry: Callable[[Retryable, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[T, int]:
    """Run `fn`, retrying Retryable errors until the horizon; return (result, retries used) or raise the last
    error with `waited_s` set to how long the tries lasted."""
    retries = 0
    first: float | None = None
    while True:
        try:
            return fn(), retries
        except Retryable as error:
            now = clock()
            first = now if first is None else first
            if now - first >= policy.horizon_s:
                error.waited_s = now - first
                raise
            retries += 1
            delay = policy.delay(retries, error, rng)
            if on_retry is not None:
                on_retry(error, delay)
            sleep(delay)
