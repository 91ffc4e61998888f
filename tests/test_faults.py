"""Faults are normal events, on real processes: a private Redis (AOF everysec) restarted under busy workers,
poison messages, a wrong key, vanished messages, batch control. Nothing is lost, stuck or failed for good."""

from __future__ import annotations

import subprocess
import time

import orjson
import redis

from cascade.worker.celery_app import ATTEMPT_TASK, create_app
from cascade.worker.config import load_settings
from tests.cluster import (
    BIN,
    Workers,
    cascade_env,
    cluster_config,
    delete_namespace,
    predicted_decisions,
    read_jsonl,
    run_cli,
    write_tickets,
)
from tests.redis_server import PrivateRedis


def fast_reconciler(text: str) -> str:
    """Config edits for fault tests: short leases and sweeps, so recovery shows within seconds."""
    edits = {"backoff_max_s = 20.0": "backoff_max_s = 1.0", "lease_s = 15": "lease_s = 3",
             "heartbeat_s = 2": "heartbeat_s = 0.5", "sweep_s = 2 ": "sweep_s = 0.5 "}
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def counters_match_records(summary: dict, records: list[dict]) -> None:
    """The batch's counters say what its records say."""
    assert summary["done"] == len(records) == summary["jobs"]
    for status, count in summary["statuses"].items():
        assert count == sum(r["status"] == status for r in records), status
    for tier in summary["tiers"]:
        assert tier["attempts"] == sum(1 for r in records for a in r["attempts"] if a["tier"] == tier["tier"])
    attempt_nanos = sum(round(a["cost_usd"] * 1e9) for r in records for a in r["attempts"])
    assert round(summary["cost_usd"] * 1e9) == attempt_nanos


def status(env, config, batch) -> dict:
    done = run_cli(["cascade", "status", batch, "--json", "--config", str(config)], env)
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)


def test_a_redis_restart_mid_batch_loses_nothing_and_every_worker_survives(tmp_path, sim):
    # Given a private Redis with AOF, three workers, and a 600-job batch waited on by cascade-submit
    server = PrivateRedis(tmp_path / "redis").start()
    config, ns = cluster_config(tmp_path)
    config.write_text(fast_reconciler(config.read_text()))
    rows = write_tickets(tmp_path / "jobs.jsonl", 600)
    env = cascade_env(server.url, sim.url)
    workers = Workers(config, env, tmp_path)
    try:
        procs = [workers.start("cheap", concurrency=4), workers.start("mid"), workers.start("frontier")]
        out = tmp_path / "results.jsonl"
        submit = subprocess.Popen([str(workers.bin / "cascade-submit"), str(tmp_path / "jobs.jsonl"), "-p",
                                   "ticket-triage", "--batch-id", "restart-1", "--wait", "--out", str(out),
                                   "--config", str(config), "--no-progress"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 60
        while int(client.hget(f"{ns}:batch:restart-1", "done") or 0) < 100:
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.05)
        # When Redis shuts down mid-batch and comes back two seconds later
        server.shutdown()
        time.sleep(2)
        server.start()
        try:
            _, stderr = submit.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            submit.kill()
            raise AssertionError(f"cascade-submit --wait did not end: {_dump(server.url, ns, 'restart-1')}") from None
        # Then the waiting producer and every worker lived through it, and every job has exactly one result
        assert submit.returncode == 0, stderr.decode()[-3000:]
        assert all(p.poll() is None for p in procs), "a worker died"
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
        assert {r["id"]: (r["status"], r["tier"]) for r in records} == predicted_decisions(config, rows)
        counters_match_records(status(env, config, "restart-1"), records)
        logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
        assert "Unrecoverable error" not in logs and "CRITICAL" not in logs
    finally:
        workers.close()
        server.stop()


def test_results_follow_waits_out_a_redis_restart(tmp_path, sim):
    # Given a private Redis, a batch submitted while no worker runs, and `cascade results --follow` on it
    server = PrivateRedis(tmp_path / "redis").start()
    config, _ = cluster_config(tmp_path)
    rows = write_tickets(tmp_path / "jobs.jsonl", 60)
    env = cascade_env(server.url, sim.url)
    workers = Workers(config, env, tmp_path)
    follow = None
    try:
        submitted = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id",
                             "follow-1", "--config", str(config)], env)
        assert submitted.returncode == 0, submitted.stderr.decode()
        out = tmp_path / "results.jsonl"
        follow = subprocess.Popen([str(BIN / "cascade"), "results", "follow-1", "--follow", "--out", str(out),
                                   "--config", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not out.exists():     # it opens the file once it found the batch: from then on it follows
            assert time.monotonic() < deadline and follow.poll() is None, "cascade results did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        # When Redis shuts down under it, comes back two seconds later, and then the workers run the batch
        server.shutdown()
        time.sleep(2)
        server.start()
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        _, stderr = follow.communicate(timeout=120)
        # Then it said it was waiting, waited, and wrote every record once
        assert follow.returncode == 0, stderr.decode()[-3000:]
        assert "cascade results: Redis unreachable while reading the batch" in stderr.decode()
        assert sorted(r["id"] for r in read_jsonl(out)) == sorted(r["id"] for r in rows)
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        workers.close()
        server.stop()


def test_a_poison_message_is_dead_lettered_and_the_worker_goes_on(tmp_path, redis_url, sim):
    # Given a worker, and garbage of every kind on its queue ahead of a real batch
    config, ns = cluster_config(tmp_path)
    env = cascade_env(redis_url, sim.url)
    settings = load_settings(config, environ=env)
    queue = settings.tiers["cheap"].queue_name
    client = redis.Redis.from_url(redis_url)
    app = create_app(settings)
    task = app.tasks[ATTEMPT_TASK]
    client.lpush(queue, b"\x00\xffnot json at all")                                      # raw bytes
    client.lpush(queue, orjson.dumps({"foo": 1}))                                         # JSON, not an envelope
    client.lpush(queue, orjson.dumps({"body": "%%%", "properties": {"delivery_tag": "x", "body_encoding": "base64"},
                                      "headers": {"task": ATTEMPT_TASK}, "content-type": "application/json"}))
    task.apply_async(args=({"b": "nope", "p": "ticket-triage", "id": "x", "t": 7, "s": 1},), queue=queue)
    task.apply_async(args=({"foo": 1},), queue=queue)
    app.close()
    rows = write_tickets(tmp_path / "jobs.jsonl", 50)
    workers = Workers(config, env, tmp_path)
    try:
        worker = workers.start("cheap")
        workers.start("mid")
        workers.start("frontier")
        out = tmp_path / "results.jsonl"
        done = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "p-1",
                        "--wait", "--out", str(out), "--config", str(config), "--no-progress"], env)
        # Then the batch ran in full, the worker is alive, and each poison message is dead-lettered with its reason
        assert done.returncode == 0, done.stderr.decode()
        assert len(read_jsonl(out)) == len(rows) and worker.poll() is None
        letters = [orjson.loads(raw) for raw in client.lrange(f"{ns}:deadletter", 0, -1)]
        reasons = sorted(entry["reason"] for entry in letters)
        assert len(reasons) == 5, reasons
        assert any(r.startswith("the envelope is not JSON") for r in reasons)
        assert "the envelope has no properties.delivery_tag" in reasons
        assert "the body is not base64" in reasons
        assert any(r.startswith("tier index 7 is past the end of pipeline 'ticket-triage'") for r in reasons)
        assert any(r.startswith("not a job message") for r in reasons)
        log = (tmp_path / "worker-cheap-1.log").read_text()
        assert "Unrecoverable error" not in log and log.count("poison message") == 5
    finally:
        workers.close()
        delete_namespace(redis_url, ns)
        client.close()


def test_a_wrong_key_stops_the_tier_and_a_worker_restarted_with_the_right_one_finishes(tmp_path, redis_url, sim):
    # Given a simulator that takes only key "right", and a cheap worker started with the wrong one
    config, ns = cluster_config(tmp_path)
    env = cascade_env(redis_url, sim.url)
    rows = write_tickets(tmp_path / "jobs.jsonl", 40)
    workers = Workers(config, env, tmp_path)
    import httpx2

    httpx2.post(sim.url + "/control", json={"api_key": "right"})
    try:
        wrong = workers.start("cheap", env={**env, "CASCADE_PROVIDER_API_KEY": "wrong"})
        workers.start("mid", env={**env, "CASCADE_PROVIDER_API_KEY": "right"})
        workers.start("frontier", env={**env, "CASCADE_PROVIDER_API_KEY": "right"})
        submit = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "k-1",
                          "--config", str(config), "--no-progress"], env)
        assert submit.returncode == 0, submit.stderr.decode()
        # When the tier meets the 401: it stops, with one ERROR line, and no job fails
        deadline = time.monotonic() + 30
        while "STOPPED tier cheap" not in (shown := run_cli(["cascade", "status", "k-1", "--config", str(config)],
                                                            env).stdout.decode()):
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert "openai 401: Incorrect API key provided (simulated)." in shown
        assert status(env, config, "k-1")["statuses"]["failed"] == 0
        time.sleep(1)
        log = (tmp_path / "worker-cheap-1.log").read_text()
        assert log.count("ERROR cascade.engine: tier cheap stopped") == 1
        assert "Fix the key or model, then restart its workers: the work resumes." in log
        # Then the key is fixed and the worker restarted: the batch finishes, every job accepted
        wrong.terminate()
        wrong.wait(timeout=30)
        workers.start("cheap", env={**env, "CASCADE_PROVIDER_API_KEY": "right"})
        out = tmp_path / "results.jsonl"
        follow = run_cli(["cascade", "results", "k-1", "--follow", "--out", str(out), "--config", str(config)], env,
                         timeout=120)
        assert follow.returncode == 0, follow.stderr.decode()
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
        assert {r["status"] for r in records} <= {"accepted", "accepted_unverified"}
    finally:
        httpx2.post(sim.url + "/control", json={"api_key": None})
        workers.close()
        delete_namespace(redis_url, ns)


def test_jobs_whose_messages_vanished_are_published_again_once(tmp_path, redis_url, sim):
    # Given a submitted batch whose queued messages vanish before any worker runs (a worker killed with them
    # popped but unread), and one job leased by a worker that then died mid-call
    config, ns = cluster_config(tmp_path)
    config.write_text(fast_reconciler(config.read_text()))
    env = cascade_env(redis_url, sim.url)
    rows = write_tickets(tmp_path / "jobs.jsonl", 30)
    submit = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "v-1",
                      "--config", str(config), "--no-progress"], env)
    assert submit.returncode == 0, submit.stderr.decode()
    settings = load_settings(config, environ=env)
    client = redis.Redis.from_url(redis_url)
    from cascade.worker.store import Keys

    assert client.delete(*Keys.queue_lists(settings.tiers["cheap"].queue_name)) == 1
    from cascade.worker.store import JobStore

    lease = JobStore(client, ns).take_lease("v-1", rows[0]["id"], 0, "cheap", 1, "dead@gone-1", lease_ms=1000,
                                            reserve_per_token=0.0, reserve_per_call=0, max_deliveries=10)
    assert lease.code == 0
    workers = Workers(config, env, tmp_path)
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        out = tmp_path / "results.jsonl"
        follow = run_cli(["cascade", "results", "v-1", "--follow", "--out", str(out), "--config", str(config)], env,
                         timeout=120)
        assert follow.returncode == 0, follow.stderr.decode()
        # Then every job ran, exactly once, and each was published again exactly once
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
        summary = status(env, config, "v-1")
        counters_match_records(summary, records)
        assert int(client.hget(f"{ns}:batch:v-1", "republished")) == len(rows)
        assert summary["duplicate_cost_usd"] == 0
    finally:
        workers.close()
        delete_namespace(redis_url, ns)
        client.close()


def test_cancel_budget_and_retry_over_real_workers(tmp_path, redis_url, sim):
    config, ns = cluster_config(tmp_path)
    env = cascade_env(redis_url, sim.url)
    rows = write_tickets(tmp_path / "jobs.jsonl", 30)
    workers = Workers(config, env, tmp_path)
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        # Given a batch whose budget fits about ten worst-case cheap calls
        out = tmp_path / "results.jsonl"
        first = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "r-1",
                         "--budget", "0.0009", "--wait", "--out", str(out), "--config", str(config),
                         "--no-progress"], env)
        # Then it ends with exit status 5 and says the budget ran out
        assert first.returncode == 5, first.stderr.decode()
        assert "budget: ran out: " in first.stderr.decode()
        before = status(env, config, "r-1")
        short = before["statuses"]["budget_exhausted"]
        assert short > 0 and before["cost_usd"] <= 0.0009
        # When the budget is raised and those jobs are retried
        assert run_cli(["cascade", "budget", "r-1", "1", "--config", str(config)], env).returncode == 0
        retried = run_cli(["cascade", "retry", "r-1", "--status", "budget_exhausted", "--config", str(config)], env)
        assert retried.returncode == 0 and f"{short} jobs put back" in retried.stderr.decode()
        again = tmp_path / "again.jsonl"
        follow = run_cli(["cascade", "results", "r-1", "--follow", "--out", str(again), "--config", str(config)], env)
        assert follow.returncode == 0, follow.stderr.decode()
        # Then they ran once more from where they stopped, and the counters add up
        after = status(env, config, "r-1")
        assert after["statuses"]["budget_exhausted"] == 0 and after["done"] == len(rows)
        retried_records = [r for r in read_jsonl(again) if r.get("retry_round") == 1]
        assert len(retried_records) == short
        assert after["cost_usd"] > before["cost_usd"]
        # And a cancelled batch ends its queued jobs cancelled, without a call
        workers.close()
        second = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "c-1",
                          "--config", str(config), "--no-progress"], env)
        assert second.returncode == 0
        assert run_cli(["cascade", "cancel", "c-1", "--config", str(config)], env).returncode == 0
        workers = Workers(config, env, tmp_path)
        workers.start("cheap")
        cancelled = tmp_path / "cancelled.jsonl"
        follow = run_cli(["cascade", "results", "c-1", "--follow", "--out", str(cancelled), "--config", str(config)], env)
        assert follow.returncode == 0
        assert {r["status"] for r in read_jsonl(cancelled)} == {"cancelled"}
        assert status(env, config, "c-1")["cost_usd"] == 0
    finally:
        workers.close()
        delete_namespace(redis_url, ns)


def _dump(url: str, ns: str, batch: str) -> str:
    """The state a stuck batch was left in, for the failure message."""
    client = redis.Redis.from_url(url)
    lines = [str({k.decode(): v.decode() for k, v in client.hgetall(f"{ns}:batch:{batch}").items()
                  if not k.startswith((b"lat", b"reject", b"in_tok", b"out_tok", b"cached", b"verify", b"cost:"))})]
    lines.append(f"live: {list(client.hgetall(f'{ns}:batch:{batch}:live').items())[:10]}")
    lines.append(f"leased: {client.zrange(f'{ns}:leased', 0, 10, withscores=True)}")
    for tier in ("cheap", "mid", "frontier"):
        lines.append(f"{tier}: queued {client.zrange(f'{ns}:queued:{tier}', 0, 5, withscores=True)} "
                     f"taken {client.get(f'{ns}:tier:{tier}:taken')} seq {client.get(f'{ns}:tier:{tier}:seq')} "
                     f"list {client.llen(f'{ns}.tier.{tier}')}")
    lines.append(f"workers: {list(client.hgetall(f'{ns}:workers'))}")
    return "\n".join(lines)


def test_a_producer_killed_mid_submit_and_run_again_writes_each_record_once(tmp_path, redis_url, sim):
    # Given workers and a --wait producer SIGKILLed once a third of its input is registered and records are written
    config, ns = cluster_config(tmp_path)
    env = cascade_env(redis_url, sim.url)
    rows = write_tickets(tmp_path / "jobs.jsonl", 1500)
    out = tmp_path / "results.jsonl"
    command = ["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "pk-1", "--wait",
               "--out", str(out), "--config", str(config), "--no-progress"]
    workers = Workers(config, env, tmp_path)
    client = redis.Redis.from_url(redis_url)
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        producer = subprocess.Popen([str(BIN / command[0]), *command[1:]], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        written = lambda: out.read_bytes().count(b"\n") if out.exists() else 0
        while int(client.hget(f"{ns}:batch:pk-1", "total") or 0) < 500 or written() < 10:
            assert time.monotonic() < deadline and producer.poll() is None
            time.sleep(0.02)
        producer.kill()
        producer.wait()
        # When the same command runs again
        again = run_cli(command, env, timeout=240)
        # Then it resumes, and the file holds every job's record once
        assert again.returncode == 0, again.stderr.decode()
        ids = [r["id"] for r in read_jsonl(out)]
        assert len(ids) == len(set(ids)) == len(rows)
    finally:
        workers.close()
        delete_namespace(redis_url, ns)
