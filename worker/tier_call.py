"""One model call on a tier, as the engine makes it: limiter, circuit, retries until the horizon, n samples.

Every HTTP request goes through the tier's shared limiter: a provider without `n` gets n single calls
side by side, each admitted, retried and settled on its own. Transient errors wait (the tier's circuit
opens for every worker after a run of them); a job fails for a transient cause only after the horizon.
An error that concerns the whole tier (a bad key, no access, an unknown model) stops the tier: one
ERROR line, a status every command shows, and the job waits for a worker restarted with a fix.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cascade.errors import ProviderError, RateLimited, Retryable, TierUnusable
from cascade.models import Completion, CompletionRequest, Usage
from cascade.worker.config.schema import Tier
from cascade.worker.fanout import fan_out
from cascade.worker.limiter import Limiter
from cascade.worker.retrying import RetryPolicy, call_with_retries
from cascade.worker.runtime import ProviderPool

log = logging.getLogger("cascade.engine")

STOPPED_POLL_S = 5.0    # how often a job on a stopped tier looks whether a restarted worker cleared it


@dataclass(frozen=True)
class CallResult:
    """A completion, or the reason there is none; `retries` counts every retried request, `spent` the usage
    billed for parts that did answer when the call as a whole failed (sampled calls)."""

    completion: Completion | None
    retries: int
    error: str = ""
    spent: Usage = Usage()


class TierHealth:
    """Stopped tiers, shared by every worker through the store (None: nothing is shared, e.g. in unit tests)."""

    def __init__(self, sweeps: Any | None, sleep: Callable[[float], None], embedded: bool = False):
        self.sweeps = sweeps
        self.sleep = sleep
        # what resumes the work: a restarted worker clears the stop; an embedded run ends and is run again
        self.advice = ("Fix the key or model and run the batch again" if embedded
                       else "Fix the key or model, then restart its workers: the work resumes")

    def stop_and_wait(self, tier: Tier, error: TierUnusable) -> None:
        """Stop the tier (saying so once, at ERROR) and wait until a restarted worker clears it."""
        if self.sweeps is None:
            raise error
        if self.sweeps.stop_tier(tier.name, error.provider_message):
            log.error("tier %s stopped: %s. Every call to it would fail the same way; its jobs wait. %s.",
                      tier.name, error.provider_message.rstrip("."), self.advice)
        while self.sweeps.tier_stopped(tier.name) is not None:
            self.sleep(STOPPED_POLL_S)


class TierCaller:
    """Calls tiers' providers for one worker process; shared by its threads."""

    def __init__(self, providers: ProviderPool, limiter: Limiter, policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep, health: TierHealth | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.providers = providers
        self.limiter = limiter
        self.policy = policy
        self.sleep = sleep
        self.clock = clock
        self.health = health or TierHealth(None, sleep)
        self._rng = random.Random()

    def call(self, tier: Tier, request: CompletionRequest, prompt_tokens: int) -> CallResult:
        """Call `tier` until it answers, fails for good, or the transient horizon passes."""
        provider = self.providers.get(tier.name)
        retries = _Counter()

        def with_retries(req: CompletionRequest) -> Completion:
            while True:
                try:
                    completion, n = call_with_retries(lambda: self._once(provider, tier, req, prompt_tokens),
                                                      self.policy, self.sleep, self._rng,
                                                      lambda e, d: _log_retry(tier, e, d), self.clock)
                    retries.add(n)
                    return completion
                except TierUnusable as error:
                    self.health.stop_and_wait(tier, error)

        try:
            if request.n > 1 and not provider.supports_n:
                return CallResult(fan_out(with_retries, request), retries.value)
            return CallResult(with_retries(request), retries.value)
        except Retryable as error:
            waited = getattr(error, "waited_s", 0.0)
            return CallResult(None, retries.value, f"transient: {error.kind} for {waited:.0f} s (the transient "
                              f"horizon): {error.provider_message}", error.spent or Usage())
        except ProviderError as error:
            return CallResult(None, retries.value, f"{error.kind}: {error.provider_message}", error.spent or Usage())

    def _once(self, provider: Any, tier: Tier, request: CompletionRequest, prompt_tokens: int) -> Completion:
        """One HTTP request, admitted by the limiter and settled to what the provider counts."""
        reserved = prompt_tokens + request.max_tokens * request.n
        lease = self.limiter.acquire(tier, reserved)
        used = reserved     # a failed call keeps its reservation: providers count failed requests too
        try:
            completion = provider.complete(request)
            used = rate_limit_tokens(provider, request, completion.usage)
        except RateLimited as error:    # every worker of the tier waits, for as long as the provider said
            self.limiter.cool_down(tier, error.retry_after or 1.0)
            raise
        except Retryable as error:      # 5xx, connection, timeout: a run of them opens the tier's circuit
            self.limiter.report(tier, lease, ok=False, cause=f"{error.kind}: {error.provider_message}")
            raise
        finally:
            self.limiter.settle(tier, lease, used)
        self.limiter.report(tier, lease, ok=True)
        self.limiter.observe(tier, completion.rate_limit)   # slow down before the provider says 429
        return completion


def rate_limit_tokens(provider: Any, request: CompletionRequest, usage: Usage) -> int:
    """What the provider counts against its tokens-per-minute limit for a call it answered."""
    if getattr(provider, "tpm_counts_max_tokens", False):
        return usage.prompt_tokens + request.max_tokens * request.n
    return usage.prompt_tokens + usage.output_tokens


def _log_retry(tier: Tier, error: Retryable, delay: float) -> None:
    log.info("tier %s: %s, retrying in %.2fs", tier.name, error.kind, delay)


class _Counter:
    """A total that parallel calls add to."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n
