"""Engine decisions: accept, escalate, flag, fail, retry, budget, redelivery; store over fakeredis with Lua."""

from __future__ import annotations

import fakeredis
import orjson
import pytest

from cascade.errors import ContextTooLong, Permanent, RateLimited, ServerError
from cascade.models import Completion, Job, Usage
from cascade.worker.config import load_settings
from cascade.worker.engine import Engine
from cascade.worker.messages import AttemptMessage
from cascade.worker.runtime import ProviderPool
from cascade.worker.store import BatchStore
from tests.helpers import ScriptedProvider, copy_config

GOOD = '{"category": "billing", "priority": "low"}'
MALFORMED = '{"category": "billing", "priority": '
HEDGE = "I'm not sure, but it might be billing"


class RecordingDispatcher:
    def __init__(self):
        self.sent: list[AttemptMessage] = []

    def send(self, message):
        self.sent.append(message)


@pytest.fixture
def settings(tmp_path):
    path = copy_config(tmp_path, lambda t: t.replace("backoff_base_s = 0.5", "backoff_base_s = 0.01"))
    return load_settings(path, environ={})


def make_engine(settings, answers: dict, on_last_failure=None):
    """answers: tier -> function(request, call_number) -> text | Completion | error."""
    if on_last_failure:
        pipeline = settings.pipelines["ticket-triage"].model_copy(update={"on_last_failure": on_last_failure})
        settings = settings.model_copy(update={"pipelines": {"ticket-triage": pipeline}})
    store = BatchStore(fakeredis.FakeRedis(), "test")
    providers = {tier: ScriptedProvider(fn) for tier, fn in answers.items()}
    dispatcher = RecordingDispatcher()
    sleeps: list[float] = []
    engine = Engine(settings, store, ProviderPool(settings, providers), dispatcher, sleep=sleeps.append)
    store.open_batch("b1", "ticket-triage")
    store.register_jobs("b1", 1, [("j1", 1)])
    store.mark_submitted("b1", 0)
    return engine, store, dispatcher, providers, sleeps


def message(tier=0, history=(), budgeted=False):
    return AttemptMessage("b1", "ticket-triage", tier, Job("j1", {"subject": "Refund", "body": "charged twice"}, 1),
                          tuple(history), budgeted)


def records(store):
    return [orjson.loads(r) for _, r in store.read_results("b1")]


def test_valid_cheap_answer_is_accepted_at_the_first_tier(settings):
    engine, store, dispatcher, _, _ = make_engine(settings, {"cheap": lambda r, n: GOOD})
    assert engine.handle(message()) == "accepted"
    [rec] = records(store)
    assert rec["status"] == "accepted"
    assert rec["tier"] == "cheap" and rec["model"] == "gpt-4o-mini"
    assert rec["parsed"] == {"category": "billing", "priority": "low"}
    # 100 input tokens at $0.15/M + 10 output at $0.60/M
    assert rec["cost_usd"] == pytest.approx(0.000021)
    assert dispatcher.sent == []
    info = store.batch("b1").counters
    assert info["done"] == 1 and info["status:accepted"] == 1 and info["final:cheap"] == 1
    assert info["cost"] == 21_000 and info.get("reserved", 0) == 0


def test_failed_verification_escalates_with_the_attempt_in_the_history(settings):
    engine, store, dispatcher, _, _ = make_engine(settings, {"cheap": lambda r, n: MALFORMED})
    assert engine.handle(message()) == "escalated"
    [sent] = dispatcher.sent
    assert sent.tier_index == 1 and sent.job.id == "j1"
    [attempt] = sent.attempts
    assert attempt.tier == "cheap" and attempt.text == MALFORMED
    assert attempt.verdicts[-1].verifier == "json" and not attempt.verdicts[-1].passed
    assert records(store) == []
    info = store.batch("b1").counters
    assert info["escalated:cheap"] == 1 and info["reject:cheap:json:invalid JSON"] == 1
    assert info.get("done", 0) == 0


def test_hedge_is_rejected_by_the_refusal_check(settings):
    engine, store, dispatcher, _, _ = make_engine(settings, {"cheap": lambda r, n: HEDGE})
    assert engine.handle(message()) == "escalated"
    assert any(k.startswith("reject:cheap:refusal:") for k in store.batch("b1").counters)


@pytest.mark.parametrize("policy, status, outcome", [("accept_flagged", "accepted_unverified", "flagged"),
                                                     ("fail", "failed", "failed")])
def test_failure_at_the_last_tier_follows_the_pipeline_policy(settings, policy, status, outcome):
    engine, store, _, _, _ = make_engine(settings, {"frontier": lambda r, n: HEDGE}, on_last_failure=policy)
    cheap_attempt = {"tier": "cheap", "model": "gpt-4o-mini", "text": MALFORMED, "cost_usd": 0.00001,
                     "input_tokens": 100, "output_tokens": 10, "verdicts": []}
    assert engine.handle(message(tier=2, history=[cheap_attempt])) == outcome
    [rec] = records(store)
    assert rec["status"] == status
    assert rec["output"] == HEDGE and rec["tier"] == "frontier"
    assert [a["tier"] for a in rec["attempts"]] == ["cheap", "frontier"]
    assert rec["reason"].startswith("refusal: ")


def test_retryable_errors_retry_on_the_same_tier_then_succeed(settings):
    def flaky(request, n):
        return [RateLimited("slow down", retry_after=0.2), ServerError("boom", status=500)][n - 1] if n <= 2 else GOOD

    engine, store, _, providers, sleeps = make_engine(settings, {"cheap": flaky})
    assert engine.handle(message()) == "accepted"
    assert len(providers["cheap"].calls) == 3
    assert len(sleeps) == 2 and sleeps[0] >= 0.2   # retry-after is a floor
    assert store.batch("b1").counters["retries:cheap"] == 2


def test_retries_exhausted_fail_the_job_with_the_reason(settings):
    engine, store, _, providers, _ = make_engine(settings, {"cheap": lambda r, n: ServerError("openai 503: down", status=503)})
    assert engine.handle(message()) == "failed"
    [rec] = records(store)
    assert rec["reason"] == "server_error: retries exhausted: openai 503: down"
    assert len(providers["cheap"].calls) == settings.engine.max_retries + 1


def test_permanent_error_fails_without_retrying(settings):
    engine, store, _, providers, _ = make_engine(settings, {"cheap": lambda r, n: Permanent("openai 401: bad key", status=401)})
    assert engine.handle(message()) == "failed"
    assert records(store)[0]["reason"] == "permanent: openai 401: bad key"
    assert len(providers["cheap"].calls) == 1


def test_context_too_long_escalates_to_a_larger_window(settings):
    engine, store, dispatcher, _, _ = make_engine(settings, {"cheap": lambda r, n: ContextTooLong("too long", status=400)})
    assert engine.handle(message()) == "escalated"
    assert dispatcher.sent[0].tier_index == 1
    assert store.batch("b1").counters["error:cheap:context_too_long"] == 1


def test_redelivered_message_is_a_no_op(settings):
    engine, store, _, providers, _ = make_engine(settings, {"cheap": lambda r, n: GOOD})
    assert engine.handle(message()) == "accepted"
    assert engine.handle(message()) == "duplicate"
    assert len(records(store)) == 1 and len(providers["cheap"].calls) == 1
    assert store.batch("b1").counters["done"] == 1


def test_a_first_delivery_skips_the_pre_check_and_still_counts_once(settings):
    # Given a job already accepted, and a duplicate of its message delivered for the first time
    # (a crash between publishing an escalation and recording it makes such a message)
    engine, store, _, providers, _ = make_engine(settings, {"cheap": lambda r, n: GOOD})
    assert engine.handle(message(), redelivered=False) == "accepted"
    # When it runs, the tier is called again, but nothing is recorded twice
    assert engine.handle(message(), redelivered=False) == "duplicate"
    assert len(providers["cheap"].calls) == 2 and len(records(store)) == 1
    info = store.batch("b1").counters
    assert info["done"] == 1 and info["attempts:cheap"] == 1 and info["cost_duplicate"] == info["cost"] == 21_000
    # and a redelivered copy (kombu flags the messages it restores) is stopped before the call
    assert engine.handle(message(), redelivered=True) == "duplicate"
    assert len(providers["cheap"].calls) == 2


def test_redelivery_after_escalation_does_not_call_the_tier_again(settings):
    engine, store, dispatcher, providers, _ = make_engine(settings, {"cheap": lambda r, n: MALFORMED})
    engine.handle(message())
    assert engine.handle(message()) == "duplicate"
    assert len(dispatcher.sent) == 1 and len(providers["cheap"].calls) == 1


def test_budget_stops_escalation_and_keeps_the_best_answer(settings):
    engine, store, _, providers, _ = make_engine(settings, {"mid": lambda r, n: GOOD})
    store.redis.hset(store.keys.batch("b1"), "budget", 1000)   # $0.000001: no mid call fits
    cheap_attempt = {"tier": "cheap", "model": "gpt-4o-mini", "text": HEDGE, "cost_usd": 0.0,
                     "input_tokens": 1, "output_tokens": 1, "verdicts": []}
    assert engine.handle(message(tier=1, history=[cheap_attempt], budgeted=True)) == "budget_exhausted"
    [rec] = records(store)
    assert rec["status"] == "budget_exhausted" and rec["output"] == HEDGE and rec["tier"] == "cheap"
    assert providers["mid"].calls == []


def test_truncated_answer_escalates(settings):
    cut = Completion(text='{"category": "bil', usage=Usage(100, 128, 0), finish_reason="length",
                     model="gpt-4o-mini", latency_ms=5.0)
    engine, store, _, _, _ = make_engine(settings, {"cheap": lambda r, n: cut})
    assert engine.handle(message()) == "escalated"
    assert store.batch("b1").counters["reject:cheap:truncation:truncated at max_tokens"] == 1


def test_counterfactual_prices_the_answer_on_the_last_tier(settings):
    engine, store, _, _, _ = make_engine(settings, {"cheap": lambda r, n: GOOD})
    engine.handle(message())
    # 100 input + 10 output tokens on claude-sonnet-4-6 ($3 / $15 per M)
    assert store.batch("b1").counters["counterfactual"] == 100 * 3000 + 10 * 15000


def test_a_bug_in_a_provider_ends_the_job_with_its_reason(settings):
    def broken(request, n):
        raise KeyError("usage")

    engine, store, _, _, _ = make_engine(settings, {"cheap": broken})
    store.redis.hset(store.keys.batch("b1"), "budget", 10**9)
    assert engine.handle(message(budgeted=True)) == "failed"
    assert records(store)[0]["reason"] == "internal_error: KeyError: 'usage'"
    assert store.batch("b1").counters["reserved"] == 0      # the budget reservation is given back


def test_a_pipeline_unknown_to_this_worker_fails_the_job_instead_of_losing_it(settings):
    engine, store, _, _, _ = make_engine(settings, {"cheap": lambda r, n: GOOD})
    msg = AttemptMessage("b1", "no-such-pipeline", 0, Job("j1", {}, 1))
    assert engine.handle(msg) == "failed"
    [rec] = records(store)
    assert rec["reason"].startswith("internal_error: ConfigError: unknown pipeline 'no-such-pipeline'")
