"""calibrate picks a sub-ladder: tiers that never pay are skipped, never costlier than the last tier alone."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cascade.cli.main import cascade
from cascade.recorded import load_recorded
from tests.helpers import copy_recorded_config

PIPELINE = """output = "label"
labels = ["A", "B", "C", "D"]
ladder = ["mini", "qwen72", "gpt4o"]
[prompt]
system = "{system}"
user = "{user}"
[verifiers]
default = [{ name = "choices" }, { name = "logprob", calibration = "calibration/mc3.json" }]
"""


def answer(text: str, p: float, correct: bool, tokens: int = 100) -> dict:
    return {"text": text, "input_tokens": tokens, "output_tokens": 1, "logprob": math.log(p), "correct": correct}


def rows(n: int, mini_right_when_sure: bool = True) -> list[dict]:
    """mini: sure on half the rows (right there unless told otherwise); qwen72: always unsure, right 60%;
    gpt-4o: right 90%."""
    out = []
    for i in range(n):
        sure = i % 2 == 0
        mini = answer("A", 0.97 if sure else 0.4, (sure and mini_right_when_sure) or (not sure and i % 3 == 0))
        qwen = answer("B", 0.35 + 0.1 * (i % 3), i % 5 < 3)
        big = answer("C", 0.9, i % 10 != 0)
        out.append({"id": f"r{i}", "split": "train", "gold": None,
                    "messages": [{"role": "system", "content": "Pick one."},
                                 {"role": "user", "content": f"Question {i}?"}],
                    "responses": {"gpt-4o-mini": mini, "qwen2.5-72b-instruct": qwen, "gpt-4o": big}})
    return out


@pytest.fixture
def config(tmp_path) -> Path:
    target = tmp_path / "config"
    copy_recorded_config(target)
    (target / "pipelines" / "mc3.toml").write_text(PIPELINE)
    return target / "cascade.toml"


def write(path: Path, data: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data))
    return path


def run(*args: str):
    return CliRunner().invoke(cascade, list(args))


def test_a_middle_tier_that_never_pays_is_skipped_and_replay_never_calls_it(config, tmp_path):
    recorded = write(tmp_path / "train.jsonl", rows(120))
    # When calibrate fits the three-tier ladder
    fit = run("calibrate", "-p", "mc3", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config),
              "--json")
    assert fit.exit_code == 0, fit.output
    report = orjson.loads(fit.stdout)
    # Then the unsure middle tier is skipped, with the reason, and the file records it
    assert report["feasible"] and report["ladder"] == ["mini", "gpt4o"]
    assert list(report["skipped"]) == ["qwen72"]
    assert report["skipped"]["qwen72"].startswith("cheaper without it")
    assert report["cost_ratio"] < 1
    saved = orjson.loads((config.parent / "calibration" / "mc3.json").read_bytes())
    assert saved["skip"] == {"mc3": ["qwen72"]}
    # And the engine runs without it: the replay never calls qwen72 and costs what the fit expected
    replayed = run("replay", "-p", "mc3", "-r", str(recorded), "--config", str(config), "--json",
                   "--out", str(tmp_path / "out.jsonl"))
    assert replayed.exit_code == 0, replayed.output
    measured = orjson.loads(replayed.stdout)
    assert measured["escalation"] == pytest.approx(report["escalation"])
    assert measured["cost_usd"] == pytest.approx(report["cost_usd"])
    tiers = {a["tier"] for line in (tmp_path / "out.jsonl").read_bytes().splitlines()
             for a in orjson.loads(line)["attempts"]}
    assert tiers == {"mini", "gpt4o"}


def test_calibrate_tells_its_progress_step_by_step(config, tmp_path):
    from cascade.tuning.calibrate import Target, calibrate
    from cascade.worker.config import load_settings

    settings = load_settings(config, environ={}, check_verifiers=False)
    recorded = load_recorded(write(tmp_path / "train.jsonl", rows(60)))
    steps = []
    calibrate(settings, settings.pipeline("mc3"), recorded, Target.parse("drop=0.05"),
              progress=lambda done, total, what: steps.append((done, total, what)))
    assert steps == [(0, 8, "replaying mini over 60 rows"), (1, 8, "replaying qwen72 over 60 rows"),
                     (2, 8, "replaying gpt4o over 60 rows"), (3, 8, "searching thresholds of gpt4o"),
                     (4, 8, "searching thresholds of mini -> gpt4o"), (5, 8, "searching thresholds of qwen72 -> gpt4o"),
                     (6, 8, "searching thresholds of mini -> qwen72 -> gpt4o"), (7, 8, "fitting the pre-router"),
                     (8, 8, "done")]
    # the command shows them on stderr when asked (and its JSON report on stdout stays one line)
    fit = run("calibrate", "-p", "mc3", "-r", str(tmp_path / "train.jsonl"), "--target", "drop=0.05",
              "--config", str(config), "--json", "--progress")
    assert fit.exit_code == 0, fit.output
    assert orjson.loads(fit.stdout)["rows"] == 60


def test_no_cascade_beats_the_last_tier_alone_warns_and_costs_no_more_than_it(config, tmp_path):
    # Given: mini is sure and wrong, qwen72 never sure: every cascade either loses accuracy or costs more
    recorded = write(tmp_path / "train.jsonl", rows(120, mini_right_when_sure=False))
    fit = run("calibrate", "-p", "mc3", "-r", str(recorded), "--target", "drop=0.01", "--config", str(config))
    assert fit.exit_code == 0, fit.output
    assert "WARNING: no cascade beats the last tier alone on these rows: every job goes to gpt4o" in fit.output
    assert "ratio 1.000" in fit.output
    saved = orjson.loads((config.parent / "calibration" / "mc3.json").read_bytes())
    assert saved["skip"] == {"mc3": ["mini", "qwen72"]}


def test_calibrate_stands_alone_and_writes_nothing_when_the_fit_fails(config, tmp_path):
    # Given another pipeline in the folder whose calibration file does not exist
    other = config.parent / "pipelines" / "other.toml"
    other.write_text(PIPELINE.replace("mc3.json", "other.json"))
    recorded = write(tmp_path / "train.jsonl", rows(60))
    fit = run("calibrate", "-p", "mc3", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config))
    assert fit.exit_code == 0, fit.output
    assert not (config.parent / "calibration" / "other.json").exists()
    # A fit that fails (a model the recording lacks) leaves no placeholder behind
    lacking = write(tmp_path / "lacking.jsonl", [{**r, "responses": {"gpt-4o": r["responses"]["gpt-4o"]}}
                                                 for r in rows(10)])
    failed = run("calibrate", "-p", "other", "-r", str(lacking), "--config", str(config))
    assert failed.exit_code == 1
    assert "model 'gpt-4o-mini' has no responses in" in failed.output
    assert not (config.parent / "calibration" / "other.json").exists()


def test_recorded_readers_take_non_finite_logprobs_and_skip_a_bad_row_by_line(config, tmp_path):
    good = rows(4)
    lines = [orjson.dumps(r) for r in good]
    lines[1] = lines[1].replace(b'"logprob":' + orjson.dumps(math.log(0.4)), b'"logprob":-Infinity', 1)
    lines[2] = lines[2].replace(b'"logprob":' + orjson.dumps(math.log(0.97)), b'"logprob":NaN', 1)
    lines.insert(3, b'{"id": "broken", "messages": [')
    # and rows that are JSON but not recorded rows, each skipped with what is wrong in the format's words
    bad, kept = rows(1)[0], rows(6)[4:]       # the two rows that keep their place: r4 and r5
    mini = bad["responses"]["gpt-4o-mini"]
    lines += [b"[1, 2]", orjson.dumps({k: v for k, v in bad.items() if k != "responses"}),
              orjson.dumps({**bad, "responses": "oops"}),
              orjson.dumps({**kept[0], "responses": {**kept[0]["responses"], "gpt-4o-mini": {**mini, "text": None}}}),
              orjson.dumps({**kept[1], "responses": {**kept[1]["responses"], "gpt-4o-mini": {**mini, "logprob": 5.0}}}),
              orjson.dumps({**bad, "responses": {**bad["responses"], "gpt-4o-mini": {**mini, "correct": "yes"}}})]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    seen: list[str] = []
    data = load_recorded(path, on_bad_row=seen.append)
    # a null text and a logprob above 0 keep their row, read as a live call would return them
    assert [r.id for r in data.rows] == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert data.rows[1].responses["gpt-4o-mini"].logprob == -math.inf
    assert data.rows[2].responses["gpt-4o-mini"].logprob is None
    assert data.rows[4].responses["gpt-4o-mini"].text == "" and data.rows[5].responses["gpt-4o-mini"].logprob is None
    assert len(data.skipped) == 5 and set(data.skipped) <= set(seen)
    assert seen[0].startswith(f"{path}: line 4: skipped, not a recorded row: not JSON (")
    assert [s.split(": ", 2)[2] for s in seen[1:]] == [
        "skipped, not a recorded row: expected a JSON object, got a list",
        "skipped, not a recorded row: missing field 'responses'",
        "skipped, not a recorded row: responses must be an object of model name -> response object",
        "responses.gpt-4o-mini.text is null: read as no answer",
        "responses.gpt-4o-mini.logprob 5 is above 0, no log-probability: read as unknown",
        "skipped, not a recorded row: responses.gpt-4o-mini.correct must be true, false or null, got a string"]
    assert [s.split(": ", 2)[1] for s in seen] == [f"line {n}" for n in (4, 6, 7, 8, 9, 10, 11)]
    # the CLI replays the rest and says which line it skipped
    (config.parent / "pipelines" / "mc3.toml").write_text(PIPELINE.replace(
        'calibration = "calibration/mc3.json"', "threshold = 0.9"))
    replayed = run("replay", "-p", "mc3", "-r", str(path), "--config", str(config), "--json")
    assert replayed.exit_code == 0, replayed.output
    assert orjson.loads(replayed.stdout)["jobs"] == 6
    assert f"Warning: {path}: line 4: skipped" in replayed.stderr
    # a file that is no recording at all is refused once its first ten lines are refused, not line by line
    other = run("replay", "-p", "mc3", "-r", str(config), "--config", str(config))      # cascade.toml, given by mistake
    assert other.exit_code == 1
    assert other.stderr.splitlines()[-1] == (f"Error: {config}: not a recorded file: its first 10 lines are not "
                                             "recorded rows")
    assert other.stderr.count("Warning: ") == 10


def test_rows_without_a_tiers_response_are_left_out_and_named(config, tmp_path):
    # Given: 60 rows, 8 of them with no gpt-4o response recorded (r3, r11, ..., r59)
    data = rows(60)
    for i in range(3, 60, 8):
        del data[i]["responses"]["gpt-4o"]
    path = write(tmp_path / "rec.jsonl", data)
    # When: calibrate and replay run on it
    fit = run("calibrate", "-p", "mc3", "-r", str(path), "--config", str(config), "--json")
    replayed = run("replay", "-p", "mc3", "-r", str(path), "--config", str(config), "--json")
    # Then: both run on the 52 complete rows and say which rows they left out, and why
    note = f"Warning: {path}: 8 rows have no response of gpt-4o and are left out (first: id r3)"
    assert fit.exit_code == 0 and replayed.exit_code == 0, fit.output + replayed.output
    assert orjson.loads(fit.stdout)["rows"] == 52 and orjson.loads(replayed.stdout)["jobs"] == 52
    assert note in fit.stderr and note in replayed.stderr
    # and a recording where every model answered some rows but no row has all three is refused in one line
    no_qwen = {**data[0], "responses": {m: a for m, a in data[0]["responses"].items() if m != "qwen2.5-72b-instruct"}}
    broken = write(tmp_path / "broken.jsonl", [data[3], no_qwen])
    refused = run("replay", "-p", "mc3", "-r", str(broken), "--config", str(config))
    assert refused.exit_code == 1
    assert refused.output.startswith(f"Error: {broken}: no row has a response of every tier's model; {broken}: "
                                     "1 row has no response of gpt-4o")


def test_a_few_shot_prompt_is_read_with_its_assistant_turns(config, tmp_path):
    # Given: rows whose prompt is a conversation: an example question, its answer, then the question
    data = rows(6)
    for r in data:
        question = r["messages"][1]["content"]
        r["messages"][1:] = [{"role": "user", "content": "Example?"}, {"role": "assistant", "content": "B"},
                             {"role": "user", "content": question}]
    path = write(tmp_path / "shots.jsonl", data)
    # When: the file is read and replayed
    (config.parent / "pipelines" / "mc3.toml").write_text(PIPELINE.replace(
        'calibration = "calibration/mc3.json"', "threshold = 0.9"))
    replayed = run("replay", "-p", "mc3", "-r", str(path), "--config", str(config), "--json")
    # Then: no row is skipped; the user text is the conversation's transcript, and every row is replayed
    loaded = load_recorded(path)
    assert not loaded.skipped and loaded.rows[0].user == "User: Example?\n\nAssistant: B\n\nUser: Question 0?"
    assert replayed.exit_code == 0, replayed.output
    assert orjson.loads(replayed.stdout)["jobs"] == 6 and "Warning" not in replayed.stderr


def test_an_answer_without_a_recorded_verdict_is_graded_by_its_final_line_against_gold():
    from cascade.recorded import RecordedResponse

    def graded(text: str, gold: str | None, correct: bool | None = None) -> bool | None:
        return RecordedResponse("m", text, 1, 1, correct=correct).answer_correct(text, gold)

    assert graded("(B)", "B") and graded("Working it out.\n\n**b.**", "B") and graded("6 * 7\n#### 42", "42")
    assert graded("(A)", "B") is False and graded("The answer is 42", "42") is False and graded("", "A") is False
    assert graded("(A)", "B", correct=True) is True and graded("(B)", None) is None   # the recorded verdict wins


def unlabelled(data: list[dict]) -> list[dict]:
    return [{**r, "responses": {m: {k: v for k, v in a.items() if k != "correct"} for m, a in r["responses"].items()}}
            for r in data]


def test_rows_without_labels_are_fitted_on_agreement_with_the_last_tier(config, tmp_path):
    # Given: no row says what is right; mini agrees with gpt-4o exactly where it is sure
    data = rows(120)
    for i, r in enumerate(data):
        r["responses"]["gpt-4o-mini"]["text"] = "C" if i % 2 == 0 else "A"
    recorded = write(tmp_path / "train.jsonl", unlabelled(data))
    fit = run("calibrate", "-p", "mc3", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config),
              "--json")
    assert fit.exit_code == 0, fit.output
    report = orjson.loads(fit.stdout)
    # Then agreement is the label: the sure half agrees, so it is accepted; the rest goes to gpt-4o
    assert report["labels"] == "agreement with the last tier"
    assert report["ladder"] == ["mini", "gpt4o"] and report["escalation"] == {"mini": 0.5}
    assert report["accuracy"] == 1.0 and report["last_tier_accuracy"] == 1.0
    # and the report for people says so, and names a tier that never accepts as such
    shown = run("calibrate", "-p", "mc3", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config))
    assert "rows: 120; agreement with the last tier 100.0% (last tier alone 100.0%)" in shown.stderr
    assert "labels: none in the rows (no correct, no gold): right means agreeing with the last tier" in shown.stderr
    assert "qwen72 never" in shown.stderr and "thresholds (calibrated P(agree)): " in shown.stderr
    # asked for on labelled rows, it says the labels were set aside, not that there were none
    labelled = write(tmp_path / "labelled.jsonl", data)
    asked = run("calibrate", "-p", "mc3", "-r", str(labelled), "--label-free", "--target", "drop=0.05", "--config",
                str(config))
    assert asked.exit_code == 0, asked.output
    assert "labels: not used (--label-free): right means agreeing with the last tier" in asked.stderr


def test_calibrate_names_an_unknown_pipeline_and_rows_without_any_score(config, tmp_path):
    recorded = write(tmp_path / "train.jsonl", rows(20))
    unknown = run("calibrate", "-p", "nope", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config))
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == (f"Error: unknown pipeline 'nope' (in {config.parent / 'pipelines'}: date-mot, "
                                      "gsm8k, mc3, medmcqa, mmlu)")
    no_score = write(tmp_path / "nan.jsonl", [{**r, "responses": {m: {**a, "logprob": math.nan}
                                                                  for m, a in r["responses"].items()}}
                                              for r in rows(20)])
    fit = run("calibrate", "-p", "mc3", "-r", str(no_score), "--target", "drop=0.05", "--config", str(config))
    assert fit.exit_code == 1
    assert fit.stderr.strip() == (f"Error: {no_score}: no row gives mini, qwen72, gpt4o a score (a finite logprob, or "
                                  "samples to agree) that passed the checks before it: nothing to calibrate")
    assert not (config.parent / "calibration" / "mc3.json").exists()
    # a pipeline with nothing to calibrate says so, not "give --out" (which then led to the same end)
    static = run("calibrate", "-p", "gsm8k", "-r", str(recorded), "--config", str(config))
    assert static.exit_code == 1
    assert static.stderr.strip() == "Error: pipeline gsm8k has no logprob or self_consistency verifier to calibrate"


def test_calibrate_from_the_ledgers_shadow_pairs_raises_a_threshold_that_disagrees(config, tmp_path):
    from cascade.ledger.database import Ledger, ledger_url

    # a ledger never written to holds no pairs (it was "no such table: shadow_pairs")
    fresh = run("calibrate", "--from-ledger", "mc3", "--target", "drop=0.05", "--config", str(config))
    assert fresh.exit_code == 1
    assert fresh.stderr.strip() == ("Error: pipeline mc3: no shadow pairs with a score of a calibrated tier in the "
                                    "ledger (is [shadow] rate set, and have batches run?)")
    ledger = Ledger(ledger_url("", config.parent))
    ledger.migrate()
    # 200 answers mini accepted, shadowed on gpt-4o: those with raw confidence below 0.9 disagree half the time
    pairs = []
    for i in range(200):
        raw = 0.8 + 0.2 * i / 200
        agree = int(raw >= 0.9 or i % 2 == 0)
        attempt = {"tier": "mini", "verdicts": [{"verifier": "choices", "passed": True},
                   {"verifier": "logprob", "passed": True, "score": raw,
                    "reason": f"confidence {raw:.3f} (raw {raw:.4f}) >= 0.8"}]}
        pairs.append({"batch_id": "b1", "job_id": f"j{i}", "pipeline": "mc3", "tier": "mini", "shadow_tier": "gpt4o",
                      "output": "A", "shadow_output": "A" if agree else "B", "agree": agree, "cost_nanos": 10,
                      "attempt": attempt})
    assert ledger.write_shadow_pairs(pairs) == 200
    fit = run("calibrate", "--from-ledger", "mc3", "--target", "drop=0.05", "--config", str(config), "--json")
    assert fit.exit_code == 0, fit.output
    report = orjson.loads(fit.stdout)
    assert report["pairs"] == {"mini": 200} and report["agreement"]["mini"] == pytest.approx(0.75)
    kept = report["thresholds"]["mini"]["accepted_share_of_pairs"]
    assert 0.4 < kept <= 0.55                      # about the half at raw >= 0.9, where every pair agrees
    saved = orjson.loads((config.parent / "calibration" / "mc3.json").read_bytes())
    assert saved["labels"].startswith("agreement") and saved["tiers"]["mini"]["samples"] == 200
    (config.parent / "pipelines" / "quiet.toml").write_text(PIPELINE.replace("mc3.json", "quiet.json"))
    empty = run("calibrate", "--from-ledger", "quiet", "--config", str(config))
    assert empty.exit_code == 1
    assert "Error: pipeline quiet: no shadow pairs with a score of a calibrated tier in the ledger" in empty.output


def test_estimate_projects_cost_and_escalation_from_the_calibration_without_calls(config, tmp_path):
    recorded = write(tmp_path / "train.jsonl", rows(120))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(orjson.dumps({"id": f"j{i}", "system": "Pick one.", "user": f"Question {i}?"}).decode()
                            + "\n" for i in range(50)) + '{"id": "j50"}\n')
    before = run("estimate", str(jobs), "-p", "mc3", "--config", str(config), "--json")
    assert before.exit_code == 1 and "calibration/mc3.json" in before.output   # no file yet: the config cannot load
    fit = run("calibrate", "-p", "mc3", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config),
              "--json")
    fitted = orjson.loads(fit.stdout)
    out = run("estimate", str(jobs), "-p", "mc3", "--config", str(config), "--json")
    assert out.exit_code == 0, out.output
    report = orjson.loads(out.stdout)
    assert report["rows"] == 50 and report["skipped_rows"] == 1
    assert f"{jobs}: line 51: missing field 'system', 'user' used by the prompt" in out.stderr
    assert report["ladder"] == ["mini", "gpt4o"]
    assert report["projected_escalation"] == fitted["escalation"]
    assert report["projected_accuracy"] == fitted["accuracy"]
    assert report["cheapest_cost_usd"] < report["expected_cost_usd"] < report["last_tier_alone_cost_usd"]
    assert report["last_tier_alone_cost_usd"] < report["worst_case_cost_usd"]

    # A recorded file of the same 50 prompts (and one broken line) is estimated as those jobs are
    same = write(tmp_path / "same.jsonl", rows(50))
    with same.open("ab") as f:
        f.write(b'{"id": "broken", "messages": \n')
    recorded_out = run("estimate", str(same), "-p", "mc3", "--config", str(config), "--json")
    assert recorded_out.exit_code == 0, recorded_out.output
    assert orjson.loads(recorded_out.stdout) == report
    assert f"{same}: line 51: skipped, not a recorded row" in recorded_out.stderr
    # and a pipeline whose prompt needs other fields than a recorded row fills is refused in one line
    (config.parent / "pipelines" / "tickets.toml").write_text(PIPELINE.replace('"{user}"', '"{subject}: {body}"'))
    refused = run("estimate", str(same), "-p", "tickets", "--config", str(config))
    assert refused.exit_code == 1
    assert refused.stderr.strip().endswith("prompt: uses subject, body; a recorded row fills only {system} and "
                                           "{user} (its messages)")


def test_the_simulator_serves_a_recorded_minus_infinity_logprob_as_the_api_does(tmp_path):
    from cascade.simulator import parse_scenario

    line = orjson.dumps(rows(1)[0]).replace(b'"logprob":' + orjson.dumps(math.log(0.97)), b'"logprob":-Infinity', 1)
    recorded = tmp_path / "rec.jsonl"
    recorded.write_bytes(line + b"\n")
    scenario = parse_scenario(f'recorded = "{recorded}"\n[[rules]]\nmatch = ".*"\nanswer = "rule"\n')
    answers, _ = scenario.recorded_answers("gpt-4o-mini", ("Pick one.", "Question 0?"), 1, True)
    assert answers[0].logprobs == (("A", -9999.0),)
