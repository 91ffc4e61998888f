"""The cascade decision for one job on one tier: attempt -> verify -> accept | escalate | finalize.

Plain Python: no Celery. A dispatcher (Celery or local threads) delivers messages to
`Engine.handle` and takes the escalations it sends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from typing import Any

import orjson

from cascade.errors import ContextTooLong
from cascade.models import Attempt, Completion, CompletionRequest, Status, Usage
from cascade.verifiers import VerifyContext, build_chain
from cascade.verifiers.chain import VerifierChain
from cascade.verifiers.parsing import parse_output
from cascade.worker.config.schema import Pipeline, Settings, Tier
from cascade.worker.counters import attempt_counters, final_counters
from cascade.worker.dispatch.base import Dispatcher
from cascade.worker.limiter import Limiter, NoLimiter
from cascade.worker.messages import AttemptMessage
from cascade.worker.pricing import cost_nanos, estimate_tokens, reserve_nanos, to_usd
from cascade.worker.prompts import render
from cascade.worker.retrying import RetryPolicy
from cascade.worker.runtime import ProviderPool
from cascade.worker.store import BatchStore, Begin, StoreError
from cascade.worker.tier_call import TierCaller
from cascade.worker.verifier_calls import VerifierCalls

log = logging.getLogger("cascade.engine")


class Outcome(StrEnum):
    """What one delivery of an attempt message did."""

    ACCEPTED = "accepted"                   # the answer passed: the job is final
    ESCALATED = "escalated"                 # rejected: the job went on to the next tier
    FLAGGED = "flagged"                     # the last tier was rejected and kept (accepted_unverified)
    FAILED = "failed"                       # the job ended without a usable answer
    BUDGET_EXHAUSTED = "budget_exhausted"   # the next call did not fit the batch budget
    DUPLICATE = "duplicate"                 # a redelivery of work already recorded: nothing counted


#: the outcome of a delivery that finalized the job with this status
FINAL_OUTCOME = {Status.ACCEPTED: Outcome.ACCEPTED, Status.ACCEPTED_UNVERIFIED: Outcome.FLAGGED,
                 Status.FAILED: Outcome.FAILED, Status.BUDGET_EXHAUSTED: Outcome.BUDGET_EXHAUSTED}


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
        self.caller = TierCaller(providers, limiter or NoLimiter(), RetryPolicy.from_config(settings.engine), sleep)
        self._chains: dict[tuple[str, str], VerifierChain] = {
            (pipeline.name, tier): build_chain(pipeline.verifier_specs(tier), settings.config_dir,
                                               f"{pipeline.source}: verifiers.{tier}")
            for pipeline in settings.pipelines.values() for tier in pipeline.ladder
        }

    # -- the decision ------------------------------------------------------------------

    def handle(self, msg: AttemptMessage, redelivered: bool = True) -> Outcome:
        """Process one message; return what happened (accepted, escalated, failed, duplicate, ...).

        `redelivered=False` says the broker delivers this message for the first time. Then, in a batch
        without a budget, the pre-check round trip is skipped. A duplicate is still possible after a
        crash (between publishing an escalation and recording it, or a producer's between publishing
        and confirming a chunk, then a resubmission); `finish_attempt` counts it once and its call's
        cost goes to cost_duplicate.
        """
        reserved = 0
        try:
            pipeline = self.settings.pipeline(msg.pipeline)
            tier = self.settings.tiers[pipeline.ladder[msg.tier_index]]
            system, user = render(pipeline.prompt, msg.job.fields)
            # the estimate only feeds reservations: the batch budget and the tier's tokens-per-minute limit
            prompt_tokens = estimate_tokens(system) + estimate_tokens(user) if msg.budgeted or tier.tpm else 0
            request = self._request(msg, pipeline, tier, system, user)
            reserve = reserve_nanos(self.settings.price(tier), tier, prompt_tokens, request.n) if msg.budgeted else 0
            if msg.budgeted or redelivered:
                begin = self.store.begin_attempt(msg.batch, msg.job.id, msg.tier_index, reserve)
                if begin in (Begin.DONE, Begin.COUNTED):
                    return Outcome.DUPLICATE
                if begin is Begin.NO_BUDGET:
                    return self._finalize(msg, pipeline, Status.BUDGET_EXHAUSTED, None,
                                          reason=f"budget: next call on '{tier.name}' would exceed the batch budget")
            reserved = reserve
            return self._attempt(msg, pipeline, tier, request, prompt_tokens, reserve)
        except StoreError:
            raise                       # the dispatcher requeues: the job is not lost with Redis
        except Exception as error:      # a bug must end the job with its reason, never strand it
            log.exception("job %s of batch %s: unexpected error", msg.job.id, msg.batch)
            return self._finalize(msg, self.settings.pipelines.get(msg.pipeline), Status.FAILED, None, release=reserved,
                                  reason=f"internal_error: {type(error).__name__}: {error}")

    def _request(self, msg: AttemptMessage, pipeline: Pipeline, tier: Tier, system: str, user: str
                 ) -> CompletionRequest:
        """The tier's call for this job, shaped by its checks: logprobs for `logprob`, n samples for
        `self_consistency` (at its sampling temperature)."""
        chain = self._chains[(pipeline.name, tier.name)]
        n, temperature = chain.sampling or (1, tier.temperature)
        return CompletionRequest(
            model=tier.model, system=system, user=user, max_tokens=tier.max_tokens, temperature=temperature, n=n,
            timeout=tier.timeout_s, logprobs=chain.wants_logprobs, job_id=msg.job.id,
        )

    def _attempt(self, msg: AttemptMessage, pipeline: Pipeline, tier: Tier, request: CompletionRequest,
                 prompt_tokens: int, reserve: int) -> Outcome:
        """Call the tier, verify, and decide; the budget reservation is already held."""
        price = self.settings.price(tier)
        result = self.caller.call(tier, request, prompt_tokens)
        completion, retries, error = result.completion, result.retries, result.error
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

        next_tier = pipeline.next_tier(msg.tier_index)
        if attempt.passed:
            outcome, status = Outcome.ACCEPTED, Status.ACCEPTED
        elif next_tier is not None:
            outcome, status = Outcome.ESCALATED, None
        elif pipeline.on_last_failure == "accept_flagged":
            outcome, status = Outcome.FLAGGED, Status.ACCEPTED_UNVERIFIED
        else:
            outcome, status = Outcome.FAILED, Status.FAILED
        counters = attempt_counters(attempt, cost, retries, outcome)
        if status is None:
            # Send before recording: a crash in between redelivers this message (a duplicate next-tier
            # message, which finalize-once absorbs) instead of losing the job.
            self.dispatcher.send(msg.escalated(attempt))
            recorded = self.store.finish_attempt(msg.batch, msg.pipeline, msg.job.id, tier_index=msg.tier_index,
                                                 release_nanos=reserve, cost_nanos=cost, final=False, counters=counters)
            return outcome if recorded else Outcome.DUPLICATE
        reason = "" if status is Status.ACCEPTED else _failed_reason(attempt)
        return self._finalize(msg, pipeline, status, attempt, reason=reason, release=reserve, cost=cost,
                              counters=counters)

    def _after_error(self, msg: AttemptMessage, pipeline: Pipeline, tier: Tier, attempt: Attempt,
                     reserve: int, retries: int) -> Outcome:
        next_tier = pipeline.next_tier(msg.tier_index)
        bigger = next_tier is not None and self.settings.tiers[next_tier].context_window > tier.context_window
        if attempt.error.startswith(ContextTooLong.kind) and bigger:
            counters = attempt_counters(attempt, 0, retries, Outcome.ESCALATED)
            self.dispatcher.send(msg.escalated(attempt))
            recorded = self.store.finish_attempt(msg.batch, msg.pipeline, msg.job.id, tier_index=msg.tier_index,
                                                 release_nanos=reserve, cost_nanos=0, final=False, counters=counters)
            return Outcome.ESCALATED if recorded else Outcome.DUPLICATE
        counters = attempt_counters(attempt, 0, retries, Outcome.FAILED)
        return self._finalize(msg, pipeline, Status.FAILED, attempt, reason=attempt.error, release=reserve, cost=0,
                              counters=counters)

    def _finalize(self, msg: AttemptMessage, pipeline: Pipeline | None, status: Status, attempt: Attempt | None, *,
                  reason: str, release: int = 0, cost: int = 0, counters: list[tuple[str, int]] | None = None
                  ) -> Outcome:
        attempts = msg.attempts + ([attempt] if attempt is not None else [])
        answer = next((a for a in reversed(attempts) if a.error is None), None)
        counterfactual = self._counterfactual(pipeline, answer)
        final_tier = answer.tier if answer is not None else (attempt.tier if attempt is not None else "-")
        record: dict[str, Any] = {
            "id": msg.job.id,
            "batch": msg.batch,
            "status": str(status),
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
            msg.batch, msg.pipeline, msg.job.id, tier_index=msg.tier_index if attempt is not None else -1,
            release_nanos=release, cost_nanos=cost, final=True, record=orjson.dumps(record), counters=all_counters,
        )
        return FINAL_OUTCOME[status] if recorded else Outcome.DUPLICATE

    # -- pieces ------------------------------------------------------------------------

    def _verify(self, msg: AttemptMessage, pipeline: Pipeline, tier: Tier, attempt: Attempt,
                completion: Completion, request: CompletionRequest) -> Attempt:
        """Run the tier's chain; model-calling verifiers get `ctx.call`, priced and limited like any call."""
        calls = VerifierCalls(self.settings, self.caller, tier)
        ctx = VerifyContext(completion=completion, output_format=pipeline.output, labels=pipeline.labels,
                            config_dir=self.settings.config_dir, request=request, call=calls)
        verdicts = self._chains[(pipeline.name, tier.name)].run(msg.job, attempt, ctx)
        if calls.store_error is not None:
            raise calls.store_error         # Redis failed under a verifier's call: requeue, do not judge
        text = next((v.output for v in verdicts if v.output is not None), attempt.text)
        parsed = parse_output(text, pipeline.output, pipeline.labels)
        return replace(attempt, text=text, verdicts=tuple(verdicts), parsed=parsed)

    def _counterfactual(self, pipeline: Pipeline | None, answer: Attempt | None) -> int:
        """What this job would have cost sent straight to the last tier: its prompt and answer length there."""
        if answer is None or pipeline is None:
            return 0
        last = self.settings.tiers[pipeline.ladder[-1]]
        if answer.tier == last.name:
            return round(answer.cost_usd * 1e9)
        usage = Usage(input_tokens=answer.usage.prompt_tokens, output_tokens=answer.usage.output_tokens)
        return cost_nanos(self.settings.price(last), usage, last.batch_pricing)


def _failed_reason(attempt: Attempt) -> str:
    failed = next((v for v in attempt.verdicts if not v.passed), None)
    return f"{failed.verifier}: {failed.reason}" if failed is not None else "rejected"
