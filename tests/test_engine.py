"""Engine decisions: accept, escalate, flag, fail, retry, budget, redelivery; the stores over fakeredis with Lua."""

from __future__ import annotations

import fakeredis
import orjson
import pytest

from cascade.errors import ContextTooLong, Permanent, PoisonMessage, RateLimited, ServerError, TierUnusable
from cascade.models import Completion, Job, Usage
from cascade.worker.config import load_settings
from cascade.worker.engine import Engine
from cascade.worker.leases import LeaseKeeper, ShuttingDown
from cascade.worker.messages import JobPayload, JobRef
from cascade.worker.runtime import ProviderPool
from cascade.worker.store import BatchStore, JobStore, Registration, ResultStream, SweepStore, pack_counters
from tests.helpers import ScriptedProvider, copy_config

GOOD = '{"category": "billing", "priority": "low"}'
MALFORMED = '{"category": "billing", "priority": '
HEDGE = "I'm not sure, but it might be billing"
JOB = Job("j1", {"subject": "Refund", "body": "charged twice"}, 1)


class RecordingDispatcher:
    def __init__(self):
        self.sent: list[JobRef] = []

    def send(self, ref, first=False):
        self.sent.append(ref)

    def backlog(self, tier_name):
        return 0


class FakeClock:
    """Time that passes only when the engine sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self):
        return self.now


@pytest.fixture
def settings(tmp_path):
    path = copy_config(tmp_path, lambda t: t.replace("backoff_base_s = 0.5", "backoff_base_s = 0.01"))
    return load_settings(path, environ={})


class Harness:
    """An engine over fakeredis with scripted providers; one registered job, j1, of batch b1."""

    def __init__(self, settings, answers: dict, on_last_failure=None, budget_nanos=0):
        if on_last_failure:
            pipeline = settings.pipelines["ticket-triage"].model_copy(update={"on_last_failure": on_last_failure})
            settings = settings.model_copy(update={"pipelines": {"ticket-triage": pipeline}})
        self.settings = settings
        client = fakeredis.FakeRedis()
        self.store = BatchStore(client, "test")
        self.jobs = JobStore(client, "test")
        self.sweeps = SweepStore(client, "test")
        self.providers = {tier: ScriptedProvider(fn) for tier, fn in answers.items()}
        self.dispatcher = RecordingDispatcher()
        self.clock = FakeClock()
        self.keeper = LeaseKeeper(None, "test")
        self.engine = Engine(settings, self.jobs, ProviderPool(settings, self.providers), self.dispatcher,
                             keeper=self.keeper, sweeps=self.sweeps, sleep=self.clock.sleep, clock=self.clock)
        self.store.open_batch("b1", "ticket-triage", budget_nanos)
        self.seq = self.store.register_jobs("b1", 1, "cheap", [Registration("j1", 1, 40, JobPayload(JOB).to_json())])[0]
        self.store.mark_submitted("b1", 0)

    def at(self, tier: int, history=()) -> JobRef:
        """Move j1 to ladder position `tier` with these earlier attempts (as a worker's escalations would)."""
        ref = JobRef("b1", "ticket-triage", "j1", 0, self.seq)
        ladder = self.settings.pipelines["ticket-triage"].ladder
        for step in range(tier):
            token = f"setup{step}"
            self.jobs.take_lease("b1", "j1", step, ladder[step], ref.seq, token, lease_ms=15000,
                                 reserve_per_token=0.0, reserve_per_call=0, max_deliveries=10)
            payload = JobPayload(JOB, tuple(history[:step + 1])).to_json()
            recorded = self.jobs.record_escalation("b1", "ticket-triage", "j1", token, tier_index=step,
                                                   next_tier=ladder[step + 1], cost_nanos=0, payload=payload,
                                                   counters=pack_counters([]))
            ref = JobRef("b1", "ticket-triage", "j1", step + 1, recorded.seq)
        return ref

    def handle(self, tier: int = 0, history=()) -> str:
        return self.engine.handle(self.at(tier, history) if tier else JobRef("b1", "ticket-triage", "j1", 0, self.seq))

    def records(self):
        return [orjson.loads(r) for r in ResultStream(self.store.redis, "test").read_all()]

    def counters(self):
        return self.store.batch("b1").counters


def make_engine(settings, answers: dict, on_last_failure=None, budget_nanos=0) -> Harness:
    """answers: tier -> function(request, call_number) -> text | Completion | error."""
    return Harness(settings, answers, on_last_failure, budget_nanos)


CHEAP_ATTEMPT = {"tier": "cheap", "model": "gpt-4o-mini", "text": MALFORMED, "cost_usd": 0.00001,
                 "input_tokens": 100, "output_tokens": 10, "verdicts": []}


def test_valid_cheap_answer_is_accepted_at_the_first_tier(settings):
    h = make_engine(settings, {"cheap": lambda r, n: GOOD})
    assert h.handle() == "accepted"
    [rec] = h.records()
    assert rec["status"] == "accepted"
    assert rec["tier"] == "cheap" and rec["model"] == "gpt-4o-mini"
    assert rec["parsed"] == {"category": "billing", "priority": "low"}
    # 100 input tokens at $0.15/M + 10 output at $0.60/M
    assert rec["cost_usd"] == pytest.approx(0.000021)
    assert h.dispatcher.sent == []
    info = h.counters()
    assert info["done"] == 1 and info["status:accepted"] == 1 and info["final:cheap"] == 1
    assert info["cost"] == 21_000 and info.get("reserved", 0) == 0


def test_failed_verification_escalates_with_the_attempt_in_the_history(settings):
    h = make_engine(settings, {"cheap": lambda r, n: MALFORMED})
    assert h.handle() == "escalated"
    [sent] = h.dispatcher.sent
    assert (sent.tier_index, sent.job_id, sent.seq) == (1, "j1", 1)
    payload = JobPayload.from_json("j1", h.store.redis.hget(h.store.keys.payload("b1"), "j1"))
    [attempt] = payload.attempts
    assert attempt.tier == "cheap" and attempt.text == MALFORMED
    assert attempt.verdicts[-1].verifier == "json" and not attempt.verdicts[-1].passed
    assert h.records() == []
    info = h.counters()
    assert info["escalated:cheap"] == 1 and info["reject:cheap:json:invalid JSON"] == 1
    assert info.get("done", 0) == 0


def test_hedge_is_rejected_by_the_refusal_check(settings):
    h = make_engine(settings, {"cheap": lambda r, n: HEDGE})
    assert h.handle() == "escalated"
    assert any(k.startswith("reject:cheap:refusal:") for k in h.counters())


@pytest.mark.parametrize("policy, status, outcome", [("accept_flagged", "accepted_unverified", "flagged"),
                                                     ("fail", "failed", "failed")])
def test_failure_at_the_last_tier_follows_the_pipeline_policy(settings, policy, status, outcome):
    h = make_engine(settings, {"frontier": lambda r, n: HEDGE}, on_last_failure=policy)
    assert h.handle(tier=2, history=[CHEAP_ATTEMPT, {**CHEAP_ATTEMPT, "tier": "mid"}]) == outcome
    [rec] = h.records()
    assert rec["status"] == status
    assert rec["output"] == HEDGE and rec["tier"] == "frontier"
    assert [a["tier"] for a in rec["attempts"]] == ["cheap", "mid", "frontier"]
    assert rec["reason"].startswith("refusal: ")


def test_retryable_errors_retry_on_the_same_tier_then_succeed(settings):
    def flaky(request, n):
        return [RateLimited("slow down", retry_after=0.2), ServerError("boom", status=500)][n - 1] if n <= 2 else GOOD

    h = make_engine(settings, {"cheap": flaky})
    assert h.handle() == "accepted"
    assert len(h.providers["cheap"].calls) == 3
    assert len(h.clock.sleeps) == 2 and h.clock.sleeps[0] >= 0.2   # retry-after is a floor
    assert h.counters()["retries:cheap"] == 2


def test_a_transient_error_fails_a_job_only_after_the_horizon_with_a_reason_that_says_so(settings):
    engine = settings.engine.model_copy(update={"transient_horizon_s": 600.0})
    h = make_engine(settings.model_copy(update={"engine": engine}),
                    {"cheap": lambda r, n: ServerError("openai 503: down", status=503)})
    assert h.handle() == "failed"
    [rec] = h.records()
    assert rec["reason"].startswith("transient: server_error for ")
    assert rec["reason"].endswith(" s (the transient horizon): openai 503: down")
    assert h.clock.now >= 600.0                                     # it waited the horizon out
    assert len(h.providers["cheap"].calls) > settings.engine.max_retries + 1   # and kept trying
    assert h.counters()["error:cheap:transient"] == 1


def test_permanent_error_fails_without_retrying(settings):
    h = make_engine(settings, {"cheap": lambda r, n: Permanent("openai 400: bad request", status=400)})
    assert h.handle() == "failed"
    assert h.records()[0]["reason"] == "permanent: openai 400: bad request"
    assert len(h.providers["cheap"].calls) == 1


def test_a_bad_key_stops_the_tier_and_the_job_waits_instead_of_failing(settings):
    # Given a provider that says 401 until its key is fixed (a restarted worker clears the stop)
    def answer(request, n):
        if n == 1:
            return TierUnusable("openai 401: Incorrect API key provided", status=401)
        return GOOD

    h = make_engine(settings, {"cheap": answer})
    waits = []

    def sleep(seconds):
        waits.append(h.sweeps.tier_stopped("cheap"))
        h.sweeps.redis.delete(h.sweeps.keys.tier_status("cheap"))     # the operator restarts the worker

    h.engine.sleep = h.engine.caller.sleep = h.engine.caller.health.sleep = sleep
    # When the job runs
    assert h.handle() == "accepted"
    # Then the tier was stopped with the provider's words while the job waited, and the job did not fail
    assert waits == ["openai 401: Incorrect API key provided"]
    assert h.counters()["status:accepted"] == 1 and "status:failed" not in h.counters()


def test_a_worker_stopping_gives_a_waiting_job_back(settings):
    h = make_engine(settings, {"cheap": lambda r, n: ServerError("openai 503: down", status=503)})

    def stopping(seconds):
        raise ShuttingDown()

    h.engine.caller.sleep = stopping
    assert h.handle() == "released"
    assert h.records() == [] and h.counters().get("done", 0) == 0
    assert h.store.redis.zscore(h.store.keys.queued("cheap"), "b1\x1fj1") == h.seq    # waits on its queue again


def test_context_too_long_escalates_to_a_larger_window(settings):
    h = make_engine(settings, {"cheap": lambda r, n: ContextTooLong("too long", status=400)})
    assert h.handle() == "escalated"
    assert h.dispatcher.sent[0].tier_index == 1
    assert h.counters()["error:cheap:context_too_long"] == 1


def test_redelivered_message_is_a_no_op(settings):
    h = make_engine(settings, {"cheap": lambda r, n: GOOD})
    assert h.handle() == "accepted"
    assert h.handle() == "duplicate"
    assert len(h.records()) == 1 and len(h.providers["cheap"].calls) == 1
    assert h.counters()["done"] == 1


def test_redelivery_after_escalation_does_not_call_the_tier_again(settings):
    h = make_engine(settings, {"cheap": lambda r, n: MALFORMED})
    h.handle()
    assert h.handle() == "duplicate"
    assert len(h.dispatcher.sent) == 1 and len(h.providers["cheap"].calls) == 1


def test_budget_stops_escalation_and_keeps_the_best_answer(settings):
    h = make_engine(settings, {"mid": lambda r, n: GOOD}, budget_nanos=1000)   # $0.000001: no mid call fits
    hedge = {**CHEAP_ATTEMPT, "text": HEDGE, "cost_usd": 0.0}
    assert h.handle(tier=1, history=[hedge]) == "budget_exhausted"
    [rec] = h.records()
    assert rec["status"] == "budget_exhausted" and rec["output"] == HEDGE and rec["tier"] == "cheap"
    assert h.providers["mid"].calls == []
    assert h.counters().get("reserved", 0) == 0


def test_truncated_answer_escalates(settings):
    cut = Completion(text='{"category": "bil', usage=Usage(100, 128, 0), finish_reason="length",
                     model="gpt-4o-mini", latency_ms=5.0)
    h = make_engine(settings, {"cheap": lambda r, n: cut})
    assert h.handle() == "escalated"
    assert h.counters()["reject:cheap:truncation:truncated at max_tokens"] == 1


def test_counterfactual_prices_the_answer_on_the_last_tier(settings):
    h = make_engine(settings, {"cheap": lambda r, n: GOOD})
    h.handle()
    # 100 input + 10 output tokens on claude-sonnet-4-6 ($3 / $15 per M)
    assert h.counters()["counterfactual"] == 100 * 3000 + 10 * 15000


def test_a_bug_after_the_call_ends_the_job_with_its_reason_and_the_cost_paid(settings, monkeypatch):
    h = make_engine(settings, {"cheap": lambda r, n: GOOD}, budget_nanos=10**9)

    def broken(*args, **kwargs):
        raise KeyError("usage")

    monkeypatch.setattr(h.engine, "_verify", broken)
    assert h.handle() == "failed"
    [rec] = h.records()
    assert rec["reason"] == "internal_error: KeyError: 'usage'"
    info = h.counters()
    assert info["cost"] == 21_000 and info["cost:cheap"] == 21_000   # the call was paid: its cost is counted
    assert info["reserved"] == 0                                    # the budget reservation is given back


def test_a_message_for_a_pipeline_or_tier_this_worker_lacks_is_poison_not_a_failed_job(settings):
    h = make_engine(settings, {"cheap": lambda r, n: GOOD})
    with pytest.raises(PoisonMessage, match="unknown pipeline 'no-such-pipeline'"):
        h.engine.handle(JobRef("b1", "no-such-pipeline", "j1", 0, 1))
    with pytest.raises(PoisonMessage, match="tier index 7 is past the end of pipeline 'ticket-triage'"):
        h.engine.handle(JobRef("b1", "ticket-triage", "j1", 7, 1))
    with pytest.raises(PoisonMessage, match="job 'ghost' is not registered in batch 'b1'"):
        h.engine.handle(JobRef("b1", "ticket-triage", "ghost", 0, 1))
    assert h.records() == []                                       # the real job is untouched
    assert h.handle() == "accepted"


def test_a_cancelled_batch_ends_its_queued_jobs_cancelled_without_a_call(settings):
    h = make_engine(settings, {"cheap": lambda r, n: GOOD})
    h.store.cancel("b1")
    assert h.handle() == "cancelled"
    [rec] = h.records()
    assert rec["status"] == "cancelled" and h.providers["cheap"].calls == []
    assert h.store.batch("b1").finished


def test_a_sampled_call_that_fails_part_way_records_what_the_answered_samples_cost(settings):
    # Given an anthropic tier asked for 5 samples (one call each), the third of which is refused for good
    from tests.helpers import SamplingProvider

    sampler = SamplingProvider(lambda i: Permanent("anthropic 400: no", status=400) if i == 3 else GOOD)
    pipeline = settings.pipelines["ticket-triage"].model_copy(update={
        "verifiers": {"mid": ({"name": "self_consistency", "samples": 5},), "default": ()}})
    h = make_engine(settings.model_copy(update={"pipelines": {"ticket-triage": pipeline}}), {})
    h.engine.providers = ProviderPool(h.settings, {"mid": sampler})
    h.engine.caller.providers = h.engine.providers
    # When the job runs on it (a permanent refusal of one sample fails the attempt, and the job)
    assert h.handle(tier=1, history=[CHEAP_ATTEMPT]) == "failed"
    # Then the four answered samples are paid and counted: 4 x (100 in, 10 out) on claude-haiku-4-5 ($1 / $5 per M)
    assert sampler.calls == 5
    info = h.counters()
    assert info["cost:mid"] == 4 * (100 * 1000 + 10 * 5000) and info["error:mid:permanent"] == 1


class RefusingJobs(JobStore):
    """A job store whose recordings Redis refuses (an OOM under noeviction), the first `refusals` times."""

    def __init__(self, client, namespace, refusals):
        super().__init__(client, namespace)
        self.refusals = refusals

    def record_final(self, *args, **kwargs):
        import redis

        if self.refusals > 0:
            self.refusals -= 1
            raise redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
        return super().record_final(*args, **kwargs)


def test_a_write_redis_keeps_refusing_is_dead_lettered_and_its_paid_answer_is_not_paid_again(settings):
    # Given a job whose answer Redis refuses to record, more often than the store retries allow
    h = make_engine(settings, {"cheap": lambda r, n: GOOD})
    refusing = RefusingJobs(h.store.redis, "test", refusals=settings.engine.store_retries + 1)
    h.engine.jobs = refusing
    # When it runs: the provider is called once, then the job is taken out of circulation
    assert h.handle() == "dead_lettered"
    assert len(h.providers["cheap"].calls) == 1 and h.records() == []
    [letter] = h.sweeps.dead_letters()
    assert letter["job"] == "j1" and "Redis refused it: ResponseError: OOM command not allowed" in letter["reason"]
    # Then its next delivery (the reconciler publishes it once its lease lapses) records the kept answer
    h.store.redis.hset(h.store.keys.live("b1"), "j1", b"0||1|0|40")          # the lease lapsed and was taken back
    assert h.handle() == "accepted"
    assert len(h.providers["cheap"].calls) == 1                               # not paid twice
    assert h.counters()["cost"] == 21_000


def test_an_escalation_waits_for_room_on_the_next_tiers_queue(settings):
    h = make_engine(settings, {"cheap": lambda r, n: MALFORMED})
    depths = iter([settings.producer.high_water + 5, settings.producer.high_water, 10])
    h.dispatcher.backlog = lambda tier: next(depths)
    assert h.handle() == "escalated"
    assert h.clock.sleeps == [0.2, 0.2]                 # two looks at a full queue, then room
    assert h.dispatcher.sent[0].tier_index == 1


def test_a_tiers_http_pool_holds_a_connection_per_sample_each_thread_can_fan_out_to(settings):
    from cascade.worker.runtime import ProviderPool, provider_spec

    pipeline = settings.pipelines["ticket-triage"].model_copy(update={
        "verifiers": {"mid": ({"name": "self_consistency", "samples": 5},), "default": ()}})
    sampled = settings.model_copy(update={"pipelines": {"ticket-triage": pipeline}})
    pool = ProviderPool(sampled, threads=6)
    assert pool._fan_out(sampled.tiers["mid"]) == 5        # anthropic has no `n`: five calls per attempt
    assert pool._fan_out(sampled.tiers["cheap"]) == 1
    env = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    assert provider_spec(sampled, sampled.tiers["mid"], env, max_connections=6 * 5).max_connections == 30
