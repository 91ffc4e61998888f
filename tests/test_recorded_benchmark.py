"""benchmarks.recorded on sets it has no example pipeline for: it derives one from the training rows alone."""

from __future__ import annotations

import orjson
import pytest

from benchmarks import recorded
from benchmarks.recorded_sets import discover
from tests.helpers import REPO

DATASETS = REPO.parent / "shared" / "datasets"

needs_datasets = pytest.mark.skipif(not (DATASETS / "medmcqa-oai-train.jsonl").exists(),
                                    reason=f"{DATASETS} is not here")


def test_discover_pairs_split_files_and_keeps_single_files(tmp_path):
    for name in ("a-train.jsonl", "a-test.jsonl", "b.jsonl", "c-train.jsonl", "notes.txt"):
        (tmp_path / name).write_text("")
    found = {(b.name, b.train, b.test, b.split_field, b.pipeline) for b in discover(tmp_path)}
    assert found == {("a", "a-train.jsonl", "a-test.jsonl", False, None), ("b", "b.jsonl", "b.jsonl", True, None)}


@needs_datasets
def test_an_unseen_set_gets_a_derived_pipeline_fitted_on_train_only(tmp_path, capsys):
    # Given: two sets under names the benchmark does not know: multiple choice with logprobs (train
    # split + the first 300 test rows) and chain-of-thought with 20 samples per question
    (tmp_path / "quiz-train.jsonl").symlink_to(DATASETS / "medmcqa-oai-train.jsonl")
    head = (DATASETS / "medmcqa-oai-test.jsonl").read_bytes().splitlines(keepends=True)[:300]
    (tmp_path / "quiz-test.jsonl").write_bytes(b"".join(head))
    (tmp_path / "dates.jsonl").symlink_to(DATASETS / "date-mot.jsonl")
    # When: the benchmark runs over that folder
    assert recorded.main(["--datasets", str(tmp_path)]) == 0
    summary = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    sets = {s["set"]: s for s in summary["sets"]}
    # Then: each set has a cheap-first ladder, a calibrated signal and the figures the issue asks for
    quiz, dates = sets["quiz"], sets["dates"]
    assert quiz["ladder"][0] == "mini" and quiz["ladder"][-1] == "gpt4o" and quiz["test_rows"] == 300
    assert set(quiz["thresholds"]) == set(quiz["ladder"][:-1]) and quiz["target"] == "drop=0.01"
    assert dates["ladder"] == ["gpt35", "gpt4"] and "gpt35" in dates["thresholds"]
    for s in (quiz, dates):
        assert 0 < s["accuracy"] <= 1 and 0 < s["cost_ratio"] <= 1 and 0 < s["oracle_cost_ratio"] < 1
        assert set(s["escalation"]) == set(s["kept"][:-1]) and s["ratio_to_hindsight"] is not None
        # the cheapest thresholds as accurate on test as the fitted cascade: never dearer than the last tier
        assert 0 < s["same_accuracy_hindsight_cost_ratio"] <= 1
        same = s["same_accuracy_hindsight_cost_ratio"]
        assert s["ratio_to_same_accuracy_hindsight"] == pytest.approx(s["cost_ratio"] / same, abs=1e-3)
        # the cheapest search on test that meets the target on 9 of 10 resampled test sets: dearer than hindsight
        assert s["hindsight_cost_ratio"] <= s["reliable_hindsight_cost_ratio"] <= 1
        assert s["ratio_to_reliable_hindsight"] == pytest.approx(s["cost_ratio"] / s["reliable_hindsight_cost_ratio"],
                                                                 abs=1e-3)


def _set(rows):
    from cascade.recorded import RecordedResponse, RecordedRow, RecordedSet

    out = []
    for i, (gold, answers) in enumerate(rows):
        responses = {m: RecordedResponse(m, text, 10, 1, cost_usd=cost, correct=ok)
                     for m, (text, cost, ok) in answers.items()}
        out.append(RecordedRow(f"r{i}", "train", "", f"q{i}", gold, responses))
    return RecordedSet(out, "train")


def test_derivation_orders_by_the_cost_accuracy_frontier_and_takes_labels_from_gold():
    from benchmarks.recorded_sets import _labels, frontier

    cost = {"weak": 0.9997, "good": 1.0, "mid": 3.0, "top": 10.0, "dear-but-worse": 20.0}
    accuracy = {"weak": 0.50, "good": 0.74, "mid": 0.80, "top": 0.90, "dear-but-worse": 0.85}
    assert frontier(list(cost), cost, accuracy) == ["good", "mid", "top"]
    rows = [("A", {"m": ("A", 1, True)}), ("B", {"m": ("I", 1, False)}), ("C", {"m": ("C", 1, True)}),
            ("D", {"m": ("To", 1, False)})] * 5
    assert _labels(_set(rows), ["m"]) == ["A", "B", "C", "D"]


def test_refusal_markers_only_where_they_mark_wrong_answers():
    from benchmarks.recorded_sets import _refusals_mark_errors

    honest = [(None, {"m": ("I don't know", 1, True)}), (None, {"m": ("Paris", 1, False)})] * 5
    hedging = [(None, {"m": ("I'm not sure, maybe Rome", 1, False)}), (None, {"m": ("Paris", 1, True)})] * 5
    assert not _refusals_mark_errors(_set(honest), ["m"])
    assert _refusals_mark_errors(_set(hedging), ["m"])


def test_the_synthetic_family_is_written_as_recorded_rows_and_derives_a_five_tier_ladder(tmp_path, capsys):
    from benchmarks import synthetic_set
    from benchmarks.recorded_sets import derive_pipeline
    from cascade.recorded import load_recorded
    from cascade.worker.config import load_settings
    from tests.helpers import copy_recorded_config

    # When: the study's five-tier set is written to a folder
    assert synthetic_set.main([str(tmp_path / "sets")]) == 0
    written = orjson.loads(capsys.readouterr().out.splitlines()[-1])["written"]
    # Then: 300 training and 1,700 test rows that the recorded reader takes, each answer right where it is gold
    assert sorted(written.values()) == [300, 1700]
    train = load_recorded(tmp_path / "sets" / "family-train.jsonl")
    assert len(train.rows) == 300 and tuple(train.models) == synthetic_set.MODELS
    for r in train.rows[:50]:
        assert all(a.correct == (a.text == r.gold) and a.logprob <= 0 for a in r.responses.values())
    # and the benchmark's derivation keeps every model, cheapest first, each with its logprob signal
    config = copy_recorded_config(tmp_path / "config")
    name, scored = derive_pipeline("family", train, config)
    pipeline = load_settings(config / "cascade.toml", environ={}, check_verifiers=False).pipeline(name)
    assert scored and pipeline.ladder == tuple(f"m-{m}" for m in synthetic_set.MODELS)
    assert 'name = "logprob"' in (config / "pipelines" / f"{name}.toml").read_text()


def _free_text_rows(n: int) -> list[dict]:
    """Arithmetic in free text, no signal: the cheap model always ends with '#### N' and is right 40% of the
    time, the dear one 90%; every 4th row is train."""
    rows = []
    for i in range(n):
        gold = str(i)
        answers = {"cheap-model": (i % 5 < 2, 1e-6), "dear-model": (i % 10 != 0, 2e-5)}
        rows.append({"id": f"q{i}", "split": "train" if i % 4 == 0 else "test", "gold": gold,
                     "messages": [{"role": "user", "content": f"What is {i} + 0?"}],
                     "responses": {m: {"text": f"Thinking.\n#### {gold if ok else i + 1}", "input_tokens": 20,
                                       "output_tokens": 10, "cost_usd": cost, "correct": ok}
                                   for m, (ok, cost) in answers.items()}})
    return rows


def test_a_set_without_a_signal_keeps_only_the_tiers_its_checks_can_vouch_for(tmp_path, capsys):
    # Given: a free-text set with no logprobs or samples, where the cheap model's answers always pass the
    # static checks and are wrong 60% of the time; and a set whose every line is broken
    (tmp_path / "arith.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _free_text_rows(200)))
    (tmp_path / "broken.jsonl").write_bytes(b"{not json\n" * 3)
    # When: the benchmark runs over the folder
    code = recorded.main(["--datasets", str(tmp_path)])
    out = capsys.readouterr()
    summary = orjson.loads(out.out.splitlines()[-1])
    # Then: the set without a signal is the dear tier alone: its accuracy, at its cost, and the target is met
    (arith,) = summary["sets"]
    assert arith["ladder"] == ["m-dear-model"] and arith["target"] == "drop=0.01" and arith["target_met"] is True
    assert arith["accuracy"] == arith["last_tier_accuracy"] == 0.9333 and arith["cost_ratio"] == 1.0
    # and the broken set is reported as not run, in one line, while the other ran; the exit code says so
    reason = f"broken: no training rows read from {tmp_path / 'broken.jsonl'}"
    assert code == 1 and summary["not_run"] == {"broken": reason}
    assert f"Warning: set broken not run: {reason}" in out.err


def test_the_reliable_hindsight_meets_the_target_on_nine_resampled_sets_in_ten_where_hindsight_does_not():
    from benchmarks.hindsight import RELIABILITY, reliable_hindsight
    from benchmarks.tuning_study import calibrated, synthetic_profiles
    from cascade.tuning.search import choose_ladder
    from cascade.tuning.target import Target

    # Given two tiers on 1,500 rows (costs 5 and 100), calibrated on those rows
    profiles = synthetic_profiles(1500, seed=3, costs=(5, 100), skills=(0.3, 1.5))
    values = calibrated(profiles, profiles)
    last_cost = sum(profiles[-1].cost_full)
    target = Target("drop", 0.01)
    # When the best in hindsight and the reliable hindsight are searched on them
    best, _ = choose_ladder(profiles, values, Target("drop", 0.01, 0.5), True, floor="none")
    found = reliable_hindsight(profiles, values, target, True, last_cost)
    # Then the best in hindsight spends the whole drop and meets it on about half the resampled sets; the reliable
    # one aims lower, meets it on nine in ten, and costs more, never more than the last tier alone
    assert 0.3 < found["hindsight_met"] < RELIABILITY
    assert found["met"] >= RELIABILITY and found["drop_share"] < 1
    assert best.cost / last_cost < found["cost_ratio"] <= 1
    assert reliable_hindsight(profiles, values, Target("accuracy", 0.8), True, last_cost) is None
