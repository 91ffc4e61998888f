"""Shadow quality sampling on real Redis and real workers: a share of early accepts is re-run on the last tier,
its pairs reach the ledger, its cost stays out of the batch's, its budget caps it; rate 0 calls nothing."""

from __future__ import annotations

import subprocess
import time

import orjson
import pytest
import redis

from cascade.ledger.database import open_ledger
from cascade.ledger.writer import LedgerWriter
from cascade.ops.shadow import ShadowStore, same_answer, sampled
from cascade.simulator import SimServer
from cascade.verifiers.parsing import parse_output
from cascade.worker.config import load_settings
from cascade.worker.prompts import render
from tests.cluster import (
    BIN,
    Workers,
    cascade_env,
    cluster_config,
    delete_namespace,
    fast_scenario,
    read_jsonl,
    run_cli,
    write_tickets,
)

RATE = 0.5
BUDGET_USD = 0.02       # one frontier shadow call costs ~$0.0005: the 40-job batch fits, the 160-job one does not


def shadow_config(tmp, rate: float, budget: float = 0.0):
    config, ns = cluster_config(tmp)
    text = config.read_text().replace("rate = 0.0 ", f"rate = {rate} ").replace(
        "budget_usd = 0.0              # per batch cap", f"budget_usd = {budget}              # per batch cap")
    config.write_text(text.replace("[shadow]\n", f'[shadow]\nqueue = "{ns}.shadow.frontier"\n'))
    return config, ns


@pytest.fixture(scope="module")
def sim():
    with SimServer(fast_scenario()) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_url, sim):
    """Workers for every tier plus one shadow worker of the last tier, shadow rate 0.5, budget $0.02."""
    tmp = tmp_path_factory.mktemp("shadow")
    config, ns = shadow_config(tmp, RATE, BUDGET_USD)
    env = cascade_env(redis_url, sim.url)
    workers = Workers(config, env, tmp)
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        workers.start("frontier", args=("--shadow",))
        yield tmp, config, env, load_settings(config, environ={"CASCADE_REDIS_URL": redis_url}), workers
    finally:
        workers.close()
        delete_namespace(redis_url, ns)


def run_batch(cluster, batch: str, n: int) -> tuple[dict[str, dict], list[dict]]:
    """Submit n tickets and wait for them: (input fields by job id, result records)."""
    tmp, config, env, _, _ = cluster
    rows = write_tickets(tmp / f"{batch}.jsonl", n)
    out = tmp / f"{batch}.out.jsonl"
    done = run_cli(["cascade-submit", str(tmp / f"{batch}.jsonl"), "-p", "ticket-triage", "--batch-id", batch,
                    "--wait", "--out", str(out), "--config", str(config), "--no-progress"], env)
    assert done.returncode == 0, done.stderr.decode()
    return {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in rows}, read_jsonl(out)


def early_accepts(records: list[dict]) -> list[dict]:
    """Records accepted below the last tier: the candidates for shadowing."""
    return [r for r in records if r["status"] == "accepted" and r["tier"] != "frontier"]


def shadow_counters(settings, batch: str) -> dict[str, int]:
    client = redis.Redis.from_url(settings.redis.url)
    raw = client.hgetall(ShadowStore(client, settings.redis.namespace).keys.batch(batch))
    return {k.decode(): int(v) for k, v in raw.items() if k.startswith(b"shadow_")}


def wait_for_shadows(settings, batch: str, expected: int, timeout_s: float = 40) -> dict[str, int]:
    """Poll until `expected` sampled jobs were shadowed or skipped, moving pairs into the ledger meanwhile."""
    client = redis.Redis.from_url(settings.redis.url)
    ledger = open_ledger(settings)
    writer = LedgerWriter(settings, client, ledger)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            writer.drain()
            c = shadow_counters(settings, batch)
            if c.get("shadow_jobs", 0) + c.get("shadow_skipped", 0) >= expected or time.monotonic() > deadline:
                writer.drain()
                return c
            time.sleep(0.3)
    finally:
        ledger.close()


def frontier_agreement(settings, sim, record: dict, fields: dict) -> int:
    """Whether the frontier model's answer to this job equals the accepted one, from the scenario alone."""
    pipe = settings.pipeline("ticket-triage")
    _, user = render(pipe.prompt, fields)
    answer = sim.scenario.answer(settings.tiers["frontier"].model, user)
    return int(same_answer("json", (record["output"], record["parsed"]), (answer.text, parse_output(answer.text, "json"))))


def test_a_share_of_early_accepts_is_shadowed_on_the_last_tier_apart_from_the_batch_cost(cluster, sim):
    # Given a 40-job batch (its shadow calls fit the budget) and the simulator's counts before it
    _, config, env, settings, _ = cluster
    before = sim.stats()["models"].get(settings.tiers["frontier"].model, {}).get("ok", 0)
    fields, records = run_batch(cluster, "shadow-a", 40)
    candidates = early_accepts(records)
    chosen = [r for r in candidates if sampled("shadow-a", r["id"], RATE)]
    # When every sampled job was shadowed
    counters = wait_for_shadows(settings, "shadow-a", len(chosen))
    # Then the pairs in the ledger are exactly the sampled jobs, about half of the early accepts
    ledger = open_ledger(settings)
    try:
        pairs = {p["job_id"]: p for p in ledger.shadow_pairs("ticket-triage") if p["batch_id"] == "shadow-a"}
    finally:
        ledger.close()
    assert set(pairs) == {r["id"] for r in chosen}
    assert 0.3 * len(candidates) <= len(pairs) <= 0.7 * len(candidates)
    assert counters.get("shadow_skipped", 0) == 0
    # ... each agreeing exactly where the scenario says the frontier model answers the same
    by_id = {r["id"]: r for r in records}
    for job_id, pair in pairs.items():
        assert pair["tier"] == by_id[job_id]["tier"] and pair["shadow_tier"] == "frontier"
        assert pair["agree"] == frontier_agreement(settings, sim, by_id[job_id], fields[job_id]), job_id
    assert counters["shadow_jobs"] == len(pairs)
    assert counters["shadow_agree"] == sum(p["agree"] for p in pairs.values())
    # ... their cost is in the shadow counters, not in the batch's cost
    assert counters["shadow_cost"] == sum(p["cost_nanos"] for p in pairs.values()) > 0
    status = run_cli(["cascade", "status", "shadow-a", "--json", "--config", str(config)], env)
    summary = orjson.loads(status.stdout)
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records), abs=1e-9)
    assert summary["shadow"]["jobs"] == len(pairs)
    assert summary["shadow"]["cost_usd"] == pytest.approx(counters["shadow_cost"] / 1e9)
    text = run_cli(["cascade", "status", "shadow-a", "--config", str(config)], env).stdout.decode()
    assert f"shadow (on frontier, not in the cost above): {len(pairs)} jobs" in text
    # ... and the simulator answered one frontier call per frontier attempt plus one per shadow pair
    frontier_attempts = sum(a["tier"] == "frontier" for r in records for a in r["attempts"])
    after = sim.stats()["models"][settings.tiers["frontier"].model]["ok"]
    assert after - before == frontier_attempts + len(pairs)


def test_the_shadow_budget_stops_shadowing(cluster):
    # Given a 160-job batch whose sampled jobs would cost about twice the $0.02 shadow budget
    settings = cluster[3]
    _, records = run_batch(cluster, "shadow-b", 160)
    chosen = [r for r in early_accepts(records) if sampled("shadow-b", r["id"], RATE)]
    counters = wait_for_shadows(settings, "shadow-b", len(chosen))
    # Then shadowing stopped at the cap: the rest were skipped, and the spend stayed under it
    assert counters["shadow_skipped"] > 0
    assert counters["shadow_jobs"] + counters["shadow_skipped"] == len(chosen)
    assert 0 < counters["shadow_cost"] <= BUDGET_USD * 1e9
    assert counters.get("shadow_reserved", 0) == 0


def test_a_killed_shadow_worker_loses_no_real_work_and_pays_nothing_twice(cluster):
    # Given a batch running while the shadow worker is killed (SIGKILL) once it has shadowed a job or two
    tmp, config, env, settings, workers = cluster
    shadow = next(p for name, p in workers.procs.items() if name.startswith("frontier") and p.poll() is None
                  and "--shadow" in p.args)
    rows = write_tickets(tmp / "shadow-c.jsonl", 80)
    out = tmp / "shadow-c.out.jsonl"
    submit = subprocess.Popen([str(BIN / "cascade-submit"), str(tmp / "shadow-c.jsonl"), "-p", "ticket-triage",
                               "--batch-id", "shadow-c", "--wait", "--out", str(out), "--config", str(config),
                               "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while shadow_counters(settings, "shadow-c").get("shadow_jobs", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers.kill(shadow)
    workers.start("frontier", args=("--shadow",))
    assert submit.wait(timeout=120) == 0, submit.stderr.read().decode()
    records = read_jsonl(out)
    chosen = [r for r in early_accepts(records) if sampled("shadow-c", r["id"], RATE)]
    # When the new shadow worker has run what is left (the killed one's jobs in hand are lost)
    counters = wait_for_shadows(settings, "shadow-c", len(chosen) - 3)
    time.sleep(1.0)
    counters = wait_for_shadows(settings, "shadow-c", len(chosen) - 3)
    # Then every real job has its one result, and each shadow pair is stored and paid for once
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
    ledger = open_ledger(settings)
    try:
        pairs = [p for p in ledger.shadow_pairs("ticket-triage") if p["batch_id"] == "shadow-c"]
    finally:
        ledger.close()
    assert counters["shadow_jobs"] == len(pairs) == len({p["job_id"] for p in pairs})
    assert counters["shadow_cost"] == sum(p["cost_nanos"] for p in pairs)
    assert len(chosen) - 3 <= len(pairs) + counters.get("shadow_skipped", 0) <= len(chosen)


def test_rate_zero_makes_no_shadow_calls_embedded(tmp_path):
    # Given embedded mode (no Redis URL) with shadow rate 0, and with rate 0.5 for comparison
    for rate, name in ((0.0, "off"), (RATE, "on")):
        config, _ = shadow_config(tmp_path / name, rate)
        with SimServer(fast_scenario()) as server:
            env = cascade_env(None, server.url)
            rows = write_tickets(tmp_path / name / "jobs.jsonl", 60)
            out = tmp_path / name / "out.jsonl"
            done = run_cli(["cascade-submit", str(tmp_path / name / "jobs.jsonl"), "-p", "ticket-triage",
                            "--batch-id", f"emb-{name}", "--out", str(out), "--config", str(config), "--no-progress",
                            "--json"], env)
            assert done.returncode == 0, done.stderr.decode()
            records = read_jsonl(out)
            frontier_attempts = sum(a["tier"] == "frontier" for r in records for a in r["attempts"])
            calls = server.stats()["models"].get(load_settings(config, environ={}).tiers["frontier"].model, {})
            chosen = [r for r in early_accepts(records) if sampled(f"emb-{name}", r["id"], rate)]
            summary = orjson.loads(done.stdout)
        # Then rate 0 calls the frontier only for real work; rate 0.5 adds one call per sampled job
        assert len(rows) == len(records)
        assert calls.get("ok", 0) == frontier_attempts + len(chosen)
        assert summary["shadow"]["jobs"] == len(chosen)
        assert (len(chosen) > 0) == (rate > 0)


def test_a_drift_entry_changes_a_models_outcomes_from_a_job_index_on():
    from cascade.errors import ConfigError
    from cascade.simulator import parse_scenario

    scenario = parse_scenario('[models.m]\noutcome = { correct = 1.0 }\n[[drift]]\nmodel = "m"\n'
                              "index = 'Ticket #(\\d+):'\nfrom = 10\noutcome = { wrong = 1.0 }\n", "s.toml")
    assert scenario.outcome("m", "Ticket #9: x") == "correct"
    assert scenario.outcome("m", "Ticket #10: x") == "wrong"
    assert scenario.outcome("other", "Ticket #10: x") == "correct"
    with pytest.raises(ConfigError, match=r"s.toml: drift\[0\].index: needs a group"):
        parse_scenario('[[drift]]\nmodel = "m"\nindex = "x"\nfrom = 1\noutcome = { wrong = 1.0 }\n', "s.toml")
    with pytest.raises(ConfigError, match=r"drift\[0\].outcome: probabilities sum to 0.5, not 1"):
        parse_scenario('[[drift]]\nmodel = "m"\nindex = "(x)"\nfrom = 1\noutcome = { wrong = 0.5 }\n', "s.toml")


def test_agreement_is_on_the_parsed_output():
    assert same_answer("json", ('{"a": 1, "b": 2}', {"a": 1, "b": 2}), ('```json\n{"b": 2, "a": 1}```', {"b": 2, "a": 1}))
    assert not same_answer("json", ("{}", None), ("{}", None))      # an unparsable answer agrees with nothing
    assert same_answer("label", ("B", "B"), ("(B) Paris", "B"))
    assert same_answer("text", ("Paris  is the capital.", None), ("paris is the capital.", None))
    assert not same_answer("text", ("Paris", None), ("Lyon", None))
