"""Replay: the replay provider, the engine's decisions over recorded rows, calibration fitted on them, the CLI."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cascade.cli.main import cascade
from cascade.errors import Permanent
from cascade.models import CompletionRequest
from cascade.recorded import load_recorded
from cascade.simulator import parse_scenario
from cascade.tuning.profile import TierProfile
from cascade.tuning.replay import replay
from cascade.tuning.search import NEVER, choose_thresholds, simulate
from cascade.tuning.target import Target, meets
from cascade.worker.config import load_settings
from cascade.worker.providers.replay import ReplayProvider
from tests.helpers import copy_recorded_config

PIPELINE = """output = "label"
labels = ["A", "B", "C", "D"]
ladder = ["mini", "gpt4o"]
[prompt]
system = "{system}"
user = "{user}"
[verifiers]
default = [{ name = "choices" }, { name = "logprob", LOGPROB }]
"""


def response(text: str, p: float, correct: bool, output_tokens: int = 1, **extra) -> dict:
    return {"text": text, "input_tokens": 100, "output_tokens": output_tokens, "logprob": math.log(p),
            "correct": correct, **extra}


def row(i: int, mini: dict, big: dict, split: str = "test") -> dict:
    return {"id": f"r{i}", "split": split, "messages": [{"role": "system", "content": "Pick one."},
                                                        {"role": "user", "content": f"Question {i}?"}],
            "responses": {"gpt-4o-mini": mini, "gpt-4o": big}}


ROWS = [
    row(0, response("A", 0.95, True), response("A", 0.9, True)),       # confident and right: stays cheap
    row(1, response("B", 0.5, False), response("C", 0.9, True)),       # unsure: escalates, accepted there
    row(2, response("Z", 0.99, False), response("D", 0.3, True)),      # not a label; unsure at the top: flagged
    row(3, response("A", 0.99, False), response("B", 0.9, True)),      # confidently wrong: the miss
]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.fixture
def config(tmp_path) -> Path:
    target = tmp_path / "config"
    copy_recorded_config(target)
    (target / "pipelines" / "mc.toml").write_text(PIPELINE.replace("LOGPROB", "threshold = 0.8"))
    return target / "cascade.toml"


def test_replay_provider_serves_recorded_answers_as_the_api_would(tmp_path):
    samples = [f"A: {n}" for n in (4, 4, 5, 4)]
    rows = [row(0, response("A: 4", 0.8, True, 40, samples=samples), response("4", 0.9, True))]
    data = load_recorded(write(tmp_path / "rec.jsonl", rows))
    provider = ReplayProvider(data)
    request = CompletionRequest(model="gpt-4o-mini", system="Pick one.", user="Question 0?", max_tokens=8)
    one = provider.complete(request)
    assert one.text == "A: 4" and one.logprobs == () and one.usage.input_tokens == 100
    assert one.usage.output_tokens == 10                                      # one sample's share of 40
    with_lp = provider.complete(replace(request, logprobs=True))
    assert [(t.token, round(t.logprob, 6)) for t in with_lp.logprobs] == [("A: 4", round(math.log(0.8), 6))]
    many = provider.complete(replace(request, n=3))
    assert many.samples == tuple(samples[:3]) and many.usage.output_tokens == 30
    with pytest.raises(Permanent, match="has 4 recorded samples, 5 were asked for"):
        provider.complete(replace(request, n=5))
    with pytest.raises(Permanent, match="no recorded response"):
        provider.complete(replace(request, user="Question 9?"))
    reworded = replace(request, user="Please answer: Question 0?", job_id="r0")   # another template, same job
    assert provider.complete(reworded).text == "A: 4"
    with pytest.raises(Permanent, match="has no response from 'gpt-4'"):
        provider.complete(replace(request, model="gpt-4"))


def test_replay_runs_the_engine_and_reports_against_the_references(config, tmp_path):
    settings = load_settings(config, environ={})
    data = load_recorded(write(tmp_path / "rec.jsonl", ROWS))
    result = replay(settings, settings.pipeline("mc"), data)
    assert result.decisions == {"r0": ("accepted", "mini"), "r1": ("accepted", "gpt4o"),
                                "r2": ("accepted_unverified", "gpt4o"), "r3": ("accepted", "mini")}
    report = result.report
    mini, big = 100 * 0.15 + 0.6, 100 * 2.5 + 10.0          # micro-USD per call
    assert report["accuracy"] == 0.75 and report["last_tier_accuracy"] == 1.0
    assert report["cost_usd"] == pytest.approx((4 * mini + 2 * big) / 1e6)
    assert report["cost_ratio"] == pytest.approx((4 * mini + 2 * big) / (4 * big))
    assert report["escalation"] == {"mini": 0.5}
    assert report["oracle_accuracy"] == 1.0
    assert report["oracle_cost_ratio"] == pytest.approx((mini + 3 * (mini + big)) / (4 * big))


def test_replay_refuses_a_pipeline_the_recording_cannot_fill(config, tmp_path):
    settings = load_settings(config, environ={})
    data = load_recorded(write(tmp_path / "rec.jsonl", ROWS))
    with pytest.raises(Exception, match=r"model 'gpt-3.5-turbo' has no responses in"):
        replay(settings, settings.pipeline("date-mot"), data)


def synthetic(n: int, split: str) -> list[dict]:
    """mini is right when confident (mostly), gpt-4o is right 90% of the time."""
    rows = []
    for i in range(n):
        p = 0.3 + 0.7 * ((i * 37) % n) / n
        rows.append(row(i, response("A", p, (i % 10) < 10 * p - 1), response("B", 0.9, i % 10 != 0), split))
    return rows


def test_calibrate_fits_what_replay_then_measures(config, tmp_path):
    # Given: a pipeline whose logprob check reads a calibration file that does not exist yet
    pipeline = config.parent / "pipelines" / "mc.toml"
    pipeline.write_text(PIPELINE.replace("LOGPROB", 'calibration = "calibration/mc.json"'))
    recorded = write(tmp_path / "train.jsonl", synthetic(80, "train"))
    runner = CliRunner()
    # When: calibrate writes it, then replay runs the pipeline that reads it, on the same rows
    fit = runner.invoke(cascade, ["calibrate", "-p", "mc", "-r", str(recorded), "--target", "drop=0.05",
                                  "--config", str(config), "--json"])
    assert fit.exit_code == 0, fit.output
    fitted = orjson.loads(fit.stdout)
    run = runner.invoke(cascade, ["replay", "-p", "mc", "-r", str(recorded), "--config", str(config), "--json"])
    assert run.exit_code == 0, run.output
    measured = orjson.loads(run.stdout)
    # Then: the fit's expectation is exactly what the real engine does, and it meets the target
    assert fitted["feasible"] and 0 < fitted["escalation"]["mini"] < 1
    for key in ("accuracy", "cost_usd", "cost_ratio", "escalation"):
        assert measured[key] == pytest.approx(fitted[key]), key
    assert measured["accuracy"] >= measured["last_tier_accuracy"] - 0.05
    saved = orjson.loads((config.parent / "calibration" / "mc.json").read_bytes())
    assert saved["format"] == "cascade-calibration/1" and set(saved["tiers"]) == {"mini", "gpt4o"}


def test_calibrate_and_replay_errors_are_clear(config, tmp_path):
    runner = CliRunner()
    recorded = write(tmp_path / "rec.jsonl", ROWS)
    bad = runner.invoke(cascade, ["calibrate", "-p", "mc", "-r", str(recorded), "--target", "drop",
                                  "--config", str(config), "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and "expected drop=X, accuracy=X or error=X" in bad.output
    empty = runner.invoke(cascade, ["replay", "-p", "mc", "-r", str(recorded), "--split", "train",
                                    "--config", str(config)])
    assert empty.exit_code == 2 and "no rows with split 'train'" in empty.output
    assert Target.parse("error=0.1", 0.8) == Target("accuracy", 0.9, 0.8)


def test_simulator_scenario_serves_recorded_answers_before_rules(tmp_path):
    recorded = write(tmp_path / "rec.jsonl", ROWS)
    scenario = parse_scenario(f'recorded = "{recorded}"\n[[rules]]\nmatch = ".*"\nanswer = "rule"\n')
    answers, prompt = scenario.recorded_answers("gpt-4o", ("Pick one.", "Question 1?"), 1, True)
    assert [a.text for a in answers] == ["C"] and prompt == 100 and answers[0].outcome == "correct"
    assert answers[0].logprobs == (("C", pytest.approx(math.log(0.9))),)
    assert scenario.recorded_answers("gpt-4o", ("Pick one.", "Unrecorded?")) is None
    assert scenario.answer("gpt-4o", "Unrecorded?").text == "rule"


def profile(name: str, scores: list[float], correct: list[bool], cost: int) -> TierProfile:
    n = len(scores)
    return TierProfile(name, True, [True] * n, list(scores), [True] * n, [cost] * n, [cost] * n, list(correct))


def test_a_middle_tier_lucky_on_train_does_not_buy_the_cheap_tier_its_wrong_answers():
    # Given: 200 training rows. The cheap tier is sure and right on half (P=0.95), a coin toss on the
    # other half (P=0.5); the middle tier is right on every row; the last tier is right on 150.
    cheap_p = [0.95] * 100 + [0.5] * 100
    cheap_ok = [i % 20 != 0 for i in range(100)] + [i % 2 == 0 for i in range(100)]
    last_ok = [c or i in range(100, 105) for i, c in enumerate(cheap_ok)]
    profiles = [profile("cheap", cheap_p, cheap_ok, 1), profile("mid", [0.99] * 200, [True] * 200, 10),
                profile("last", [0.9] * 200, last_ok, 100)]
    cal = [p.raw for p in profiles]
    target = Target("drop", 0.05, 0.9)
    # When: thresholds are chosen for "no more than 5 points below the last tier"
    thresholds, feasible = choose_thresholds(profiles, cal, target, keep_last=True)
    # Then: the coin tosses are escalated (below the per-answer floor 0.75 - 0.05), although accepting them
    # all would still have met the batch target on these rows thanks to nothing but the middle tier
    assert feasible
    assert thresholds[0] == 0.95 and thresholds[1] <= 0.99


def test_a_lone_cheap_tier_spends_the_batch_budget_not_a_share_of_it():
    # Given: 400 training rows. The cheap tier is sure (P=0.95) on 200 and wrong on 12 of them, where the last
    # tier is right: 6 points below it on its own rows. The last tier is right on 380 rows (0.95).
    cheap = profile("cheap", [0.95] * 200 + [0.3] * 200, [i % 50 >= 3 for i in range(200)] + [False] * 200, 1)
    last = profile("last", [0.9] * 400, [True] * 200 + [i % 10 != 0 for i in range(200)], 100)
    profiles, target = [cheap, last], Target("drop", 0.05, 0.9)
    cal = [p.raw for p in profiles]
    # When thresholds are chosen for "no more than 5 points below the last tier", by the rule and by the one
    # before it, which held the tier to the target on its own rows even with no other tier to pay for it
    thresholds, feasible = choose_thresholds(profiles, cal, target, keep_last=True)
    before, _ = choose_thresholds(profiles, cal, target, keep_last=True, floor="reached")
    # Then the sure answers are accepted: the batch is 3 points below the last tier, 4.1 at the 90% bound
    assert feasible and thresholds == [0.95, 0.5] and before == [NEVER, 0.5]
    correct, cost, _ = simulate(profiles, cal, thresholds, keep_last=True)
    assert cost == 400 * 1 + 200 * 100 and sum(last.correct) - sum(correct) == 12
    assert meets(correct, last.correct, target)


def easy_and_hard(easy: list, hard: list) -> list:
    """200 rows: even rows from `easy`, odd rows from `hard` (each indexed by k = i // 2)."""
    return [easy[i // 2] if i % 2 == 0 else hard[i // 2] for i in range(200)]


def test_a_strong_middle_tier_answers_the_hard_rows_where_the_last_tier_is_weak_too():
    # Given: the cheap tier is sure and right on the easy half and useless on the hard half. On the hard
    # half the middle tier is right 75% of the time (P=0.72), the last tier only 60% (80% overall).
    cheap = profile("cheap", easy_and_hard([0.95] * 100, [0.3] * 100), easy_and_hard([True] * 100, [False] * 100), 1)
    middle = profile("middle", easy_and_hard([0.99] * 100, [0.72] * 100),
                     easy_and_hard([True] * 100, [k % 4 != 0 for k in range(100)]), 10)
    last = profile("last", [0.9] * 200, easy_and_hard([True] * 100, [k % 5 < 3 for k in range(100)]), 100)
    profiles, target = [cheap, middle, last], Target("drop", 0.05, 0.9)
    cal = [p.raw for p in profiles]
    # When thresholds are chosen for "no more than 5 points below the last tier"
    thresholds, feasible = choose_thresholds(profiles, cal, target, keep_last=True)
    # Then the middle tier answers the hard half (its 0.72 is above what the target asks of the last tier on
    # those rows, 0.60 at its 90% upper bound 0.66 less 0.05) and the last tier is never called
    assert feasible and thresholds == [0.95, 0.72, 0.5]
    correct, cost, escalated = simulate(profiles, cal, thresholds, keep_last=True)
    assert cost == 200 * 1 + 100 * 10 and escalated[1] == 0 and sum(correct) == 175
    # The earlier rule held every answer to the whole batch's 0.80 - 0.05: the hard half went to the last tier
    before, _ = choose_thresholds(profiles, cal, target, keep_last=True, floor="answer")
    assert before[1] > 0.72 and simulate(profiles, cal, before, keep_last=True)[1] >= 200 + 100 * 100


def test_a_middle_tiers_gain_does_not_pay_for_the_cheap_tiers_losses():
    # Given: the cheap tier is sure (P=0.95) on the easy half but wrong on 12 of those 100 rows, where the last
    # tier is right; the middle tier is right everywhere, the last tier only 70% on the hard half
    cheap = profile("cheap", easy_and_hard([0.95] * 100, [0.3] * 100),
                    easy_and_hard([k % 25 < 22 for k in range(100)], [False] * 100), 1)
    middle = profile("middle", [0.99] * 200, [True] * 200, 10)
    last = profile("last", [0.9] * 200, easy_and_hard([True] * 100, [k % 10 < 7 for k in range(100)]), 100)
    profiles, target = [cheap, middle, last], Target("drop", 0.05, 0.9)
    cal = [p.raw for p in profiles]
    # When thresholds are chosen for "no more than 5 points below the last tier"
    thresholds, feasible = choose_thresholds(profiles, cal, target, keep_last=True)
    # Then the cheap tier accepts nothing: on the 100 rows it would answer it is 12 points below the last tier.
    # Counting the middle tier's 30 won rows, the batch would beat the last tier by 9 points; the earlier
    # rule counted them and accepted the cheap answers.
    assert feasible and thresholds[0] == NEVER and thresholds[1] == 0.99
    before, _ = choose_thresholds(profiles, cal, target, keep_last=True, floor="answer")
    assert before[0] == 0.95


def test_calibrate_writes_the_entry_a_verifier_key_names(config, tmp_path):
    pipeline = config.parent / "pipelines" / "mc.toml"
    recorded = write(tmp_path / "train.jsonl", synthetic(80, "train"))
    runner = CliRunner()
    # Given a logprob check that reads its entry under `key` on the cheap tier only
    pipeline.write_text(PIPELINE.replace('default = [{ name = "choices" }, { name = "logprob", LOGPROB }]',
                                         'mini = [{ name = "choices" }, { name = "logprob", '
                                         'calibration = "calibration/k.json", key = "mc-mini" }]\n'
                                         'gpt4o = [{ name = "choices" }]'))
    # When calibrate fits it, then replay loads what it wrote
    fit = runner.invoke(cascade, ["calibrate", "-p", "mc", "-r", str(recorded), "--config", str(config), "--json"])
    assert fit.exit_code == 0, fit.output
    assert set(orjson.loads((config.parent / "calibration" / "k.json").read_bytes())["tiers"]) == {"mc-mini"}
    run = runner.invoke(cascade, ["replay", "-p", "mc", "-r", str(recorded), "--config", str(config), "--json"])
    assert run.exit_code == 0, run.output
    # And two tiers that would share one entry are refused with the reason
    pipeline.write_text(PIPELINE.replace("LOGPROB", 'calibration = "calibration/k.json", key = "both"'))
    shared = runner.invoke(cascade, ["calibrate", "-p", "mc", "-r", str(recorded), "--config", str(config)])
    assert shared.exit_code == 1 and "tiers share a calibration `key`" in shared.output


def test_the_studied_tier_rule_at_its_bound_refuses_a_tier_that_passes_only_on_the_point_estimate():
    # Given: the cheap tier is sure (P=0.95) on 40 of 200 rows and wrong on 2 of them, where the last tier
    # (right everywhere) is not: 5 points below it on its own rows, exactly the target
    cheap = profile("cheap", [0.95] * 40 + [0.3] * 160, [i >= 2 for i in range(40)] + [False] * 160, 1)
    last = profile("last", [0.9] * 200, [True] * 200, 100)
    profiles, target = [cheap, last], Target("drop", 0.05, 0.9)
    cal = [p.raw for p in profiles]
    # When the study's two tier-only rules choose
    point, _ = choose_thresholds(profiles, cal, target, keep_last=True, floor="tiers")
    bounded, _ = choose_thresholds(profiles, cal, target, keep_last=True, floor="tiers_bound")
    # Then the point rule accepts those answers, and the bounded one does not: 40 rows cannot show 5 points
    assert point[0] == 0.95 and bounded[0] == NEVER


def test_the_studied_budget_and_model_rules_accept_what_the_rule_refuses():
    # Given: 400 rows. The cheap tier is sure (P=0.95) on the easy half and wrong on 12 of those, where the last
    # tier is right: 6 points below it on its own rows. The middle tier is right everywhere; the last tier is
    # wrong on 10 hard rows.
    cheap = profile("cheap", [0.95] * 200 + [0.3] * 200, [i % 50 >= 3 for i in range(200)] + [False] * 200, 1)
    middle = profile("middle", [0.99] * 400, [True] * 400, 10)
    last = profile("last", [0.9] * 400, [True] * 200 + [i % 20 != 0 for i in range(200)], 100)
    profiles, target = [cheap, middle, last], Target("drop", 0.05, 0.9)
    cal = [p.raw for p in profiles]
    # When: the rule and the study's "budget" variant (one budget for the early tiers' losses) choose
    rule, _ = choose_thresholds(profiles, cal, target, keep_last=True)
    budget, _ = choose_thresholds(profiles, cal, target, keep_last=True, floor="budget")
    # Then: the rule holds the cheap tier to 5 points on its own rows and sends everything to the middle tier;
    # the budget lets it spend 12 of the 20 rows the target allows
    assert rule == [NEVER, 0.99, 0.5] and budget == [0.95, 0.99, 0.5]
    # Given: two tiers, the cheap tier sure on half of 200 rows and wrong on 8 of them, where the last tier is right
    cheap = profile("cheap", [0.95] * 100 + [0.3] * 100, [i % 25 >= 2 for i in range(100)] + [False] * 100, 1)
    last = profile("last", [0.9] * 200, [True] * 100 + [i % 10 != 0 for i in range(100)], 100)
    cal = [cheap.raw, last.raw]
    # When: the rule and the "model" variant (the batch bound on calibrated values) choose
    rule, _ = choose_thresholds([cheap, last], cal, target, keep_last=True)
    model, _ = choose_thresholds([cheap, last], cal, target, keep_last=True, floor="model")
    # Then: 4 points lost on 200 rows is 5.8 at the 90% bound, so the rule escalates; the model counts each sure
    # answer as right with P=0.95 against the last tier's 0.9, a gain, and accepts
    assert rule == [NEVER, 0.5] and model == [0.95, 0.5]


def test_an_unsure_middle_group_answers_where_its_own_rows_show_the_last_tier_no_better():
    # Given: 300 rows. The cheap tier is sure and right on the easy half (P=0.95, 2 wrong) and useless on the
    # hard half. There the middle tier has two groups of 75: sure (P=0.9, 90% right) and unsure (P=0.6, 60%
    # right). The last tier is right on every easy row, on 91% of the sure group and on 49% of the unsure one.
    hard = range(150)
    cheap = profile("cheap", [0.95] * 150 + [0.2] * 150, [i % 100 != 0 for i in range(150)] + [False] * 150, 1)
    middle = profile("middle", [0.99] * 150 + [0.9 if k < 75 else 0.6 for k in hard],
                     [True] * 150 + [k % 10 != 0 if k < 75 else k % 5 < 3 for k in hard], 10)
    last = profile("last", [0.9] * 300, [True] * 150 + [k % 12 != 0 if k < 75 else k % 2 == 0 for k in hard], 100)
    profiles, target = [cheap, middle, last], Target("drop", 0.02, 0.9)
    cal = [p.raw for p in profiles]
    # When thresholds are chosen for "no more than 2 points below the last tier", by the rule and by the one
    # it relaxes (every answer at or above the last tier's accuracy on all the rows reaching the middle tier)
    grouped, feasible = choose_thresholds(profiles, cal, target, keep_last=True)
    reached, _ = choose_thresholds(profiles, cal, target, keep_last=True, floor="reached")
    # Then the unsure group is answered by the middle tier: the last tier is right on 37 of its 75 rows, at
    # most 0.57 at the bound, and 0.6 clears that less the drop. Held to the 0.70 the last tier has on all 150
    # hard rows (0.75 at the bound), it goes to the last tier; without the unsure group's 8 won rows the batch
    # bound no longer admits the cheap tier's 2 losses either, so the middle tier answers the easy half too.
    assert feasible and grouped == [0.95, 0.6, 0.5] and reached == [NEVER, 0.9, 0.5]
    correct, cost, _ = simulate(profiles, cal, grouped, keep_last=True)
    assert cost == 300 * 1 + 150 * 10 and meets(correct, last.correct, target)
    assert simulate(profiles, cal, reached, keep_last=True)[1] == 300 * 1 + 300 * 10 + 75 * 100
