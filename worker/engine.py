"""The cascade decision for one job on one tier: lease -> attempt -> verify -> accept | escalate | finalize.

Plain Python: no Celery. A dispatcher (Celery or local threads) delivers job references to
`Engine.handle`, and takes the escalations it publishes. The job's payload lives in the store; a step is
leased to one delivery, recorded once, and only then is the next tier's message published (a message
lost after that is the reconciler's to publish again, never a lost job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import orjson

from cascade.errors import ConfigError, ContextTooLong, PoisonMessage
from cascade.models import Attempt, Completion, CompletionRequest, Job, Status, Usage
from cascade.verifiers import VerifyContext, build_chain
from cascade.verifiers.chain import VerifierChain
from cascade.verifiers.parsing import parse_output
from cascade.worker.config.schema import Pipeline, Settings, Tier
from cascade.worker.counters import attempt_counters, final_counters
from cascade.worker.dispatch.base import Dispatcher
from cascade.worker.events import Observer, StepRecorded, notify
from cascade.worker.leases import LeaseKeeper, ShuttingDown
from cascade.worker.limiter import Limiter, NoLimiter
from cascade.worker.messages import JobPayload, JobRef
from cascade.worker.paid import PaidAnswers
from cascade.worker.pricing import cost_nanos, estimate_tokens, reserve_rates, to_usd
from cascade.worker.prompts import render
from cascade.worker.retrying import RetryPolicy
from cascade.worker.routing import load_routers, prompt_text, routed_attempt, routed_counters
from cascade.worker.runtime import ProviderPool
from cascade.worker.store import JobStore, Lease, LeaseCode, StoreError, SweepStore, pack_counters
from cascade.worker.store_retry import StoreRefused, StoreRetry
from cascade.worker.tier_call import TierCaller, TierHealth
from cascade.worker.verifier_calls import VerifierCalls

log = logging.getLogger("cascade.engine")

ROOM_POLL_S = 0.2           # how often an escalation waiting for room on the next queue looks again
ROOM_LOG_S = 30.0           # how often it says so


class Outcome(StrEnum):
    """What one delivery of a job message did."""

    ACCEPTED = "accepted"                   # the answer passed: the job is final
    ESCALATED = "escalated"                 # rejected: the job went on to the next tier
    FLAGGED = "flagged"                     # the last tier was rejected and kept (accepted_unverified)
    FAILED = "failed"                       # the job ended without a usable answer
    BUDGET_EXHAUSTED = "budget_exhausted"   # the next call did not fit the batch budget
    CANCELLED = "cancelled"                 # the batch was cancelled
    DUPLICATE = "duplicate"                 # a redelivery of work already recorded or held: nothing counted
    RELEASED = "released"                   # the worker is stopping: the job goes back on its queue
    DEAD_LETTERED = "dead_lettered"         # Redis refused to record it: out of circulation, its answer kept
    PARKED = "parked"                       # its request waits in a provider batch (a batch-mode tier)


#: the outcome of a delivery that finalized the job with this status
FINAL_OUTCOME = {Status.ACCEPTED: Outcome.ACCEPTED, Status.ACCEPTED_UNVERIFIED: Outcome.FLAGGED,
                 Status.FAILED: Outcome.FAILED, Status.BUDGET_EXHAUSTED: Outcome.BUDGET_EXHAUSTED,
                 Status.CANCELLED: Outcome.CANCELLED}
#: statuses `cascade retry` can run again: the job's payload is kept when it ends so
RETRYABLE = (Status.FAILED, Status.BUDGET_EXHAUSTED, Status.CANCELLED)


@dataclass
class Step:
    """One delivery of one job at one tier, as the engine works on it."""

    ref: JobRef
    pipeline: Pipeline
    tier: Tier
    lease: Lease
    payload: JobPayload
    paid_nanos: int = 0         # what has been spent on this delivery's calls so far


class Engine:
    """Runs attempts; one per worker process, shared by its threads."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        providers: ProviderPool,
        dispatcher: Dispatcher,
        limiter: Limiter | None = None,
        *,
        keeper: LeaseKeeper | None = None,
        sweeps: SweepStore | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.jobs = jobs
        self.sweeps = sweeps
        self.providers = providers
        self.dispatcher = dispatcher
        self.keeper = keeper or LeaseKeeper(None, "local", lease_s=settings.engine.lease_s)
        self.sleep = sleep or self.keeper.sleep
        self.store = StoreRetry(self.sleep, settings.engine.store_retries)
        self.caller = TierCaller(providers, limiter or NoLimiter(), RetryPolicy.from_config(settings.engine),
                                 self.sleep, TierHealth(sweeps, self.sleep, settings.embedded), clock)
        self._chains: dict[tuple[str, str], VerifierChain] = {
            (pipeline.name, tier): build_chain(pipeline.verifier_specs(tier), settings.config_dir,
                                               f"{pipeline.source}: verifiers.{tier}")
            for pipeline in settings.pipelines.values() for tier in pipeline.ladder
        }
        self._routers = load_routers(settings.config_dir, settings.pipelines.values())   # pre-routing, if fitted
        self.paid = PaidAnswers(jobs)
        self._room_checked: dict[str, float] = {}
        self.observers: list[Observer] = []     # told of each recorded step (metrics, shadow sampling)
        self.batching: dict[str, Any] = {}     # batch-mode tier name -> its BatchRunner (worker/batching.py)

    # -- a delivery ------------------------------------------------------------------------

    def handle(self, ref: JobRef) -> Outcome:
        """Process one delivery of a job message; PoisonMessage when it names no job of ours."""
        pipeline, tier = self._resolve(ref)
        lease = self._lease(ref, pipeline, tier)
        if lease.code is LeaseCode.UNKNOWN:
            raise PoisonMessage(f"job '{ref.job_id}' is not registered in batch '{ref.batch}'")
        if lease.code in (LeaseCode.DONE, LeaseCode.STALE, LeaseCode.HELD):
            return Outcome.DUPLICATE
        self.keeper.hold(ref.batch, ref.job_id, lease.token)
        step = Step(ref, pipeline, tier, lease, _payload(ref, lease))
        return self._guarded(step, lambda: self._run(step))

    def _lease(self, ref: JobRef, pipeline: Pipeline, tier: Tier) -> Lease:
        token = self.keeper.new_token()
        per_token, per_call = reserve_rates(self.settings.price(tier), tier, self._request_n(pipeline, tier))
        return self.store(f"lease {ref.label}", lambda: self.jobs.take_lease(
            ref.batch, ref.job_id, ref.tier_index, tier.name, ref.seq, token, lease_ms=self.keeper.lease_ms,
            reserve_per_token=per_token, reserve_per_call=per_call, max_deliveries=self.settings.engine.max_deliveries))

    def _guarded(self, step: Step, work: Callable[[], Outcome]) -> Outcome:
        """Run `work` on a leased step: a stop gives the job back, a store refusal dead-letters it, a bug fails it
        with its reason (never strands it). The lease is dropped after, unless the step is parked."""
        ref, outcome = step.ref, None
        try:
            if not step.lease.payload:
                raise ValueError("the job's payload is missing from the store")
            outcome = work()
            return outcome
        except ShuttingDown:
            self._release(step)
            return Outcome.RELEASED
        except StoreRefused as error:
            return self._dead_letter(step, str(error))
        except Exception as error:      # a bug must end the job with its reason, never strand it
            log.exception("job %s: unexpected error", ref.label)
            return self._finalize(step, Status.FAILED, None, reason=f"internal_error: {type(error).__name__}: {error}",
                                  cost=step.paid_nanos, counters=[("cost", step.paid_nanos),
                                                                  (f"cost:{step.tier.name}", step.paid_nanos)])
        finally:
            if outcome is not Outcome.PARKED:
                self.keeper.drop(ref.batch, ref.job_id)

    def _resolve(self, ref: JobRef) -> tuple[Pipeline, Tier]:
        try:
            pipeline = self.settings.pipeline(ref.pipeline)
        except ConfigError:
            raise PoisonMessage(f"unknown pipeline '{ref.pipeline}' (job {ref.label})") from None
        if ref.tier_index >= len(pipeline.ladder):
            raise PoisonMessage(f"tier index {ref.tier_index} is past the end of pipeline '{pipeline.name}' "
                                f"({len(pipeline.ladder)} tiers; job {ref.label})")
        return pipeline, self.settings.tiers[pipeline.ladder[ref.tier_index]]

    def _run(self, step: Step) -> Outcome:
        code = step.lease.code
        if code is LeaseCode.CANCELLED:
            return self._finalize(step, Status.CANCELLED, None, reason="cancelled: the batch was cancelled")
        if code is LeaseCode.NO_BUDGET:
            return self._finalize(step, Status.BUDGET_EXHAUSTED, None,
                                  reason=f"budget: next call on '{step.tier.name}' would exceed the batch budget")
        if code is LeaseCode.POISON:
            reason = (f"poison: delivered {step.lease.deliveries - 1} times on '{step.tier.name}' without being "
                      "recorded (a worker died or Redis refused each time)")
            self._log_dead_letter(step, reason)
            return self._finalize(step, Status.FAILED, None, reason=reason)
        return self._route_past(step) or self._attempt(step)

    def _route_past(self, step: Step) -> Outcome | None:
        """Escalate without a call (cost 0) when the pipeline's router predicts this tier would not accept."""
        router = self._routers.get(step.pipeline.name)
        if router is None or step.pipeline.next_tier(step.ref.tier_index) is None:
            return None
        skip = router.skips(step.tier.name, prompt_text(*render(step.pipeline.prompt, step.payload.job.fields)))
        if skip is None:
            return None
        attempt = routed_attempt(step.tier.name, step.tier.model, *skip)
        return self._escalate(step, attempt, 0, routed_counters(step.tier.name))

    # -- the attempt -----------------------------------------------------------------------

    def _request_n(self, pipeline: Pipeline, tier: Tier) -> int:
        chain = self._chains[(pipeline.name, tier.name)]
        return (chain.sampling or (1, 0.0))[0]

    def _request(self, step: Step, system: str, user: str) -> CompletionRequest:
        """The tier's call for this job, shaped by its checks: logprobs for `logprob`, n samples for
        `self_consistency` (at its sampling temperature)."""
        chain = self._chains[(step.pipeline.name, step.tier.name)]
        n, temperature = chain.sampling or (1, step.tier.temperature)
        return CompletionRequest(
            model=step.tier.model, system=system, user=user, max_tokens=step.tier.max_tokens, temperature=temperature,
            n=n, timeout=step.tier.timeout_s, logprobs=chain.wants_logprobs, job_id=step.ref.job_id)

    def _attempt(self, step: Step) -> Outcome:
        """Call the tier (or take the answer an earlier delivery paid for, or park the job in a provider batch),
        verify, and decide."""
        tier = step.tier
        request = self.request_for(step)
        paid = self.paid.get(_key(step), step.lease.paid)
        if paid is not None:
            return self._conclude(step, request, paid, 0, "", Usage())
        if tier.batched:
            return self.batching[tier.name].park(step, request)
        prompt_tokens = estimate_tokens(request.system) + estimate_tokens(request.user) if tier.tpm else 0
        result = self.caller.call(tier, request, prompt_tokens)
        return self._conclude(step, request, result.completion, result.retries, result.error, result.spent)

    def request_for(self, step: Step) -> CompletionRequest:
        """The tier's call for a leased step, rendered from the job's fields."""
        system, user = render(step.pipeline.prompt, step.payload.job.fields)
        return self._request(step, system, user)

    def _conclude(self, step: Step, request: CompletionRequest, completion: Completion | None, retries: int,
                  error: str, spent: Usage) -> Outcome:
        """Price the answer (or the failed call), verify it, and accept, escalate or finalize the job."""
        tier, price = step.tier, self.settings.price(step.tier)
        if completion is None:
            cost = cost_nanos(price, spent, tier.batched)
            step.paid_nanos = cost
            attempt = Attempt(tier.name, tier.model, "", "error", spent, to_usd(cost), 0.0, error=error)
            return self._after_error(step, attempt, cost, retries)

        cost = cost_nanos(price, completion.usage, tier.batched)
        step.paid_nanos = cost
        self.paid.remember(_key(step), completion)
        attempt = Attempt(tier.name, completion.model or tier.model, completion.text, completion.finish_reason,
                          completion.usage, to_usd(cost), completion.latency_ms)
        attempt = self._verify(step, attempt, completion, request)
        cost += sum(round(v.cost_usd * 1e9) for v in attempt.verdicts)
        step.paid_nanos = cost
        attempt = replace(attempt, cost_usd=to_usd(cost))

        next_tier = step.pipeline.next_tier(step.ref.tier_index)
        if attempt.passed:
            outcome, status = Outcome.ACCEPTED, Status.ACCEPTED
        elif next_tier is not None:
            outcome, status = Outcome.ESCALATED, None
        elif step.pipeline.on_last_failure == "accept_flagged":
            outcome, status = Outcome.FLAGGED, Status.ACCEPTED_UNVERIFIED
        else:
            outcome, status = Outcome.FAILED, Status.FAILED
        counters = attempt_counters(attempt, cost, retries, outcome)
        if status is None:
            return self._escalate(step, attempt, cost, counters)
        reason = "" if status is Status.ACCEPTED else _failed_reason(attempt)
        return self._finalize(step, status, attempt, reason=reason, cost=cost, counters=counters)

    # -- batch-mode tiers: the batch runner hands parked steps back ---------------------------

    def apply_batched(self, step: Step, request: CompletionRequest, completion: Completion | None,
                      error: str = "") -> Outcome:
        """What a provider batch returned for a parked step: its answer, or (None, error) for a line that failed
        for good. The same verify-and-record path as a live answer, recorded once."""
        return self._guarded(step, lambda: self._conclude(step, request, completion, 0, error, Usage()))

    def cancel_parked(self, step: Step) -> Outcome:
        """End a parked step whose batch was cancelled (its line never ran, or was cancelled by the provider)."""
        return self._guarded(step, lambda: self._finalize(step, Status.CANCELLED, None,
                                                          reason="cancelled: the batch was cancelled"))

    def release_parked(self, step: Step) -> None:
        """Give a parked step back (the worker stops): its message goes back on the queue, and the worker that
        takes it finds the provider batch that holds its request."""
        self._release(step)
        self.keeper.drop(step.ref.batch, step.ref.job_id)

    def take_parked(self, ref: JobRef) -> Step | LeaseCode:
        """Lease a job parked in a provider batch whose results are back (a restarted worker's own jobs): the
        step, or the code that says why not (HELD: another worker holds it; DONE / STALE: already recorded)."""
        pipeline, tier = self._resolve(ref)
        lease = self._lease(ref, pipeline, tier)
        if lease.code in (LeaseCode.DONE, LeaseCode.STALE, LeaseCode.HELD, LeaseCode.UNKNOWN):
            return lease.code
        self.keeper.hold(ref.batch, ref.job_id, lease.token)
        step = Step(ref, pipeline, tier, lease, _payload(ref, lease))
        if lease.code is not LeaseCode.GO:
            self._guarded(step, lambda: self._run(step))     # cancelled, no budget, poison: finalized with the reason
            return LeaseCode.DONE
        return step

    def _after_error(self, step: Step, attempt: Attempt, cost: int, retries: int) -> Outcome:
        next_tier = step.pipeline.next_tier(step.ref.tier_index)
        bigger = next_tier is not None and self.settings.tiers[next_tier].context_window > step.tier.context_window
        if attempt.error.startswith(ContextTooLong.kind) and bigger:
            return self._escalate(step, attempt, cost, attempt_counters(attempt, cost, retries, Outcome.ESCALATED))
        counters = attempt_counters(attempt, cost, retries, Outcome.FAILED)
        return self._finalize(step, Status.FAILED, attempt, reason=attempt.error, cost=cost, counters=counters)

    def _verify(self, step: Step, attempt: Attempt, completion: Completion, request: CompletionRequest) -> Attempt:
        """Run the tier's chain; model-calling verifiers get `ctx.call`, priced and limited like any call."""
        calls = VerifierCalls(self.settings, self.caller, step.tier)
        ctx = VerifyContext(completion=completion, output_format=step.pipeline.output, labels=step.pipeline.labels,
                            config_dir=self.settings.config_dir, request=request, call=calls)
        verdicts = self._chains[(step.pipeline.name, step.tier.name)].run(step.payload.job, attempt, ctx)
        if calls.stopping is not None:
            raise calls.stopping            # the worker is stopping: give the job back, do not judge it
        text = next((v.output for v in verdicts if v.output is not None), attempt.text)
        parsed = parse_output(text, step.pipeline.output, step.pipeline.labels)
        return replace(attempt, text=text, verdicts=tuple(verdicts), parsed=parsed)

    # -- recording -------------------------------------------------------------------------

    def _escalate(self, step: Step, attempt: Attempt, cost: int, counters: list[tuple[str, int]]) -> Outcome:
        """Record the attempt and move the job on, then publish its next message (after room is free)."""
        ref = step.ref
        next_tier = self.settings.tiers[step.pipeline.ladder[ref.tier_index + 1]]
        self._wait_for_room(next_tier)
        payload = step.payload.escalated(attempt).to_json()
        recorded = self.store(f"record {ref.label}", lambda: self.jobs.record_escalation(
            ref.batch, ref.pipeline, ref.job_id, step.lease.token, tier_index=ref.tier_index,
            next_tier=next_tier.name, cost_nanos=cost, payload=payload, counters=pack_counters(counters)))
        self.paid.forget(_key(step))
        if not recorded.counted:
            return Outcome.DUPLICATE
        if recorded.seq:
            self._publish(JobRef(ref.batch, ref.pipeline, ref.job_id, ref.tier_index + 1, recorded.seq))
        self._notify(step, Outcome.ESCALATED, attempt, cost, counters)
        return Outcome.ESCALATED

    def _publish(self, ref: JobRef) -> None:
        try:
            self.dispatcher.send(ref)
        except Exception as error:      # the broker is down: the job is recorded as queued; the reconciler publishes it
            log.warning("job %s: could not publish to its next tier (%s); the reconciler will", ref.label, error)

    def _finalize(self, step: Step, status: Status, attempt: Attempt | None, *, reason: str, cost: int = 0,
                  counters: list[tuple[str, int]] | None = None) -> Outcome:
        ref = step.ref
        attempts = step.payload.attempts + ([attempt] if attempt is not None else [])
        answer = next((a for a in reversed(attempts) if a.error is None), None)
        counterfactual = self._counterfactual(step.pipeline, answer)
        final_tier = answer.tier if answer is not None else (attempt.tier if attempt is not None else "-")
        record: dict[str, Any] = {
            "id": ref.job_id,
            "batch": ref.batch,
            "pipeline": ref.pipeline,
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
        if step.payload.retry_round:
            record["retry_round"] = step.payload.retry_round
        if step.pipeline.tags:
            fields = step.payload.job.fields
            record["tags"] = {tag: fields.get(tag) for tag in step.pipeline.tags}
        record["counterfactual_usd"] = to_usd(counterfactual)
        record["finished_at"] = round(time.time(), 3)
        all_counters = (counters or []) + final_counters(status, final_tier, counterfactual)
        keep = f"{status}|{ref.tier_index}|{final_tier}|{counterfactual}" if status in RETRYABLE else ""
        recorded = self.store(f"record {ref.label}", lambda: self.jobs.record_final(
            ref.batch, ref.pipeline, ref.job_id, step.lease.token, tier_index=ref.tier_index if attempt else -1,
            cost_nanos=cost, record=orjson.dumps(record), counters=pack_counters(all_counters), keep=keep))
        self.paid.forget(_key(step))
        if not recorded.counted:
            return Outcome.DUPLICATE
        self._notify(step, FINAL_OUTCOME[status], attempt, cost, counters or [], record)
        return FINAL_OUTCOME[status]

    def _notify(self, step: Step, outcome: Outcome, attempt: Attempt | None, cost: int,
                counters: list[tuple[str, int]], record: dict[str, Any] | None = None) -> None:
        if self.observers:
            retries = sum(v for k, v in counters if k.startswith("retries:"))
            notify(self.observers, StepRecorded(
                step.ref.batch, step.pipeline.name, step.ref.job_id, step.tier.name, step.ref.tier_index,
                str(outcome), attempt, cost, retries, record, step.payload.job.fields))

    def _release(self, step: Step) -> None:
        """Give the job back (the worker is stopping); the task requeues its message."""
        ref = step.ref
        try:
            self.jobs.release(ref.batch, ref.job_id, step.tier.name, step.lease.token, ref.seq)
        except StoreError as error:     # Redis is gone too: the lease expires and the reconciler takes over
            log.warning("job %s: could not give it back (%s); its lease will expire", ref.label, error)

    def _dead_letter(self, step: Step, reason: str) -> Outcome:
        """Redis refused to record this job: keep its paid answer, take it out of circulation, say so once.
        Its lease is not renewed any more: the reconciler offers it again later, and the kept answer is used."""
        log.error("job %s: %s; dead-lettered (its paid answer is kept, no call will be paid twice)",
                  step.ref.label, reason)
        self.paid.keep(_key(step))      # for a delivery to another worker; this process holds it as well
        self._log_dead_letter(step, reason)
        return Outcome.DEAD_LETTERED

    def _log_dead_letter(self, step: Step, reason: str) -> None:
        ref = step.ref
        self.dead_letter_message({"kind": "job", "batch": ref.batch, "job": ref.job_id, "tier": step.tier.name,
                                  "reason": reason})

    def dead_letter_message(self, entry: dict[str, Any]) -> None:
        """Add an entry to the dead-letter list (best effort: when Redis refuses, the log line is the record)."""
        if self.sweeps is None:
            return
        try:
            self.sweeps.dead_letter(entry)
        except StoreError as error:
            log.error("could not dead-letter %s (%s)", orjson.dumps(entry)[:500].decode(), error)

    def keep_paid_answers(self) -> None:
        """Write the paid answers still unrecorded to Redis (the worker stops)."""
        self.paid.keep_all()

    # -- backpressure ------------------------------------------------------------------------

    def _wait_for_room(self, tier: Tier) -> None:
        """Hold an escalation while the next tier's queue is at the high-water mark (its lease stays renewed).
        Tiers only ever wait on later tiers, and the last tier never escalates, so this cannot deadlock."""
        high = self.settings.producer.high_water
        now = time.monotonic()
        if now - self._room_checked.get(tier.name, -1.0) < 1.0:
            return          # looked less than a second ago and there was room: one LLEN per second per tier
        waited_since, said = now, now
        while self.dispatcher.backlog(tier.name) >= high:
            if time.monotonic() - said > ROOM_LOG_S:
                said = time.monotonic()
                log.warning("escalations to %s wait: its queue holds %d messages or more for %.0f s (is a %s "
                            "worker running?)", tier.queue_name, high, said - waited_since, tier.name)
            self.sleep(ROOM_POLL_S)
        self._room_checked[tier.name] = time.monotonic()

    def _counterfactual(self, pipeline: Pipeline | None, answer: Attempt | None) -> int:
        """What this job would have cost sent straight to the last tier: its prompt and answer length there."""
        if answer is None or pipeline is None:
            return 0
        last = self.settings.tiers[pipeline.ladder[-1]]
        if answer.tier == last.name:    # its own call priced live (a batch-mode last tier paid half), its checks
            return cost_nanos(self.settings.price(last), answer.usage) + sum(round(v.cost_usd * 1e9)
                                                                             for v in answer.verdicts)
        # one answer's tokens: a tier that sampled n answers in its call produced n times what the last tier would
        n = self._request_n(pipeline, self.settings.tiers[answer.tier]) if (pipeline.name, answer.tier) in self._chains else 1
        usage = Usage(input_tokens=answer.usage.prompt_tokens, output_tokens=round(answer.usage.output_tokens / n))
        return cost_nanos(self.settings.price(last), usage)   # the last tier live, whatever its mode


def _key(step: Step) -> tuple[str, str, int]:
    return step.ref.batch, step.ref.job_id, step.ref.tier_index


def _payload(ref: JobRef, lease: Lease) -> JobPayload:
    """The leased job's payload; an unreadable one becomes an empty payload, and the job fails with the reason."""
    try:
        return JobPayload.from_json(ref.job_id, lease.payload)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return JobPayload(Job(ref.job_id, {}, 0))


def _failed_reason(attempt: Attempt) -> str:
    failed = next((v for v in attempt.verdicts if not v.passed), None)
    return f"{failed.verifier}: {failed.reason}" if failed is not None else "rejected"
