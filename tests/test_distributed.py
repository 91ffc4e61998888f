"""End to end on real Redis, real Celery workers (one per tier), the official SDKs over HTTP to the simulator."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from tests.cluster import (
    Workers,
    cascade_env,
    cluster_config,
    delete_namespace,
    predicted_decisions,
    read_jsonl,
    run_cli,
    write_tickets,
)

JOBS = 300


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory, redis_url, sim):
    """One 300-job batch through three worker processes: (config, rows, records, status summary)."""
    tmp = tmp_path_factory.mktemp("distributed")
    config, ns = cluster_config(tmp)
    rows = write_tickets(tmp / "jobs.jsonl", JOBS)
    env = cascade_env(redis_url, sim.url)
    workers = Workers(config, env, tmp)
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        out = tmp / "results.jsonl"
        done = run_cli(["cascade-submit", str(tmp / "jobs.jsonl"), "--pipeline", "ticket-triage", "--batch-id",
                        "dist-1", "--wait", "--out", str(out), "--config", str(config), "--no-progress"], env)
        assert done.returncode == 0, done.stderr.decode()
        status = run_cli(["cascade", "status", "dist-1", "--json", "--config", str(config)], env)
        assert status.returncode == 0, status.stderr.decode()
        yield config, rows, read_jsonl(out), orjson.loads(status.stdout), done.stderr.decode()
    finally:
        workers.close()
        delete_namespace(redis_url, ns)


def test_every_job_has_exactly_one_result(distributed_run):
    _, rows, records, summary, stderr = distributed_run
    assert len(records) == JOBS
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
    assert summary["done"] == JOBS and summary["jobs"] == JOBS
    assert "distributed mode" in stderr


def test_jobs_escalate_exactly_where_the_scenario_fails_verification(distributed_run):
    config, rows, records, _, _ = distributed_run
    expected = predicted_decisions(config, rows)
    got = {r["id"]: (r["status"], r["tier"]) for r in records}
    assert got == expected
    # the scenario makes the cheap tier fail often enough for every path to be exercised
    tiers = [tier for _, tier in expected.values()]
    assert tiers.count("cheap") > 0.6 * JOBS and tiers.count("mid") > 0 and tiers.count("frontier") > 0
    for rec in records:
        assert [a["tier"] for a in rec["attempts"]] == ["cheap", "mid", "frontier"][: len(rec["attempts"])]


def test_counters_equal_what_the_records_say(distributed_run):
    _, _, records, summary, _ = distributed_run
    for status, count in summary["statuses"].items():
        assert count == sum(r["status"] == status for r in records), status
    for tier in summary["tiers"]:
        name = tier["tier"]
        attempts = [a for r in records for a in r["attempts"] if a["tier"] == name]
        assert tier["attempts"] == len(attempts)
        assert tier["final_jobs"] == sum(r["tier"] == name for r in records)
        assert tier["escalated"] == sum(1 for r in records for a in r["attempts"][:-1] if a["tier"] == name)
        assert tier["output_tokens"] == sum(a["output_tokens"] for a in attempts)
    assert summary["duplicate_cost_usd"] == 0


def test_batch_cost_equals_the_sum_of_attempt_costs(distributed_run):
    _, _, records, summary, _ = distributed_run
    attempt_nanos = sum(round(a["cost_usd"] * 1e9) for r in records for a in r["attempts"])
    assert round(summary["cost_usd"] * 1e9) == attempt_nanos
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records), abs=1e-12)
    assert 0 < summary["cost_usd"] < summary["last_tier_only_cost_usd"]


def test_embedded_mode_gives_the_same_decisions(distributed_run, tmp_path, sim):
    config, _, records, _, _ = distributed_run
    write_tickets(tmp_path / "jobs.jsonl", JOBS)
    out = tmp_path / "embedded.jsonl"
    done = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "--pipeline", "ticket-triage",
                    "--out", str(out), "--config", str(config), "--no-progress"], cascade_env(None, sim.url))
    assert done.returncode == 0, done.stderr.decode()
    assert "embedded mode" in done.stderr.decode()
    embedded = {r["id"]: (r["status"], r["tier"]) for r in read_jsonl(out)}
    assert embedded == {r["id"]: (r["status"], r["tier"]) for r in records}


def test_a_killed_worker_loses_no_job_and_duplicates_none(tmp_path, redis_url, sim):
    # Given a short visibility timeout and a batch running on three workers
    config, ns = cluster_config(tmp_path, visibility_timeout_s=6)
    rows = write_tickets(tmp_path / "jobs.jsonl", JOBS)
    env = cascade_env(redis_url, sim.url)
    workers = Workers(config, env, tmp_path)
    try:
        cheap = workers.start("cheap", concurrency=4)
        workers.start("mid")
        workers.start("frontier")
        submit = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "--pipeline", "ticket-triage",
                          "--batch-id", "kill-1", "--config", str(config), "--no-progress"], env)
        assert submit.returncode == 0, submit.stderr.decode()
        # When the cheap worker is SIGKILLed mid-batch and a new one takes over
        deadline = time.monotonic() + 60
        while _done(env, config) < JOBS // 5:
            assert time.monotonic() < deadline, "batch made no progress"
            time.sleep(0.05)
        workers.kill(cheap)
        assert _done(env, config) < JOBS
        # the killed worker held messages it had not acked: they must come back through redelivery
        in_flight = [m for m in redis.Redis.from_url(redis_url).hvals("unacked") if b'"kill-1/' in m]
        assert in_flight
        workers.start("cheap", concurrency=4)
        out = tmp_path / "results.jsonl"
        follow = run_cli(["cascade", "results", "kill-1", "--follow", "--out", str(out), "--config", str(config)],
                         env, timeout=240)
        assert follow.returncode == 0, follow.stderr.decode()
        # Then every job has exactly one result, and the decisions are the scenario's
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
        assert {r["id"]: (r["status"], r["tier"]) for r in records} == predicted_decisions(config, rows)
    finally:
        workers.close()
        delete_namespace(redis_url, ns)


def _done(env, config) -> int:
    status = run_cli(["cascade", "status", "kill-1", "--json", "--config", str(config)], env)
    return orjson.loads(status.stdout)["done"] if status.returncode == 0 else 0
