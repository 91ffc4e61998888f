"""The pre-router: calibrate fits it where the prompt says the cheap tier would not accept, the engine skips that
tier without a call, and a prompt without signal (or an old calibration file) routes nothing."""

from __future__ import annotations

import math
import random
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cascade.cli.main import cascade
from cascade.worker.config import load_settings
from cascade.worker.routing import Router, TierRouter, features, load_routers, prompt_text
from tests.helpers import copy_recorded_config

PIPELINE = """output = "label"
labels = ["A", "B", "C", "D"]
ladder = ["mini", "gpt4o"]
[prompt]
system = "{system}"
user = "{user}"
[verifiers]
default = [{ name = "choices" }, { name = "logprob", calibration = "calibration/mc2.json" }]
"""
TOPICS = ["geography", "history", "biology", "chemistry", "music", "poetry", "law", "sport"]


def answer(text: str, p: float, correct: bool) -> dict:
    return {"text": text, "input_tokens": 200, "output_tokens": 1, "logprob": math.log(p), "correct": correct}


def rows(n: int, signal: bool) -> list[dict]:
    """Half the questions ask for an integral. With `signal`, mini is unsure and wrong exactly on those (its call
    is wasted: it escalates); without, the unsure half of the rows is drawn at random, whatever the question asks."""
    draw = random.Random(5)
    out = []
    for i in range(n):
        integral = i % 2 == 0
        hard = integral if signal else draw.random() < 0.5
        topic = TOPICS[(i * 7) % len(TOPICS)]
        question = (f"Compute the integral of x^{i % 5} times {topic} density." if integral
                    else f"Which {topic} fact number {i % 9} is true?")
        mini = answer("A", 0.4, False) if hard else answer("A", 0.97, i % 20 != 0)
        big = answer("B", 0.9, i % 10 != 0)
        out.append({"id": f"r{i}", "split": "train", "gold": None,
                    "messages": [{"role": "system", "content": "Pick one."},
                                 {"role": "user", "content": f"Question {i}: {question}"}],
                    "responses": {"gpt-4o-mini": mini, "gpt-4o": big}})
    return out


@pytest.fixture
def config(tmp_path) -> Path:
    target = tmp_path / "config"
    copy_recorded_config(target)
    (target / "pipelines" / "mc2.toml").write_text(PIPELINE)
    return target / "cascade.toml"


def write(path: Path, data: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in data))
    return path


def run(*args: str):
    return CliRunner().invoke(cascade, list(args))


def replay(config: Path, recorded: Path, out: Path) -> tuple[dict, list[dict]]:
    result = run("replay", "-p", "mc2", "-r", str(recorded), "--config", str(config), "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout), [orjson.loads(line) for line in out.read_bytes().splitlines()]


def without_router(config: Path) -> None:
    path = config.parent / "calibration" / "mc2.json"
    data = orjson.loads(path.read_bytes())
    data.pop("router")
    path.write_bytes(orjson.dumps(data))


def test_a_keyword_that_predicts_a_wasted_cheap_call_is_routed_past_the_cheap_tier(config, tmp_path):
    recorded = write(tmp_path / "train.jsonl", rows(400, signal=True))
    # When calibrate fits the pipeline
    fit = run("calibrate", "-p", "mc2", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config),
              "--json")
    assert fit.exit_code == 0, fit.output
    report = orjson.loads(fit.stdout)
    # Then it enables the router for mini, with a cut, and the held-back cost falls at the same accuracy
    router = report["router"]
    assert router["enabled"], router["reason"]
    assert 0 < router["tiers"]["mini"]["cut"] < 1
    assert router["held_back_cost_ratio_with"] < router["held_back_cost_ratio_without"]
    assert router["held_back_accuracy_with"] == router["held_back_accuracy_without"]
    saved = orjson.loads((config.parent / "calibration" / "mc2.json").read_bytes())
    block = saved["router"]["mc2"]
    assert block["enabled"] and block["ladder"] == ["mini", "gpt4o"] and block["tiers"]["mini"]["weights"]
    # And a replay skips mini on the integral questions: a recorded skip that cost nothing, no call counted
    measured, records = replay(config, recorded, tmp_path / "with.jsonl")
    by_id = {r["id"]: r for r in records}
    for i in range(400):
        first = by_id[f"r{i}"]["attempts"][0]
        if i % 2 == 0:
            assert first["finish_reason"] == "routed" and first["cost_usd"] == 0
            assert first["verdicts"][0]["verifier"] == "router"
            assert first["verdicts"][0]["reason"].startswith("skipped by the router: P(accepts)")
            assert by_id[f"r{i}"]["tier"] == "gpt4o"
        else:
            assert first["finish_reason"] != "routed"
    assert measured["routed"] == {"mini": 0.5}
    mini = next(t for t in measured["tiers"] if t["tier"] == "mini")
    assert mini["attempts"] == 200
    # And the same calibration without the router costs more at the same accuracy
    without_router(config)
    before, _ = replay(config, recorded, tmp_path / "without.jsonl")
    assert before["routed"] == {"mini": 0.0}
    assert measured["cost_usd"] < before["cost_usd"]
    assert measured["accuracy"] == before["accuracy"]


def test_a_prompt_without_signal_enables_no_router(config, tmp_path):
    recorded = write(tmp_path / "train.jsonl", rows(400, signal=False))
    fit = run("calibrate", "-p", "mc2", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config),
              "--json")
    assert fit.exit_code == 0, fit.output
    report = orjson.loads(fit.stdout)
    assert not report["router"]["enabled"]
    assert report["router"]["reason"]
    saved = orjson.loads((config.parent / "calibration" / "mc2.json").read_bytes())
    assert saved["router"]["mc2"] == {"enabled": False, "reason": report["router"]["reason"]}
    measured, records = replay(config, recorded, tmp_path / "out.jsonl")
    assert measured["routed"] == {"mini": 0.0}
    assert not any(a["finish_reason"] == "routed" for r in records for a in r["attempts"])


def test_an_old_calibration_file_without_a_router_block_loads_and_routes_nothing(config, tmp_path):
    recorded = write(tmp_path / "train.jsonl", rows(400, signal=True))
    fit = run("calibrate", "-p", "mc2", "-r", str(recorded), "--target", "drop=0.05", "--config", str(config))
    assert fit.exit_code == 0, fit.output
    assert "router: enabled" in fit.output
    without_router(config)
    settings = load_settings(config, environ={})
    assert load_routers(settings.config_dir, settings.pipelines.values()) == {}
    measured, records = replay(config, recorded, tmp_path / "out.jsonl")
    assert measured["routed"] == {"mini": 0.0}
    assert all(r["attempts"][0]["tier"] == "mini" and r["attempts"][0]["finish_reason"] != "routed"
               for r in records)


def test_features_are_stable_and_the_start_index_skips_predicted_rejections():
    # crc32 buckets: the same in every process (Python's hash() of a str is not)
    assert features("Hello, hello world", 2 ** 18) == features("hello HELLO world!", 2 ** 18)
    assert len(features("a b c", 2 ** 18)) == 5           # three unigrams and two bigrams
    hard = features("integral", 2 ** 18)[0]
    router = Router(("mini", "qwen", "big"), 2 ** 18, {"mini": TierRouter(0.5, 1.0, {hard: -3.0}),
                                                      "qwen": TierRouter(0.5, 1.0, {})})
    assert router.start_index(prompt_text("Pick one.", "What is the integral?")) == 1
    assert router.start_index(prompt_text("Pick one.", "What is the capital?")) == 0
    assert router.skips("big", "integral") is None       # the last tier is never skipped
    assert Router.from_dict(orjson.loads(orjson.dumps(router.to_dict()))) == router
