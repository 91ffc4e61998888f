"""Batch-mode tiers end to end: real Redis, real `cascade worker` processes, the official SDKs' Batch APIs
against the simulator (OpenAI Files + Batches for the cheap tier, Anthropic Message Batches for the others)."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx2
import orjson
import pytest

from cascade.simulator import SimServer
from tests.cluster import (
    BIN,
    Workers,
    cascade_env,
    cluster_config,
    delete_namespace,
    fast_scenario,
    predicted_decisions,
    read_jsonl,
    run_cli,
    write_tickets,
)

TIERS = ("cheap", "mid", "frontier")
DISCOUNT = 0.5          # config/cascade.toml: batch_discount of every model


@pytest.fixture(scope="module")
def sim():
    with SimServer(fast_scenario()) as server:
        yield server


def control(sim, **values) -> dict:
    return httpx2.post(f"{sim.url}/control", json=values).raise_for_status().json()


def batch_stats(sim) -> dict:
    return httpx2.get(f"{sim.url}/stats").raise_for_status().json()["batches"]


def batch_env(env: dict[str, str], tiers=TIERS, max_age_s: float = 0.5, poll_s: float = 0.3) -> dict[str, str]:
    """`env` with these tiers in batch mode, flushed and polled quickly."""
    out = dict(env)
    for tier in tiers:
        name = tier.upper()
        out |= {f"CASCADE_TIER_{name}_MODE": "batch", f"CASCADE_TIER_{name}_BATCH_MAX_AGE_S": str(max_age_s),
                f"CASCADE_TIER_{name}_BATCH_POLL_S": str(poll_s)}
    return out


def mixed(env: dict[str, str]) -> dict[str, str]:
    """`env` with only the cheap tier in batch mode, the later tiers live: a mixed pipeline."""
    out = {k: v for k, v in env.items() if not k.startswith(("CASCADE_TIER_MID_", "CASCADE_TIER_FRONTIER_"))}
    return batch_env(out, tiers=("cheap",))


@pytest.fixture()
def cluster(tmp_path, redis_url, sim):
    """(config, env with every tier in batch mode, workers, tmp); the namespace is removed after."""
    config, ns = cluster_config(tmp_path)
    env = batch_env(cascade_env(redis_url, sim.url))
    sim.reset_stats()
    control(sim, batch_delay_s=0.5, batch_error_rate=0.0, batch_expire_next=0)
    workers = Workers(config, env, tmp_path)
    try:
        yield config, env, workers, tmp_path
    finally:
        workers.close()
        delete_namespace(redis_url, ns)


def submit(config, env, tmp, batch: str, n: int, timeout: float = 240) -> tuple[list[dict], list[dict]]:
    rows = write_tickets(tmp / f"{batch}.jsonl", n)
    out = tmp / f"{batch}-results.jsonl"
    done = run_cli(["cascade-submit", str(tmp / f"{batch}.jsonl"), "--pipeline", "ticket-triage", "--batch-id", batch,
                    "--wait", "--out", str(out), "--config", str(config), "--no-progress"], env, timeout=timeout)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return rows, read_jsonl(out)


def attempt_costs(records: list[dict]) -> dict[tuple[str, str], float]:
    return {(r["id"], a["tier"]): a["cost_usd"] for r in records for a in r["attempts"]}


def test_a_three_tier_batch_in_batch_mode_decides_as_live_at_the_discounted_cost(cluster, sim):
    config, env, workers, tmp = cluster
    live_env = cascade_env(None, sim.url)            # the same rows live, embedded, on the same answers
    rows = write_tickets(tmp / "live.jsonl", 1000)
    live_out = tmp / "live-results.jsonl"
    done = run_cli(["cascade-submit", str(tmp / "live.jsonl"), "--pipeline", "ticket-triage", "--wait", "--out",
                    str(live_out), "--config", str(config), "--no-progress"], live_env, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    live = read_jsonl(live_out)
    for tier in TIERS:
        workers.start(tier)
    sim.reset_stats()
    rows_b, records = submit(config, env, tmp, "bm-1000", 1000)
    assert rows_b == rows
    assert len(records) == 1000 and len({r["id"] for r in records}) == 1000
    decisions = {r["id"]: (r["status"], r["tier"]) for r in records}
    assert decisions == {r["id"]: (r["status"], r["tier"]) for r in live}
    assert decisions == predicted_decisions(config, rows)
    live_costs, costs = attempt_costs(live), attempt_costs(records)
    assert costs.keys() == live_costs.keys()
    for key, cost in costs.items():
        assert cost == pytest.approx(live_costs[key] * DISCOUNT, abs=2e-9), key
    # the counterfactual stays every job on the last tier, live: the savings include the discount
    for r, l in zip(sorted(records, key=lambda r: r["id"]), sorted(live, key=lambda r: r["id"])):
        assert r["counterfactual_usd"] == pytest.approx(l["counterfactual_usd"], abs=2e-9)
    stats = batch_stats(sim)
    escalated_once = sum(len(r["attempts"]) >= 2 for r in records)
    escalated_twice = sum(len(r["attempts"]) >= 3 for r in records)
    # one line per attempt, plus one for each line the scenario's error rates failed (sent again, alone)
    assert stats["requests"] == 1000 + escalated_once + escalated_twice + stats["errored_lines"], stats
    assert stats["duplicate_submissions"] == 0


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_worker_killed_while_its_provider_batch_runs_applies_it_once_after_restart(cluster, sim):
    config, env, workers, tmp = cluster
    config.write_text(config.read_text().replace("lease_s = 15", "lease_s = 5"))   # the restart waits less
    env = workers.env = mixed(env)
    control(sim, batch_delay_s=6.0)
    first = workers.start("cheap")
    for tier in ("mid", "frontier"):
        workers.start(tier)
    rows = write_tickets(tmp / "kill.jsonl", 300)
    out = tmp / "kill-results.jsonl"
    producer = subprocess.Popen([str(BIN / "cascade-submit"), str(tmp / "kill.jsonl"), "--pipeline", "ticket-triage",
                                 "--batch-id", "bm-kill", "--wait", "--out", str(out), "--config", str(config),
                                 "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # the producer's rows arrive over a second or two: they may go out as more than one provider batch
        def open_batches() -> list[dict]:
            status = run_cli(["cascade", "status", "bm-kill", "--json", "--config", str(config)], env)
            if b"no batch 'bm-kill'" in status.stderr:
                return []           # the producer has not opened it yet
            assert status.returncode == 0, status.stderr.decode()
            return orjson.loads(status.stdout)["provider_batches"]["cheap"]

        wait_for(lambda: sum(b["requests"] for b in open_batches() if b["state"] == "submitted") == 300, 30,
                 "the cheap tier's provider batches")
        open_batches = open_batches()
        assert batch_stats(sim)["requests"] == 300 and all(b["status"] == "in_progress" for b in open_batches)
        text = run_cli(["cascade", "status", "bm-kill", "--config", str(config)], env).stdout.decode()
        assert f"provider batches on cheap: {len(open_batches)} open" in text
        for b in open_batches:
            assert f"{b['id']}: in_progress, {b['requests']} requests, 0 succeeded" in text
        workers.kill(first)                     # in the middle of the provider's processing
        workers.start("cheap")
        _, stderr = producer.communicate(timeout=180)
        assert producer.returncode == 0, stderr.decode()[-3000:]
    finally:
        if producer.poll() is None:
            producer.kill()
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
    assert {r["id"]: (r["status"], r["tier"]) for r in records} == predicted_decisions(config, rows)
    stats = batch_stats(sim)
    assert stats["duplicate_submissions"] == 0
    # the restarted worker polled the same provider batch: nothing resent but the lines that errored
    assert stats["requests"] == 300 + stats["errored_lines"]
    summary = orjson.loads(run_cli(["cascade", "status", "bm-kill", "--json", "--config", str(config)], env).stdout)
    assert summary["done"] == 300 and summary["provider_batches"]["cheap"] == []


def test_errored_and_expired_lines_alone_are_sent_again(cluster, sim):
    config, env, workers, tmp = cluster
    env = workers.env = mixed(env)
    control(sim, batch_delay_s=0.3, batch_error_rate=0.2, batch_expire_next=1)
    for tier in TIERS:
        workers.start(tier)
    rows, records = submit(config, env, tmp, "bm-errors", 200)
    assert {r["id"]: (r["status"], r["tier"]) for r in records} == predicted_decisions(config, rows)
    stats = batch_stats(sim)
    assert stats["expired_lines"] > 0 and stats["errored_lines"] > 0
    assert stats["duplicate_submissions"] == 0
    # every line sent again was one that errored or expired: 200 first lines, plus one per failed line
    assert stats["requests"] == 200 + stats["errored_lines"] + stats["expired_lines"]
    assert stats["created"] >= 2


def test_cancelling_a_batch_cancels_its_provider_batches(cluster, sim):
    config, env, workers, tmp = cluster
    control(sim, batch_delay_s=30.0)
    for tier in TIERS:
        workers.start(tier)
    rows = write_tickets(tmp / "cancel.jsonl", 50)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(done=run_cli(
        ["cascade-submit", str(tmp / "cancel.jsonl"), "--pipeline", "ticket-triage", "--batch-id", "bm-cancel",
         "--wait", "--config", str(config), "--no-progress"], env, timeout=120)))
    thread.start()
    wait_for(lambda: batch_stats(sim)["created"] >= 1, 30, "the provider batch")
    cancelled = run_cli(["cascade", "cancel", "bm-cancel", "--config", str(config)], env)
    assert cancelled.returncode == 0, cancelled.stderr.decode()
    thread.join(timeout=120)
    summary = orjson.loads(run_cli(["cascade", "status", "bm-cancel", "--json", "--config", str(config)], env).stdout)
    assert summary["statuses"].get("cancelled") == len(rows)
    assert batch_stats(sim)["canceled_lines"] == len(rows)


def test_a_scheduled_run_of_a_pipeline_with_a_batch_mode_tier_finishes(cluster, sim):
    config, env, workers, tmp = cluster
    env = workers.env = mixed(env)
    config.write_text(config.read_text() + """
[schedules.nightly]
pipeline = "ticket-triage"
input = "in/tickets-{date}.jsonl"
cron = "0 2 * * *"
""")
    (config.parent / "in").mkdir()
    rows = write_tickets(config.parent / "in" / "tickets-2026-12-01.jsonl", 40)
    for tier in TIERS:
        workers.start(tier)
    run = run_cli(["cascade", "schedules", "--config", str(config), "run", "nightly", "--date", "2026-12-01"], env)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode() == "nightly-2026-12-01\n"
    wait_for(lambda: orjson.loads(run_cli(["cascade", "status", "nightly-2026-12-01", "--json", "--config",
                                           str(config)], env).stdout)["done"] == 40, 60, "the scheduled batch")
    out = tmp / "nightly.jsonl"
    got = run_cli(["cascade", "results", "nightly-2026-12-01", "--follow", "--out", str(out), "--config",
                   str(config)], env)
    assert got.returncode == 0, got.stderr.decode()
    records = read_jsonl(out)
    assert {r["id"]: (r["status"], r["tier"]) for r in records} == predicted_decisions(config, rows)
    assert batch_stats(sim)["requests"] == 40 + batch_stats(sim)["errored_lines"]    # the cheap tier, as batches


def test_a_redis_restart_while_provider_batches_run_loses_nothing_and_sends_nothing_twice(tmp_path, sim):
    # Given a private Redis with AOF, a mixed pipeline's workers, and 200 jobs parked in provider batches
    from tests.redis_server import PrivateRedis

    server = PrivateRedis(tmp_path / "redis").start()
    config, _ = cluster_config(tmp_path)
    env = mixed(batch_env(cascade_env(server.url, sim.url)))
    sim.reset_stats()
    control(sim, batch_delay_s=4.0, batch_error_rate=0.0, batch_expire_next=0)
    workers = Workers(config, env, tmp_path)
    producer = None
    try:
        procs = [workers.start(tier) for tier in TIERS]
        rows = write_tickets(tmp_path / "restart.jsonl", 200)
        out = tmp_path / "restart-results.jsonl"
        producer = subprocess.Popen([str(BIN / "cascade-submit"), str(tmp_path / "restart.jsonl"), "--pipeline",
                                     "ticket-triage", "--batch-id", "bm-restart", "--wait", "--out", str(out),
                                     "--config", str(config), "--no-progress"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        wait_for(lambda: batch_stats(sim)["requests"] >= 200, 30, "the cheap tier's provider batches")
        # When Redis shuts down while the provider works, and comes back two seconds later
        server.shutdown()
        time.sleep(2)
        server.start()
        _, stderr = producer.communicate(timeout=180)
        # Then the producer and every worker lived through it, every job has one result, and no line went twice
        assert producer.returncode == 0, stderr.decode()[-3000:]
        assert all(p.poll() is None for p in procs), "a worker died"
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
        assert {r["id"]: (r["status"], r["tier"]) for r in records} == predicted_decisions(config, rows)
        stats = batch_stats(sim)
        assert stats["duplicate_submissions"] == 0
        assert stats["requests"] == 200 + stats["errored_lines"]
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        workers.close()
        server.stop()
