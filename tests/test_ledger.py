"""The ledger on SQLite and on a real PostgreSQL (one suite): migrations, exactly-once writes, reads that never
lose anything, the writer killed with SIGKILL under a running batch, a Redis restart with records waiting."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
import uuid

import fakeredis
import orjson
import pytest
import redis
from sqlalchemy import inspect

from cascade.ledger.database import Ledger, ledger_url
from cascade.ledger.writer import LedgerWriter
from cascade.simulator import SimServer, load_scenario
from cascade.worker.config import load_settings
from cascade.worker.store import Keys, ResultStream
from tests.cluster import (BIN, SCENARIO, Workers, cascade_env, cluster_config, delete_namespace, fast_scenario,
                           read_jsonl, run_cli, write_tickets)
from tests.helpers import copy_config
from tests.redis_server import PrivateRedis


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A ledger URL: a SQLite file of this test, or a fresh schema on the session's PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    url = ledger_url(request.getfixturevalue("postgres_url"), tmp_path)
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:          # each test starts from an empty database
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    ledger.close()
    yield url


def record(job: str, batch: str = "b", status: str = "accepted", retry_round: int = 0, cost: float = 0.001) -> bytes:
    out = {"id": job, "batch": batch, "status": status, "tier": "cheap", "model": "m", "output": "x",
           "cost_usd": cost, "counterfactual_usd": cost * 10, "attempts": [{"tier": "cheap"}],
           "finished_at": time.time()}
    if retry_round:
        out["retry_round"] = retry_round
    return orjson.dumps(out)


@pytest.fixture
def sim():
    with SimServer(load_scenario(SCENARIO)) as server:
        yield server


def test_migrations_create_the_tables_once_and_a_second_run_changes_nothing(database):
    ledger = Ledger(database)
    ledger.migrate()
    Ledger(database).migrate()          # another process, later: nothing to do
    tables = set(inspect(ledger.engine).get_table_names())
    assert {"batches", "results", "tier_figures", "alerts", "shadow_pairs", "schedule_runs", "alembic_version"} <= tables
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"


def test_a_record_written_twice_is_stored_once_and_a_later_retry_round_replaces_it(database):
    ledger = Ledger(database)
    ledger.migrate()
    assert ledger.write_results([record("a"), record("b")]) == 2
    assert ledger.write_results([record("a"), record("b"), record("c")]) == 1     # a redelivery: only c is new
    rows = list(ledger.iter_results("b"))
    assert [r.job_id for r in rows] == ["a", "b", "c"]
    ledger.write_results([record("a", status="accepted_unverified", retry_round=1)])
    rows = list(ledger.iter_results("b"))
    assert [r.job_id for r in rows] == ["b", "c", "a"]          # the new round comes after what was read
    assert orjson.loads(rows[-1].record)["retry_round"] == 1 and ledger.result_count("b") == 3
    ledger.write_results([record("a", retry_round=0)])          # an older round arriving late changes nothing
    assert orjson.loads(list(ledger.iter_results("b"))[-1].record)["retry_round"] == 1


def test_a_writer_that_dies_before_acking_leaves_its_records_for_another_exactly_once(database, tmp_path):
    # Given records in the results stream, and a writer that stored them and died before it acked
    settings = load_settings(copy_config(tmp_path), environ={})
    client = fakeredis.FakeRedis()
    stream = ResultStream(client, settings.redis.namespace)
    for job in ("a", "b", "c"):
        client.xadd(Keys(settings.redis.namespace).results, {"r": record(job)})
    ledger = Ledger(database)
    first = LedgerWriter(settings, client, ledger, consumer="first", claim_idle_s=0.0)
    first.start()
    entries = stream.read("first", 10, 0)
    ledger.write_results([r for _, r in entries])           # committed ... and then SIGKILL, no ack
    # When another writer starts, it takes the abandoned records over
    second = LedgerWriter(settings, client, ledger, consumer="second", claim_idle_s=0.0)
    time.sleep(0.01)
    assert second.drain() == 3
    # Then each is in the ledger once, and the stream is empty with nothing pending
    assert [r.job_id for r in ledger.iter_results("b")] == ["a", "b", "c"]
    assert stream.length() == 0
    assert client.xpending(Keys(settings.redis.namespace).results, "ledger")["pending"] == 0


@pytest.mark.parametrize("backend", ["fakeredis", "redis"])
def test_a_dead_writers_records_are_taken_over_at_once_and_a_live_ones_are_left(backend, tmp_path, request):
    # Given two writers on this host that each read a record and did not ack it: one whose process has exited,
    # and one whose process still runs; takeover by idle time is an hour away
    settings = load_settings(copy_config(tmp_path), environ={})
    client = (fakeredis.FakeRedis() if backend == "fakeredis"
              else redis.Redis.from_url(request.getfixturevalue("redis_url")))
    namespace = f"t{uuid.uuid4().hex[:10]}"
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"namespace": namespace})})
    stream = ResultStream(client, namespace)
    stream.ensure_group()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()[:40]
    try:
        for job, pid in (("a", exited.pid), ("b", running.pid)):
            client.xadd(Keys(namespace).results, {"r": record(job)})
            assert len(stream.read(f"ledger@{host}-{pid}-abc123", 10, 0)) == 1
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        # When a new writer takes a round
        writer = LedgerWriter(settings, client, ledger, claim_idle_s=3600)
        writer.step()
        # Then the exited writer's record is in the ledger and it has left the group; the live one keeps its own
        assert [r.job_id for r in ledger.iter_results("b")] == ["a"]
        assert sorted(stream.consumers()) == sorted([f"ledger@{host}-{running.pid}-abc123", writer.consumer])
        assert stream.length() == 1
        ledger.close()
    finally:
        running.kill()
        running.wait()
        client.delete(Keys(namespace).results)


def test_reading_results_never_removes_them(tmp_path, sim):
    # Given a finished batch (embedded mode writes the ledger beside the config)
    config = copy_config(tmp_path)
    write_tickets(tmp_path / "jobs.jsonl", 120)
    env = cascade_env(None, sim.url)
    done = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id", "read-1",
                    "--out", str(tmp_path / "first.jsonl"), "--config", str(config), "--no-progress"], env)
    assert done.returncode == 0, done.stderr.decode()
    # When one reader takes a single record and goes away, and another writes them all to a file
    head = subprocess.run(f"{BIN / 'cascade'} results read-1 --config {config} | head -1", shell=True, env=env,
                          capture_output=True, timeout=60)
    assert head.returncode == 0 and len(head.stdout.splitlines()) == 1
    again = run_cli(["cascade", "results", "read-1", "--out", str(tmp_path / "f.jsonl"), "--config", str(config)], env)
    # Then the file holds every record, as often as it is asked for, in JSONL or CSV
    assert again.returncode == 0, again.stderr.decode()
    assert len(read_jsonl(tmp_path / "f.jsonl")) == 120
    csv_out = run_cli(["cascade", "results", "read-1", "--format", "csv", "--status", "accepted", "--config",
                       str(config)], env)
    lines = csv_out.stdout.decode().splitlines()
    assert lines[0].startswith("id,batch,status,tier,model,cost_usd") and len(lines) > 100
    assert orjson.loads(head.stdout) in read_jsonl(tmp_path / "f.jsonl")


def test_follow_on_a_batch_that_does_not_exist_says_so_instead_of_waiting(tmp_path):
    result = run_cli(["cascade", "results", "ghost-1", "--follow", "--config", str(copy_config(tmp_path))],
                     cascade_env(None, "http://127.0.0.1:1"), timeout=60)
    assert result.returncode == 1
    assert "Error: no batch 'ghost-1' in the ledger (sqlite:///" in result.stderr.decode()


def test_the_ledger_writer_killed_at_random_points_still_stores_each_record_once(tmp_path, redis_url, database):
    # Given a 2,000-job batch running on real workers, and a `cascade ledger` service on SQLite or PostgreSQL
    config, ns = cluster_config(tmp_path)
    config.write_text(config.read_text().replace("[ledger]\n", "[ledger]\nclaim_idle_s = 2\n", 1))
    url = database
    with SimServer(fast_scenario()) as sim:
        env = {**cascade_env(redis_url, sim.url), "CASCADE_LEDGER_URL": url}
        rows = write_tickets(tmp_path / "jobs.jsonl", 2000)
        workers = Workers(config, env, tmp_path)
        writers: list[subprocess.Popen] = []
        try:
            workers.start("cheap", concurrency=8)
            workers.start("mid")
            workers.start("frontier")
            submit = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id",
                              "kill-ledger", "--config", str(config), "--no-progress"], env)
            assert submit.returncode == 0, submit.stderr.decode()
            # When the writer is SIGKILLed at random moments, six times, and started again each time
            rng = random.Random(11)
            for _ in range(6):
                writer = _ledger_service(config, env, tmp_path, len(writers))
                writers.append(writer)
                time.sleep(rng.uniform(0.5, 2.5))
                writer.kill()
                writer.wait()
            follow = run_cli(["cascade", "results", "kill-ledger", "--follow", "--out", str(tmp_path / "all.jsonl"),
                              "--config", str(config)], env, timeout=300)
            assert follow.returncode == 0, follow.stderr.decode()
        finally:
            workers.close()
        # Then the ledger holds exactly 2,000 records for the batch, none twice, and the stream is empty
        ledger = Ledger(ledger_url(url, tmp_path))
        stored = [r.job_id for r in ledger.iter_results("kill-ledger")]
        assert len(stored) == 2000 and sorted(stored) == sorted(r["id"] for r in rows)
        assert len(read_jsonl(tmp_path / "all.jsonl")) == 2000
        client = redis.Redis.from_url(redis_url)
        assert client.xlen(f"{ns}:results") == 0
        row = ledger.batch("kill-ledger")
        assert row["state"] == "finished" and row["done"] == 2000
        assert [f["tier"] for f in ledger.tier_figures("kill-ledger")] == ["cheap", "mid", "frontier"]
        ledger.close()
        delete_namespace(redis_url, ns)


def test_records_waiting_in_redis_survive_its_restart(tmp_path, sim):
    # Given a private Redis (AOF everysec), a batch that finished while no ledger writer ran
    server = PrivateRedis(tmp_path / "redis").start()
    config, ns = cluster_config(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**cascade_env(server.url, sim.url), "CASCADE_LEDGER_URL": url}
    write_tickets(tmp_path / "jobs.jsonl", 300)
    workers = Workers(config, env, tmp_path)
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        submit = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id",
                          "waiting-1", "--config", str(config), "--no-progress"], env)
        assert submit.returncode == 0, submit.stderr.decode()
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 120
        while int(client.hget(f"{ns}:batch:waiting-1", "done") or 0) < 300:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.xlen(f"{ns}:results") == 300
        # When Redis restarts (a clean shutdown fsyncs the AOF) before any writer read them
        server.shutdown()
        server.start()
        once = run_cli(["cascade", "ledger", "--once", "--config", str(config)], env)
        # Then every record acknowledged to a worker reaches the ledger
        assert once.returncode == 0, once.stderr.decode()
        assert Ledger(url).result_count("waiting-1") == 300
        assert "alembic" not in once.stderr.decode()      # its ten INFO lines a start are kept quiet
    finally:
        workers.close()
        server.stop()


def test_a_postgresql_restart_under_a_waiting_producer_is_waited_out(tmp_path, redis_url, sim):
    # Given a ledger on a private PostgreSQL, workers, and a 300-job batch waited on by cascade-submit
    from tests.postgres_server import PrivatePostgres

    database = PrivatePostgres()
    config, ns = cluster_config(tmp_path)
    env = {**cascade_env(redis_url, sim.url), "CASCADE_LEDGER_URL": database.url}
    rows = write_tickets(tmp_path / "jobs.jsonl", 300)
    workers = Workers(config, env, tmp_path)
    submit = None
    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        out = tmp_path / "results.jsonl"
        submit = subprocess.Popen([str(BIN / "cascade-submit"), str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage",
                                   "--batch-id", "pg-restart", "--wait", "--out", str(out), "--config", str(config),
                                   "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 60
        while int(client.hget(f"{ns}:batch:pg-restart", "done") or 0) < 50:
            assert time.monotonic() < deadline and submit.poll() is None, "the batch made no progress"
            time.sleep(0.05)
        # When the database stops mid-batch and comes back three seconds later
        database.shutdown()
        time.sleep(3)
        database.start()
        _, stderr = submit.communicate(timeout=120)
        # Then the producer said it waited, and wrote every record once
        assert submit.returncode == 0, stderr.decode()[-3000:]
        assert "cascade-submit: the ledger unreachable while " in stderr.decode()
        assert "cascade-submit: the ledger answers again after " in stderr.decode()
        records = read_jsonl(out)
        assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
        assert Ledger(database.url).result_count("pg-restart") == 300
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
        workers.close()
        delete_namespace(redis_url, ns)
        database.stop()


def test_batches_status_and_stats_by_tag_read_the_ledger(tmp_path, sim):
    # Given two finished embedded batches of a pipeline that tags its results by team
    config = copy_config(tmp_path)
    pipeline = config.parent / "pipelines" / "ticket-triage.toml"
    pipeline.write_text(pipeline.read_text().replace('on_last_failure = "accept_flagged"',
                                                     'on_last_failure = "accept_flagged"\ntags = ["team"]'))
    env = cascade_env(None, sim.url)
    for batch, team in (("tag-1", "billing-squad"), ("tag-2", "core")):
        rows = write_tickets(tmp_path / f"{batch}.jsonl", 40)
        (tmp_path / f"{batch}.jsonl").write_bytes(b"".join(orjson.dumps({**r, "team": team}) + b"\n" for r in rows))
        done = run_cli(["cascade-submit", str(tmp_path / f"{batch}.jsonl"), "-p", "ticket-triage", "--batch-id",
                        batch, "--config", str(config), "--no-progress", "--out", str(tmp_path / f"{batch}.out")], env)
        assert done.returncode == 0, done.stderr.decode()
    # Then `cascade batches` lists both, finished
    listed = [orjson.loads(line) for line in
              run_cli(["cascade", "batches", "--json", "--config", str(config)], env).stdout.splitlines()]
    assert {b["batch"]: b["state"] for b in listed} == {"tag-1": "finished", "tag-2": "finished"}
    # `cascade status` reads a finished batch from the ledger
    shown = orjson.loads(run_cli(["cascade", "status", "tag-1", "--json", "--config", str(config)], env).stdout)
    assert shown["done"] == 40 and shown["state"] == "finished"
    # and `stats --by team` splits jobs, attempts and cost between the teams, as the records say
    groups = {g["team"]: g for g in map(orjson.loads, run_cli(
        ["cascade", "stats", "--by", "team", "--json", "--config", str(config)], env).stdout.splitlines())}
    assert set(groups) == {"billing-squad", "core"} and groups["core"]["jobs"] == 40
    records = read_jsonl(tmp_path / "tag-2.out")
    assert records[0]["tags"] == {"team": "core"}
    assert groups["core"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))
    assert groups["core"]["attempts"] == sum(len(r["attempts"]) for r in records)


def test_a_ledger_service_goes_on_after_redis_restarts_without_its_data(tmp_path, sim):
    # Given a private Redis that keeps nothing on disk, workers, and a `cascade ledger` service that stored a batch
    server = PrivateRedis(tmp_path / "redis", appendonly=False).start()
    config, _ = cluster_config(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**cascade_env(server.url, sim.url), "CASCADE_LEDGER_URL": url}
    write_tickets(tmp_path / "jobs.jsonl", 30)
    workers = Workers(config, env, tmp_path)
    service = None

    def stored(batch: str, count: int) -> None:
        deadline = time.monotonic() + 120
        while (ledger := Ledger(url)).result_count(batch) < count:
            ledger.close()
            assert service.poll() is None and time.monotonic() < deadline, (tmp_path / "ledger-0.log").read_text()
            time.sleep(0.2)
        ledger.close()

    try:
        for tier in ("cheap", "mid", "frontier"):
            workers.start(tier)
        service = _ledger_service(config, env, tmp_path, 0)
        for batch in ("before-1", "after-1"):
            submit = run_cli(["cascade-submit", str(tmp_path / "jobs.jsonl"), "-p", "ticket-triage", "--batch-id",
                              batch, "--config", str(config), "--no-progress"], env)
            assert submit.returncode == 0, submit.stderr.decode()
            stored(batch, 30)
            if batch == "before-1":
                # When Redis restarts empty: the results stream and the writers' consumer group are gone
                server.shutdown()
                server.start()
        # Then the same service stores the next batch's records too, and says once that it made the group again
        log = (tmp_path / "ledger-0.log").read_text()
        assert "its consumer group was gone" in log and "a round failed" not in log
    finally:
        if service is not None:
            service.terminate()
            service.wait(timeout=30)
        workers.close()
        server.stop()


def _ledger_service(config, env, tmp_path, n: int) -> subprocess.Popen:
    log = open(tmp_path / f"ledger-{n}.log", "wb")
    proc = subprocess.Popen([str(BIN / "cascade"), "ledger", "--config", str(config)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while b"cascade ledger:" not in (tmp_path / f"ledger-{n}.log").read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"ledger-{n}.log").read_text()
        time.sleep(0.05)
    return proc


def test_processes_that_first_migrate_one_new_sqlite_file_at_once_all_succeed(tmp_path):
    # Given a ledger file nobody created yet, and four processes opening it for writing at the same moment
    url = f"sqlite:///{tmp_path / 'new.db'}"
    script = ("import sys\nfrom cascade.ledger.database import Ledger\n"
              "ledger = Ledger(sys.argv[1]); ledger.migrate(); ledger.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE) for _ in range(4)]
    # Then each migrates (or finds it done), and the schema is there once
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    ledger = Ledger(url)
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["0002"]
    ledger.close()


def test_a_sqlite_ledger_in_a_missing_folder_is_one_clear_error(tmp_path):
    from cascade.ledger.database import Ledger, LedgerError

    missing = tmp_path / "no" / "such" / "ledger.db"
    with pytest.raises(LedgerError) as e:
        Ledger(f"sqlite:///{missing}").migrate()
    assert str(e.value) == (f"ledger sqlite:///{missing}: cannot create the database file: No such file or directory "
                            f"({missing.parent})")
