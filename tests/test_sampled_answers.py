"""Sampled tiers: self-consistency picks among samples the static checks pass; savings price one answer."""

from __future__ import annotations

from cascade.models import Completion, Usage
from tests.test_engine import GOOD, make_engine, settings  # noqa: F401  (the settings fixture)

OTHER = '{"category": "technical", "priority": "high"}'
BROKEN = '{"category": "technical", "priority"'


def sampled_engine(settings, samples: list[str], finishes: list[str], **options):  # noqa: F811
    chain = ({"name": "truncation"}, {"name": "json", "schema": "ticket.json"},
             {"name": "self_consistency", "samples": len(samples), **options})
    pipeline = settings.pipelines["ticket-triage"].model_copy(update={"verifiers": {"cheap": chain}})
    sampled = settings.model_copy(update={"pipelines": {"ticket-triage": pipeline}})
    answer = Completion(text=samples[0], usage=Usage(100, 10 * len(samples), 0), finish_reason=finishes[0],
                        model="gpt-4o-mini", latency_ms=5.0, samples=tuple(samples), sample_finish=tuple(finishes))
    return make_engine(sampled, {"cheap": lambda r, n: answer})


def test_the_last_tier_alone_counterfactual_prices_one_answer_of_a_twenty_sample_call(settings):  # noqa: F811
    h = sampled_engine(settings, [GOOD] * 20, ["stop"] * 20)
    assert h.handle() == "accepted"
    [record] = h.records()
    assert record["attempts"][0]["output_tokens"] == 200
    # 100 input + 10 output tokens (one answer, not twenty) on claude-sonnet-4-6 ($3 / $15 per M)
    assert h.counters()["counterfactual"] == 100 * 3000 + 10 * 15000
    assert record["counterfactual_usd"] == (100 * 3000 + 10 * 15000) / 1e9


def test_samples_the_static_checks_reject_never_vote_nor_become_the_answer(settings):  # noqa: F811
    # Given: the first choice is valid; three of five samples agree on an answer cut at max_tokens,
    # one more is not JSON the schema accepts
    samples = [GOOD, OTHER, OTHER, OTHER, BROKEN]
    h = sampled_engine(settings, samples, ["stop", "length", "length", "length", "stop"])
    # When the tier votes: only the first choice is admissible, 1 of 5 agree (3 of 5 counting the cut ones): it
    # escalates on low agreement instead of returning a truncated answer
    assert h.handle() == "escalated"
    assert h.counters()["reject:cheap:self_consistency:low agreement"] == 1


def test_the_majority_of_admissible_samples_is_returned(settings):  # noqa: F811
    # Given: the first choice is truncated-free but outvoted by three valid samples; one sample is cut
    samples = [GOOD, OTHER, OTHER, OTHER, OTHER]
    h = sampled_engine(settings, samples, ["stop", "stop", "stop", "stop", "length"])
    assert h.handle() == "accepted"
    [record] = h.records()
    # the returned answer is a sample that passed the checks, and 3 of 5 (the cut one does not count) agree
    assert record["output"] == OTHER
    verdict = record["attempts"][0]["verdicts"][-1]
    assert verdict["verifier"] == "self_consistency" and "3/5" in verdict["reason"]
