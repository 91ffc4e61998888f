"""A Redis that restarts without its data (or is flushed) while a batch runs: the producer notices, opens the batch
again and submits what Redis forgot, without running again what the ledger holds; readers say the batch will not
finish instead of waiting for it. Real Redis servers that keep nothing on disk, real workers, the simulator."""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from cascade.ledger.database import Ledger
from cascade.producer.reader import RawRow
from cascade.producer.submit import Submitter
from cascade.simulator import SimServer
from cascade.worker.backends import open_backend
from cascade.worker.config import load_settings
from cascade.worker.store import Keys
from tests.cluster import BIN, Workers, cascade_env, cluster_config, fast_scenario, read_jsonl, run_cli, write_tickets
from tests.redis_server import PrivateRedis


@pytest.fixture(scope="module")
def sim():
    with SimServer(fast_scenario()) as server:
        yield server


@contextmanager
def producer(tmp_path: Path, server: PrivateRedis, batch: str, chunk_size: int = 500):
    """The namespace of settings on `server` (rows registered `chunk_size` at a time), a backend, and a Submitter
    that opened `batch` of the ticket pipeline; the backend is closed after."""
    config, ns = cluster_config(tmp_path)
    config.write_text(config.read_text().replace("chunk_size = 500", f"chunk_size = {chunk_size}"))
    settings = load_settings(config, environ={"CASCADE_REDIS_URL": server.url})
    backend = open_backend(settings)
    try:
        submitter = Submitter(backend, settings, settings.pipeline("ticket-triage"), batch)
        submitter.open("jobs.jsonl")
        yield ns, backend, submitter
    finally:
        backend.close()


def _rows(tickets: list[dict], flush: redis.Redis | None = None, after: int = 0):
    """The tickets as input rows; with `flush`, the Redis database is emptied once `after` rows were read."""
    for line, ticket in enumerate(tickets, start=1):
        if flush is not None and line == after + 1:
            flush.flushdb()
        yield RawRow(line, ticket)


def test_a_batch_flushed_away_while_it_is_submitted_is_opened_again_and_every_row_registered(tmp_path):
    # Given a private Redis, a producer feeding 50 rows in chunks of 10, and the database emptied after 25 rows
    server = PrivateRedis(tmp_path / "redis", appendonly=False).start()
    try:
        tickets = write_tickets(tmp_path / "jobs.jsonl", 50)
        with producer(tmp_path, server, "lost-1", chunk_size=10) as (ns, backend, submitter):
            client = redis.Redis.from_url(server.url)
            # When it reads its input
            first = submitter.run(_rows(tickets, flush=client, after=25))
            # Then it noticed the batch was gone, opened it again, and knows it forgot the rows registered before
            assert submitter.lost and submitter.forgot()
            assert first.published == 50 and backend.store.batch("lost-1").total == 30   # 1-20 gone with the flush
            again = submitter.resubmit(_rows(tickets))
            # and reading the input again registers exactly those: 50 jobs, one message each, a batch of its pipeline
            assert again.published == 20 and again.already_submitted == 30 and not submitter.forgot()
            record = backend.store.batch("lost-1")
            assert record.pipeline == "ticket-triage" and record.total == 50 and record.state == "submitted"
            keys = Keys(ns)
            # (the queued set is what a worker's reconciler publishes again from, were a message lost)
            assert client.hlen(keys.jobs("lost-1")) == 50 and client.zcard(keys.queued("cheap")) == 50
    finally:
        server.stop()


def test_a_restart_that_keeps_the_data_is_seen_and_the_input_read_again_registers_nothing_twice(tmp_path):
    # Given a private Redis with its AOF, and a batch of 20 rows submitted
    server = PrivateRedis(tmp_path / "redis", appendonly=True).start()
    try:
        tickets = write_tickets(tmp_path / "jobs.jsonl", 20)
        with producer(tmp_path, server, "kept-1") as (_, backend, submitter):
            assert submitter.run(_rows(tickets)).published == 20 and not submitter.forgot()
            # When Redis restarts (a restart the client may retry through without a word)
            server.shutdown()
            server.start()
            # Then the producer sees another server, and reading the input again submits nothing twice
            assert submitter.forgot()
            again = submitter.resubmit(_rows(tickets))
            assert again.published == 0 and again.already_submitted == 20
            assert backend.store.batch("kept-1").total == 20
    finally:
        server.stop()


def test_a_waiting_producer_submits_again_what_a_redis_restarted_without_its_data_forgot(tmp_path, sim):
    # Given a private Redis that keeps nothing on disk, workers, and cascade-submit --wait on 300 rows
    server = PrivateRedis(tmp_path / "redis", appendonly=False).start()
    config, ns = cluster_config(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**cascade_env(server.url, sim.url), "CASCADE_LEDGER_URL": url}
    rows = write_tickets(tmp_path / "jobs.jsonl", 300)
    out = tmp_path / "results.jsonl"
    workers = Workers(config, env, tmp_path)
    producer = None
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        producer = subprocess.Popen([str(BIN / "cascade-submit"), str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage",
                                     "--batch-id", "gone-1", "--wait", "--out", str(out), "--config", str(config),
                                     "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 60
        while int(client.hget(f"{ns}:batch:gone-1", "done") or 0) < 60:
            assert producer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # When Redis restarts without its data, with the batch a fifth done
        kept = Ledger(url).result_count("gone-1")
        server.shutdown()
        server.start()
        _, err = producer.communicate(timeout=240)
        stderr = err.decode()
        # Then the producer opens the batch again, submits only what the ledger does not hold, and finishes
        assert producer.returncode == 0, stderr
        said = [line for line in stderr.splitlines() if "were lost by Redis and are submitted again" in line]
        assert len(said) == 1 and 0 < int(said[0].split(": ", 1)[1].split()[0]) <= 300 - kept
        ledger = Ledger(url)
        assert sorted(r.job_id for r in ledger.iter_results("gone-1")) == sorted(r["id"] for r in rows)
        assert sorted(r["id"] for r in read_jsonl(out)) == sorted(r["id"] for r in rows)
        ledger.close()
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        workers.close()
        server.stop()


def test_readers_of_a_batch_redis_lost_say_it_will_not_finish_instead_of_waiting(tmp_path, sim):
    # Given a batch submitted with no worker running, its row in the ledger, and Redis restarted without its data
    server = PrivateRedis(tmp_path / "redis", appendonly=False).start()
    try:
        config, _ = cluster_config(tmp_path)
        env = {**cascade_env(server.url, sim.url), "CASCADE_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
        write_tickets(tmp_path / "jobs.jsonl", 20)
        submit = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id",
                          "stuck-1", "--config", str(config), "--no-progress"], env)
        assert submit.returncode == 0, submit.stderr.decode()
        assert run_cli(["cascade", "ledger", "--once", "--config", str(config)], env).returncode == 0
        server.shutdown()
        server.start()
        # When its status is asked and its results followed
        status = run_cli(["cascade", "status", "stuck-1", "--config", str(config)], env)
        follow = run_cli(["cascade", "results", "stuck-1", "--follow", "--config", str(config)], env, timeout=60)
        # Then both say its live state is gone and how to resume it; following ends at once
        gone = ("the ledger has it (submitted, 0 of 20 done), but its live state is gone from Redis (restarted "
                "without its data, or flushed): it will not finish by itself; submit its input again under "
                "--batch-id stuck-1 (the jobs whose records the ledger holds are not run again)")
        assert status.returncode == 0 and f"cascade: batch stuck-1: {gone}" in status.stderr.decode()
        assert follow.returncode == 1 and follow.stderr.decode().strip() == f"Error: batch stuck-1: {gone}"
    finally:
        server.stop()
