"""Recorded answers over the full stack: the simulator serves them over HTTP, real Celery workers on real
Redis run the pipeline through the official SDK, and every job ends as `cascade replay` predicts."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from cascade.recorded import load_recorded
from cascade.simulator import SimServer, load_scenario
from cascade.tuning.replay import replay
from cascade.worker.config import load_settings
from tests.cluster import Workers, cascade_env, delete_namespace, read_jsonl, run_cli
from tests.helpers import REPO, copy_recorded_config

DATASETS = REPO.parent / "shared" / "datasets"

pytestmark = pytest.mark.skipif(not (DATASETS / "mmlu-oai-test.jsonl").exists(), reason=f"{DATASETS} is not here")


def recorded_config(tmp_path: Path) -> tuple[Path, str]:
    """examples/recorded/config with its own namespace and queue names, so tests share a Redis safely."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    target = tmp_path / "config"
    copy_recorded_config(target)
    path = target / "cascade.toml"
    text = path.read_text().replace('namespace = "recorded"', f'namespace = "{ns}"')
    for tier in ("mini", "qwen72", "gpt4o", "gpt35", "gpt4", "mixtral", "gpt4turbo"):
        text = text.replace(f"[tiers.{tier}]\n", f'[tiers.{tier}]\nqueue = "{ns}.tier.{tier}"\n')
    path.write_text(text + "\n[engine]\nbackoff_base_s = 0.05\n")
    return path, ns


@pytest.mark.parametrize(("dataset", "pipeline", "ladder", "rows"), [
    ("mmlu-oai-test.jsonl", "mmlu", ("mini", "qwen72", "gpt4o"), 60),             # answer-token logprobs
    ("date-mot.jsonl", "date-mot", ("gpt35", "gpt4"), 24),                        # 20 samples per call (n=20)
])
def test_workers_over_the_simulator_decide_like_replay(tmp_path, redis_url, dataset, pipeline, ladder, rows):
    # Given: recorded rows served by the simulator, and the pipeline with its shipped calibration
    lines = (DATASETS / dataset).read_bytes().splitlines()[:rows]
    recorded_file = tmp_path / "slice.jsonl"
    recorded_file.write_bytes(b"\n".join(lines) + b"\n")
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(f'seed = 1\nrecorded = "{recorded_file}"\n')
    config, ns = recorded_config(tmp_path)
    recorded = load_recorded(recorded_file)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"".join(orjson.dumps({"id": r.id, "system": r.system, "user": r.user}) + b"\n"
                              for r in recorded.rows))
    settings = load_settings(config, environ={})
    expected = replay(settings, settings.pipeline(pipeline), recorded)

    # When: the batch runs on one real worker per tier
    with SimServer(load_scenario(scenario)) as sim:
        env = cascade_env(redis_url, sim.url)
        workers = Workers(config, env, tmp_path)
        try:
            for tier in ladder:
                workers.start(tier, concurrency=4)
            done = run_cli(["cascade-submit", str(jobs), "--pipeline", pipeline, "--config", str(config), "--wait",
                            "--out", str(tmp_path / "results.jsonl"), "--no-progress", "--json"], env, timeout=120)
            assert done.returncode == 0, done.stderr.decode()
        finally:
            workers.close()
            delete_namespace(redis_url, ns)
        stats = sim.stats()

    # Then: the same decision for every job, at the same cost, every answer from the recording
    records = read_jsonl(tmp_path / "results.jsonl")
    assert {r["id"]: (r["status"], r["tier"]) for r in records} == expected.decisions
    by_id = {r["id"]: r for r in expected.records}
    for record in records:
        assert record["cost_usd"] == pytest.approx(by_id[record["id"]]["cost_usd"])
        assert record["output"] == by_id[record["id"]]["output"]
    assert len({tier for _, tier in expected.decisions.values()}) >= 2     # the slice does escalate
    answers = stats["totals"]["answers"]          # one per sample: a date-mot call answers with 20
    assert answers["correct"] + answers["wrong"] == sum(answers.values()) >= stats["totals"]["ok"] > 0
    summary = orjson.loads(done.stdout)
    assert summary["statuses"] == expected.report["statuses"]


def test_a_replay_in_batch_mode_decides_as_live_at_half_the_cost():
    settings = load_settings(REPO / "examples" / "recorded" / "config" / "cascade.toml", environ={})
    recorded = load_recorded(DATASETS / "mmlu-oai-test.jsonl")
    rows = recorded.rows[:300]
    live = replay(settings, settings.pipeline("mmlu"), recorded, rows)
    tiers = {n: t.model_copy(update={"mode": "batch", "batch_max_age_s": 0.2, "batch_poll_s": 0.1})
             for n, t in settings.tiers.items()}
    prices = {m: p.model_copy(update={"batch_discount": 0.5}) for m, p in settings.prices.items()}
    batched = settings.model_copy(update={"tiers": tiers, "prices": prices})
    result = replay(batched, batched.pipeline("mmlu"), recorded, rows)
    assert result.decisions == live.decisions
    assert result.report["accuracy"] == live.report["accuracy"]
    assert result.report["cost_usd"] == pytest.approx(live.report["cost_usd"] * 0.5, rel=1e-6)
    # the last tier alone is priced live: the ratio shows the discount
    assert result.report["last_tier_cost_usd"] == live.report["last_tier_cost_usd"]
    assert result.report["cost_ratio"] == pytest.approx(live.report["cost_ratio"] * 0.5, rel=1e-6)
