"""One model call on a tier, as the engine makes it: limiter, retries with backoff, n samples.

Every HTTP request goes through the tier's shared limiter: a provider without `n` gets n single
calls side by side, each admitted, retried and settled on its own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cascade.errors import ProviderError, RateLimited, Retryable
from cascade.models import Completion, CompletionRequest, Usage
from cascade.worker.config.schema import Tier
from cascade.worker.fanout import fan_out
from cascade.worker.limiter import Limiter
from cascade.worker.retrying import RetryPolicy, call_with_retries
from cascade.worker.runtime import ProviderPool

log = logging.getLogger("cascade.engine")


@dataclass(frozen=True)
class CallResult:
    """A completion, or the reason there is none; `retries` counts every retried request."""

    completion: Completion | None
    retries: int
    error: str = ""


class TierCaller:
    """Calls tiers' providers for one worker process; shared by its threads."""

    def __init__(self, providers: ProviderPool, limiter: Limiter, policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep):
        self.providers = providers
        self.limiter = limiter
        self.policy = policy
        self.sleep = sleep
        self._rng = random.Random()

    def call(self, tier: Tier, request: CompletionRequest, prompt_tokens: int) -> CallResult:
        """Call `tier` with retries; `prompt_tokens` is the estimate its rate limit reserves."""
        provider = self.providers.get(tier.name)
        retries = _Counter()

        def with_retries(req: CompletionRequest) -> Completion:
            completion, n = call_with_retries(lambda: self._once(provider, tier, req, prompt_tokens), self.policy,
                                              self.sleep, self._rng, lambda e, d: _log_retry(tier, e, d))
            retries.add(n)
            return completion

        try:
            if request.n > 1 and not provider.supports_n:
                return CallResult(fan_out(with_retries, request), retries.value)
            return CallResult(with_retries(request), retries.value)
        except Retryable as error:
            return CallResult(None, retries.value + self.policy.max_retries,
                              f"{error.kind}: retries exhausted: {error.provider_message}")
        except ProviderError as error:
            return CallResult(None, retries.value, f"{error.kind}: {error.provider_message}")

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
        finally:
            self.limiter.settle(tier, lease, used)
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
