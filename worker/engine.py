"""The cascade decision for one job on one tier: attempt -> verify -> accept | escalate | finalize.

Plain Python: no Celery. A dispatcher (Celery or local threads) delivers messages to
`Engine.handle` and takes the escalations it sends.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import orjson

from verifiers import VerifyContext, build_verifier
from verifiers.chain import VerifierChain
from verifiers.parsing import parse_output
from verifiers.self_consistency import SAMPLES_DEFAULT, TEMPERATURE_DEFAULT
from worker.config.schema import Pipeline, Settings, Tier
from worker.counters import attempt_counters, final_counters
from worker.errors import ContextTooLong, ProviderError, Retryable
from worker.limiter import Limiter, NoLimiter
from worker.messages import AttemptMessage
from worker.models import Attempt, Completion, CompletionRequest, Usage
from worker.pricing import cost_nanos, estimate_tokens, reserve_nanos, to_usd
from worker.prompts import render
from worker.retrying import RetryPolicy, call_with_retries
from worker.runtime import ProviderPool
from worker.store import Begin, BatchStore, StoreError
from worker.verifier_calls import VerifierCalls

log = logging.getLogger("cascade.engine")


class Dispatcher(Protocol):
    """Delivers attempt messages to a tier's workers."""

    def send(self, message: AttemptMessage) -> None:
        """Queue one message on the tier its `tier` index names."""
        ...


class Engine:
    """Runs attempts; one per worker process, shared by its threads."""

    def __init__(
        self,
        settings: Settings,
        store: BatchStore,
        providers: ProviderPool,
        dispatcher: Dispatcher,
        limiter: Limiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.store = store
        self.providers = providers
        self.dispatcher = dispatcher
        self.limiter = limiter or NoLimiter()
        self.sleep = sleep
        self.retry_policy = RetryPolicy.from_config(settings.engine)
        self._rng = random.Random()
        self._chains: dict[tuple[str, str], VerifierChain] = {}
        for pipeline in settings.pipelines.values():
            for tier in pipeline.ladder:
                specs = pipeline.verifier_specs(tier)
                where = f"{pipeline.source}: verifiers.{tier}"
                verifiers = [build_verifier(s, settings.config_dir, f"{where}[{i}]") for i, s in enumerate(specs)]
                self._chains[(pipeline.name, tier)] = VerifierChain(verifiers)

    # -- the decision ------------------------------------------------------------------

    def handle(self, msg: AttemptMessage, redelivered: bool = True) -> str:
        """Process one message; return what happened (accepted, escalated, failed, duplicate, ...).

        `redelivered=False` says the broker delivers this message for the first time. Then, in a batch
        without a budget, the pre-check round trip is skipped: a duplicate can only come from a crash
        between publishing an escalation and recording it, and `finish_attempt` still counts it once
        (its call's cost goes to cost_duplicate).
        """
        reserved = 0
        try:
            pipeline = self.settings.pipeline(msg.pipeline)
            tier = self.settings.tiers[pipeline.ladder[msg.tier]]
            system, user = render(pipeline.prompt, msg.job.fields)
            # the estimate only feeds reservations: the batch budget and the tier's tokens-per-minute limit
            prompt_tokens = estimate_tokens(system) + estimate_tokens(user) if msg.budgeted or tier.tpm else 0
            reserve = reserve_nanos(self.settings.price(tier), tier, prompt_tokens) if msg.budgeted else 0
            if msg.budgeted or redelivered:
                begin = self.store.begin_attempt(msg.batch, msg.job.id, msg.tier, reserve)
                if begin in (Begin.DONE, Begin.COUNTED):
                    return "duplicate"
                if begin is Begin.NO_BUDGET:
                    return self._finalize(msg, pipeline, "budget_exhausted", None,
                                          reason=f"budget: next call on '{tier.name}' would exceed the batch budget")
            reserved = reserve
            return self._attempt(msg, pipeline, tier, system, user, prompt_tokens, reserve)
        except StoreError:
            raise                       # the dispatcher requeues: the job is not lost with Redis
        except Exception as error:      # a bug must end the job with its reason, never strand it
            log.exception("job %s of batch %s: unexpected error", msg.job.id, msg.batch)
            return self._finalize(msg, self.settings.pipelines.get(msg.pipeline), "failed", None, release=reserved,
                                  reason=f"internal_error: {type(error).__name__}: {error}")

    def _attempt(self, msg: AttemptMessage, pipeline: Pipeline, tier: Tier, system: str, user: str,
                 prompt_tokens: int, reserve: int) -> str:
        """Call the tier, verify, and decide; the budget reservation is already held."""
        price = self.settings.price(tier)
        request = CompletionRequest(
            model=tier.model, system=system, user=user, max_tokens=tier.max_tokens,
            temperature=tier.temperature, timeout=tier.timeout_s, logprobs=self._wants_logprobs(pipeline, tier),
            job_id=msg.job.id,
        )
        request = self._with_samples(request, pipeline, tier)
        completion, retries, error = self._call(tier, request, prompt_tokens)
        if completion is None:
            attempt = Attempt(tier.name, tier.model, "", "error", Usage(), 0.0, 0.0, error=error)
            return self._after_error(msg, pipeline, tier, attempt, reserve, retries)

        cost = cost_nanos(price, completion.usage, tier.batch_pricing)
        attempt = Attempt(tier.name, completion.model or tier.model, completion.text, completion.finish_reason,
                          completion.usage, to_usd(cost), completion.latency_ms)
        attempt = self._verify(msg, pipeline, tier, attempt, completion, request)
        verify_cost = sum(round(v.cost_usd * 1e9) for v in attempt.verdicts)
        cost += verify_cost
        attempt = replace(attempt, cost_usd=to_usd(cost))

        next_tier = pipeline.next_tier(msg.tier)
        if attempt.passed:
            outcome, status = "accepted", "accepted"
        elif next_tier is not None:
            outcome, status = "escalated", None
        elif pipeline.on_last_failure == "accept_flagged":
            outcome, status = "flagged", "accepted_unverified"
        else:
            outcome, status = "failed", "failed"
        counters = attempt_counters(attempt, cost, retries, outcome)
        if status is None:
            # Send before recording: a crash in between redelivers this message (a duplicate next-tier
            # message, which finalize-once absorbs) instead of losing the job.
            self.dispatcher.send(msg.escalated(attempt))
            recorded = self.store.finish_attempt(msg.batch, msg.pipeline, msg.job.id, tier_index=msg.tier,
                                                 release_nanos=reserve, cost_nanos=cost, final=False, counters=counters)
            return outcome if recorded else "duplicate"
        reason = "" if status == "accepted" else _failed_reason(attempt)
        return self._finalize(msg, pipeline, status, attempt, reason=reason, release=reserve, cost=cost,
                              counters=counters)

    def _after_error(self, msg: AttemptMessage, pipeline: Pipeline, tier: Tier, attempt: Attempt,
                     reserve: int, retries: int) -> str:
        next_tier = pipeline.next_tier(msg.tier)
        bigger = next_tier is not None and self.settings.tiers[next_tier].context_window > tier.context_window
        if attempt.error.startswith(ContextTooLong.kind) and bigger:
            counters = attempt_counters(attempt, 0, retries, "escalated")
            self.dispatcher.send(msg.escalated(attempt))
            recorded = self.store.finish_attempt(msg.batch, msg.pipeline, msg.job.id, tier_index=msg.tier,
                                                 release_nanos=reserve, cost_nanos=0, final=False, counters=counters)
            return "escalated" if recorded else "duplicate"
        counters = attempt_counters(attempt, 0, retries, "failed")
        return self._finalize(msg, pipeline, "failed", attempt, reason=attempt.error, release=reserve, cost=0,
                              counters=counters)

    def _finalize(self, msg: AttemptMessage, pipeline: Pipeline | None, status: str, attempt: Attempt | None, *,
                  reason: str, release: int = 0, cost: int = 0, counters: list[tuple[str, int]] | None = None) -> str:
        attempts = msg.attempts + ([attempt] if attempt is not None else [])
        answer = next((a for a in reversed(attempts) if a.error is None), None)
        counterfactual = self._counterfactual(pipeline, answer)
        final_tier = answer.tier if answer is not None else (attempt.tier if attempt is not None else "-")
        record: dict[str, Any] = {
            "id": msg.job.id,
            "batch": msg.batch,
            "status": status,
            "output": answer.text if answer is not None else None,
            "parsed": answer.parsed if answer is not None else None,
            "tier": final_tier,
            "model": answer.model if answer is not None else None,
            "cost_usd": to_usd(sum(round(a.cost_usd * 1e9) for a in attempts)),
            "attempts": [a.to_dict() for a in attempts],
        }
        if reason:
            record["reason"] = reason
        all_counters = (counters or []) + final_counters(status, final_tier, counterfactual)
        recorded = self.store.finish_attempt(
            msg.batch, msg.pipeline, msg.job.id, tier_index=msg.tier if attempt is not None else -1,
            release_nanos=release, cost_nanos=cost, final=True, record=orjson.dumps(record), counters=all_counters,
        )
        return status if recorded else "duplicate"

    # -- pieces ------------------------------------------------------------------------

    def _call(self, tier: Tier, request: CompletionRequest, prompt_tokens: int) -> tuple[Completion | None, int, str]:
        """Call the tier with retries; return (completion, retries, "") or (None, retries, error reason)."""
        provider = self.providers.get(tier.name)

        def once() -> Completion:
            reserved = prompt_tokens + request.max_tokens * request.n
            lease = self.limiter.acquire(tier, reserved)
            used = reserved     # a failed call keeps its reservation: providers count failed requests too
            try:
                completion = provider.complete(request)
                used = _rate_limit_tokens(provider, request, completion.usage)
            except ProviderError as error:
                if getattr(error, "retry_after", None) is not None or error.status == 429:
                    self.limiter.cool_down(tier, getattr(error, "retry_after", None) or 1.0)
                raise
            finally:
                self.limiter.settle(tier, lease, used)
            self.limiter.observe(tier, completion.rate_limit)   # slow down before the provider says 429
            return completion

        def on_retry(error: Retryable, delay: float) -> None:
            log.info("tier %s: %s, retrying in %.2fs", tier.name, error.kind, delay)

        try:
            completion, retries = call_with_retries(once, self.retry_policy, self.sleep, self._rng, on_retry)
            return completion, retries, ""
        except Retryable as error:
            return None, self.retry_policy.max_retries, f"{error.kind}: retries exhausted: {error.provider_message}"
        except ProviderError as error:
            return None, 0, f"{error.kind}: {error.provider_message}"

    def _verify(self, msg: AttemptMessage, pipeline: Pipeline, tier: Tier, attempt: Attempt,
                completion: Completion, request: CompletionRequest) -> Attempt:
        """Run the tier's chain; model-calling verifiers get `ctx.call`, priced and limited like any call."""
        ctx = VerifyContext(completion=completion, output_format=pipeline.output, labels=pipeline.labels,
                            config_dir=self.settings.config_dir, request=request,
                            call=VerifierCalls(self.settings, self.providers, tier, self._call))
        verdicts = self._chains[(pipeline.name, tier.name)].run(msg.job, attempt, ctx)
        text = next((v.output for v in verdicts if v.output is not None), attempt.text)
        parsed = parse_output(text, pipeline.output, pipeline.labels)
        return replace(attempt, text=text, verdicts=tuple(verdicts), parsed=parsed)

    def _wants_logprobs(self, pipeline: Pipeline, tier: Tier) -> bool:
        return any(s.get("name") == "logprob" for s in pipeline.verifier_specs(tier.name))

    def _with_samples(self, request: CompletionRequest, pipeline: Pipeline, tier: Tier) -> CompletionRequest:
        """A tier checked by self-consistency answers with its samples: n choices at the sampling temperature."""
        spec = next((s for s in pipeline.verifier_specs(tier.name) if s.get("name") == "self_consistency"), None)
        if spec is None:
            return request
        return replace(request, n=int(spec.get("samples", SAMPLES_DEFAULT)),
                       temperature=float(spec.get("temperature", TEMPERATURE_DEFAULT)))

    def _counterfactual(self, pipeline: Pipeline | None, answer: Attempt | None) -> int:
        """What this job would have cost sent straight to the last tier: its prompt and answer length there."""
        if answer is None or pipeline is None:
            return 0
        last = self.settings.tiers[pipeline.ladder[-1]]
        if answer.tier == last.name:
            return round(answer.cost_usd * 1e9)
        usage = Usage(input_tokens=answer.usage.prompt_tokens, output_tokens=answer.usage.output_tokens)
        return cost_nanos(self.settings.price(last), usage, last.batch_pricing)


def _rate_limit_tokens(provider: Any, request: CompletionRequest, usage: Usage) -> int:
    """What the provider counts against its tokens-per-minute limit for a call it answered."""
    if getattr(provider, "tpm_counts_max_tokens", False):
        return usage.prompt_tokens + request.max_tokens * request.n
    return usage.prompt_tokens + usage.output_tokens


def _failed_reason(attempt: Attempt) -> str:
    failed = next((v for v in attempt.verdicts if not v.passed), None)
    return f"{failed.verifier}: {failed.reason}" if failed is not None else "rejected"
