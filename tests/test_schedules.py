"""Scheduled batches: cron and time zones, run keys and batch ids, config errors, `cascade schedules run`
backfills against real Redis, and real Celery beat (`cascade beat`) ticking every few seconds with real
workers on the simulator: one batch per tick, a second and a restarted beat submit nothing twice, a missing
input is a failed run and an alert while beat keeps going."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis
from click.testing import CliRunner

from cascade.cli.main import cascade
from cascade.errors import ConfigError
from cascade.ledger.database import Ledger, ledger_url
from cascade.ledger.writer import LedgerWriter
from cascade.ops.cron import CronError, next_runs, parse_cron, previous_run
from cascade.ops.schedules import batch_id, maintain, plan, run_key, run_schedule
from cascade.simulator import SimServer
from cascade.worker.config import load_settings
from cascade.worker.config.schema import Schedule
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
from tests.helpers import copy_config
from tests.redis_server import PrivateRedis


def with_schedules(config: Path, text: str) -> Path:
    """The config with [schedules.*] sections appended."""
    config.write_text(config.read_text() + "\n" + text)
    return config


def nightly(tmp_path: Path, config: Path, n: int = 20) -> list[dict]:
    """The config with a nightly schedule at 02:00 UTC, and its input of 2026-11-30 (`n` tickets, returned)."""
    with_schedules(config, """
[schedules.nightly]
pipeline = "ticket-triage"
input = "in/tickets-{date}.jsonl"
cron = "0 2 * * *"
""")
    (tmp_path / "config" / "in").mkdir()
    return write_tickets(tmp_path / "config" / "in" / "tickets-2026-11-30.jsonl", n)


# -- timing: cron in a time zone, run keys, batch ids --------------------------------------------------------

def test_a_nightly_cron_fires_at_local_time_on_both_sides_of_a_dst_change():
    cron = parse_cron("30 3 * * *", "Europe/Berlin")
    runs = next_runs(cron, datetime(2026, 3, 27, 12, 0, tzinfo=UTC), n=3)
    # 03:30 in Berlin: 02:30 UTC in winter (CET), 01:30 UTC from 29 March (CEST)
    assert [r.astimezone(UTC) for r in runs] == [datetime(2026, 3, 28, 2, 30, tzinfo=UTC),
                                                  datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
                                                  datetime(2026, 3, 30, 1, 30, tzinfo=UTC)]


def test_day_names_ranges_and_seven_for_sunday():
    weekdays = parse_cron("0 6 * * mon-fri", "UTC")
    # Friday 4 December 2026, 07:00 UTC: the next runs skip the weekend
    assert [r.date() for r in next_runs(weekdays, datetime(2026, 12, 4, 7, tzinfo=UTC), n=2)] == [
        date(2026, 12, 7), date(2026, 12, 8)]
    assert parse_cron("0 6 * * 7", "UTC").day_of_week == {0}
    assert parse_cron("0 6 * * 5-7", "UTC").day_of_week == {5, 6, 0}


def test_a_tick_belongs_to_the_occurrence_it_was_due_for():
    schedule = Schedule(name="nightly-tickets", pipeline="p", input="x", cron="0 2 * * *", timezone="Europe/Berlin")
    # 01:00:00.3 UTC is 02:00:00.3 in Berlin: today's run
    assert run_key(schedule, datetime(2026, 12, 2, 1, 0, 0, 300000, tzinfo=UTC)) == "2026-12-02"
    # a late tick (beat was down at 02:00) still belongs to today's run
    assert run_key(schedule, datetime(2026, 12, 2, 9, 15, tzinfo=UTC)) == "2026-12-02"
    # 00:30 UTC is 01:30 in Berlin: before today's 02:00, so the latest run is yesterday's
    assert run_key(schedule, datetime(2026, 12, 2, 0, 30, tzinfo=UTC)) == "2026-12-01"
    assert batch_id("nightly-tickets", "2026-12-02") == "nightly-tickets-2026-12-02"
    assert previous_run(parse_cron("0 0 1 1 *", "UTC"), datetime(2026, 12, 2, tzinfo=UTC)) == datetime(
        2026, 1, 1, tzinfo=UTC)


def test_beat_started_after_a_missed_run_catches_up_once_and_not_after_a_run_it_made():
    from cascade.ops.schedules import key_time, timing

    schedule = Schedule(name="n", pipeline="p", input="x", cron="0 2 * * *", timezone="Europe/Berlin")
    cron = timing(schedule)
    cron.nowfun = lambda: datetime(2026, 12, 2, 9, 0, tzinfo=cron.tz)
    # the ledger's latest run is yesterday's: today's 02:00 was missed, so it is due at once
    assert cron.is_due(key_time(schedule, "2026-12-01")).is_due
    # the latest run is today's: nothing is due until tomorrow 02:00 (17 hours)
    due, next_s = cron.is_due(key_time(schedule, "2026-12-02"))
    assert not due and next_s == 17 * 3600


def test_an_every_s_schedule_is_keyed_by_its_clock_aligned_slot():
    schedule = Schedule(name="tick", pipeline="p", input="in/{date}.jsonl", every_s=5)
    moment = datetime.fromtimestamp(1796100303.7, UTC)
    assert run_key(schedule, moment) == "1796100300"
    assert run_key(schedule, moment + timedelta(seconds=1)) == "1796100300"
    assert run_key(schedule, moment + timedelta(seconds=2)) == "1796100305"


def test_paths_take_the_run_date_and_resolve_beside_cascade_toml(tmp_path):
    config = with_schedules(copy_config(tmp_path), """
[schedules.nightly-tickets]
pipeline = "ticket-triage"
input = "in/tickets-{date}.jsonl"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
export = "/srv/out/tickets-{date}.csv"
""")
    settings = load_settings(config, environ={})
    run = plan(settings, "nightly-tickets", "2026-12-02")
    assert run.batch == "nightly-tickets-2026-12-02"
    assert run.input == tmp_path / "config" / "in" / "tickets-2026-12-02.jsonl"
    assert run.export == Path("/srv/out/tickets-2026-12-02.csv")
    with pytest.raises(ValueError, match=r"'2026-12-2' is not a date \(YYYY-MM-DD\)"):
        plan(settings, "nightly-tickets", "2026-12-2")


@pytest.mark.parametrize("body, message", [
    ('cron = "0 2 * * *"\nevery_s = 5', "schedules.bad: give exactly one of cron"),
    ("", "schedules.bad: give exactly one of cron"),
    ('cron = "0 2 * *"', "cron: '0 2 * *' has 4 fields; a cron expression has five"),
    ('cron = "0 24 * * *"', "cron: '0 24 * * *': hour '24': Invalid end range: 24 > 23."),
    ('cron = "*/15 * * * *"', "fires 96 times a day, but a scheduled run is one per date"),
    ('cron = "0 2 * * *"\ntimezone = "Mars/Olympus"', "schedules.bad.timezone: unknown time zone 'Mars/Olympus'"),
    ('cron = "0 2 * * *"\nexport = "out/{day}.jsonl"', "schedules.bad.export: placeholder {day}: only {date} and"),
    ('cron = "0 2 * * *"\nexport = "out/tickets.jsonl"', "export: 'out/tickets.jsonl' would be overwritten by the "
                                                       "next run: put {date} or {batch} in it"),
    ('every_s = 60\nexport = "out/t-{date}.jsonl"', "would be overwritten by the next run: put {batch} in it "
                                                    "(e.g. out/bad-{batch}.jsonl)"),
    ('cron = "0 2 * * *"\nexport = "out/x.parquet"', "must end in .jsonl or .csv"),
])
def test_a_bad_schedule_is_a_config_error_naming_the_key(tmp_path, body, message):
    config = with_schedules(copy_config(tmp_path), f'[schedules.bad]\npipeline = "ticket-triage"\n'
                                                   f'input = "in.jsonl"\n{body}\n')
    with pytest.raises(ConfigError) as error:
        load_settings(config, environ={})
    assert str(error.value).startswith(f"{config}: ") and message in str(error.value)


def test_a_schedule_of_an_unknown_pipeline_is_a_config_error(tmp_path):
    config = with_schedules(copy_config(tmp_path), '[schedules.x]\npipeline = "nope"\ninput = "a"\ncron = "0 2 * * *"\n')
    with pytest.raises(ConfigError, match=r"schedules.x.pipeline: unknown pipeline 'nope' \(known: "):
        load_settings(config, environ={})


def test_cron_errors_name_the_field():
    with pytest.raises(CronError, match=r"'0 2 \* \* xyz': day-of-week 'xyz': Invalid weekday literal 'xyz'."):
        parse_cron("0 2 * * xyz")


def test_schedules_lists_each_schedule_with_its_next_run(tmp_path, monkeypatch):
    config = with_schedules(copy_config(tmp_path), """
[schedules.nightly-tickets]
pipeline = "ticket-triage"
input = "in/tickets-{date}.jsonl"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
""")
    monkeypatch.setenv("CASCADE_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    result = CliRunner().invoke(cascade, ["schedules", "--config", str(config)])
    assert result.exit_code == 0, result.output
    head, runs = result.output.splitlines()
    assert head.startswith("nightly-tickets  pipeline ticket-triage  cron '0 2 * * *' Europe/Berlin  next run ")
    assert head.endswith("T02:00:00+01:00") and runs == "  no runs yet"


# -- `cascade schedules run`: backfill, idempotent, resume, missing input --------------------------------------

def test_backfill_is_idempotent_resumes_an_abandoned_run_and_a_missing_input_is_an_alert(tmp_path, redis_url):
    config, ns = cluster_config(tmp_path)
    with_schedules(config, """
[schedules.nightly]
pipeline = "ticket-triage"
input = "in/tickets-{date}.jsonl"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
budget_usd = 2.5
""")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**cascade_env(redis_url, "http://127.0.0.1:1"), "CASCADE_LEDGER_URL": url}
    (tmp_path / "config" / "in").mkdir()
    write_tickets(tmp_path / "config" / "in" / "tickets-2026-11-30.jsonl", 20)
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(ledger_url(url, tmp_path))
    try:
        # When a past date is backfilled, twice
        first = run_cli(["cascade", "schedules", "--config", str(config), "run", "nightly", "--date", "2026-11-30"],
                        env, timeout=60)
        second = run_cli(["cascade", "schedules", "--config", str(config), "run", "nightly", "--date", "2026-11-30"],
                         env, timeout=60)
        # Then the batch is submitted once, with the schedule's budget; the second run says it already ran
        assert first.returncode == 0, first.stderr.decode()
        assert first.stdout.decode() == "nightly-2026-11-30\n"
        assert "schedule nightly: run 2026-11-30: batch nightly-2026-11-30 submitted: 20 jobs queued" in \
            first.stderr.decode()
        assert second.returncode == 0 and second.stdout.decode() == "nightly-2026-11-30\n"
        assert "batch nightly-2026-11-30 already ran (submitted: 20 jobs queued from " in second.stderr.decode()
        batch = client.hgetall(f"{ns}:batch:nightly-2026-11-30")
        assert batch[b"runs"] == b"1" and batch[b"total"] == b"20" and batch[b"budget"] == b"2500000000"
        assert queued(client, ns) == 20

        # When a run is left `submitting` by a process that died (its row untouched for a minute)
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE schedule_runs SET state = 'submitting', updated_at = updated_at - 60")
        resumed = run_cli(["cascade", "schedules", "--config", str(config), "run", "nightly", "--date",
                           "2026-11-30"], env, timeout=60)
        # Then it is resumed under the same batch id, and nothing is queued twice
        assert resumed.returncode == 0, resumed.stderr.decode()
        assert "batch nightly-2026-11-30 resumed: 0 jobs queued from " in resumed.stderr.decode()
        assert ", 20 submitted earlier" in resumed.stderr.decode()
        assert queued(client, ns) == 20

        # When the input of a date is missing
        missing = run_cli(["cascade", "schedules", "--config", str(config), "run", "nightly", "--date",
                           "2026-12-01"], env, timeout=60)
        path = tmp_path / "config" / "in" / "tickets-2026-12-01.jsonl"
        # Then the run fails with its reason and an alert, not a traceback
        assert missing.returncode == 1
        assert missing.stderr.decode() == (
            f"scheduled run nightly 2026-12-01 (batch nightly-2026-12-01) failed: input {path} does not exist; "
            "check: put the file there, then run `cascade schedules run nightly --date 2026-12-01`\n"
            "Error: run 2026-12-01 of schedule nightly failed (kept in the ledger with an alert; `cascade schedules` "
            "lists it)\n")
        [run] = [r for r in ledger.schedule_runs("nightly") if r["run_date"] == "2026-12-01"]
        assert (run["state"], run["reason"]) == ("failed", f"input {path} does not exist")
        [alert] = ledger.alerts()
        assert alert["kind"] == "schedule_failed" and alert["pipeline"] == "ticket-triage"
        assert alert["check"] == "put the file there, then run `cascade schedules run nightly --date 2026-12-01`"
        # And once the file is there, running it again submits it
        write_tickets(path, 5)
        runner = CliRunner(env={"CASCADE_REDIS_URL": env["CASCADE_REDIS_URL"], "CASCADE_LEDGER_URL": url})
        again = runner.invoke(cascade, ["schedules", "--config", str(config), "run", "nightly", "--date", "2026-12-01"])
        assert again.exit_code == 0 and "submitted: 5 jobs queued" in again.output
        listing = runner.invoke(cascade, ["schedules", "--config", str(config)]).output
        assert "  2026-12-01  nightly-2026-12-01  submitted  (batch not in the ledger yet)  5 jobs queued" in listing
        # A date still to come is refused: its run would take the place of the one the schedule makes that day
        ahead = runner.invoke(cascade, ["schedules", "--config", str(config), "run", "nightly", "--date", "2999-01-01"])
        assert ahead.exit_code == 2 and "2999-01-01 is still to come (the current run is " in ahead.output
    finally:
        ledger.close()
        delete_namespace(redis_url, ns)


def test_a_submitted_run_whose_batch_redis_lost_is_resumed_without_the_jobs_the_ledger_holds(tmp_path):
    # Given a private Redis that keeps nothing on disk, a nightly run submitted (20 jobs, no worker running),
    # its batch row in the ledger with the records of two of its jobs
    server = PrivateRedis(tmp_path / "redis", appendonly=False).start()
    try:
        config, ns = cluster_config(tmp_path)
        rows = nightly(tmp_path, config)
        settings = load_settings(config, environ={"CASCADE_REDIS_URL": server.url,
                                                  "CASCADE_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}"})
        ledger = Ledger(settings.ledger.url)
        client = redis.Redis.from_url(server.url)
        assert run_schedule(settings, "nightly", "2026-11-30", ledger).state == "submitted"
        LedgerWriter(settings, client, ledger).drain()
        ledger.write_results([orjson.dumps({"id": r["id"], "batch": "nightly-2026-11-30", "status": "accepted"})
                              for r in rows[:2]])
        # When Redis restarts without its data, and beat's check runs
        server.shutdown()
        server.start()
        client = redis.Redis.from_url(server.url)
        resumed = maintain(settings, ledger)
        # Then the run is submitted again into the batch, without the two jobs the ledger holds, and stays submitted
        assert [(r.schedule, r.outcome, r.published) for r in resumed] == [("nightly", "resumed", 18)]
        assert int(client.hget(f"{ns}:batch:nightly-2026-11-30", "total")) == 18
        assert ledger.schedule_runs("nightly")[0]["state"] == "submitted"
        assert maintain(settings, ledger) == []          # found in Redis again: nothing more to do
        ledger.close()
    finally:
        server.stop()


def test_a_run_due_while_redis_is_down_waits_and_beat_submits_it_once_redis_is_back(tmp_path, monkeypatch):
    # Given a nightly schedule whose input is there, and a Redis that is down when the run is due
    from tests.redis_server import PrivateRedis

    server = PrivateRedis(tmp_path / "redis").start()
    server.shutdown()
    config, ns = cluster_config(tmp_path)
    nightly(tmp_path, config)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**cascade_env(server.url, "http://127.0.0.1:1"), "CASCADE_LEDGER_URL": url}
    ledger = Ledger(ledger_url(url, tmp_path))
    beat = None
    try:
        # When the run starts
        down = run_cli(["cascade", "schedules", "--config", str(config), "run", "nightly", "--date", "2026-11-30"],
                       env, timeout=60)
        # Then it is not failed: it waits, says why, and nothing is an alert
        assert down.returncode == 1
        assert "schedule nightly: run 2026-11-30: waiting for Redis (Error 111 connecting to " in down.stderr.decode()
        assert ("Error: run 2026-11-30 of schedule nightly is not submitted yet: Redis does not answer; `cascade beat` "
                "submits it once Redis is back, or run this again\n") in down.stderr.decode()
        [run] = ledger.schedule_runs("nightly")
        assert run["state"] == "submitting" and run["reason"].startswith("waiting for Redis (")
        assert ledger.alerts() == []
        # And a run that has waited longer than the patience is failed, with an alert that says what to check
        from cascade.ops import schedules

        write_tickets(tmp_path / "config" / "in" / "tickets-2026-11-29.jsonl", 5)
        monkeypatch.setattr(schedules, "REDIS_PATIENCE_S", 0.0)
        runner = CliRunner(env={"CASCADE_REDIS_URL": server.url, "CASCADE_LEDGER_URL": url})
        late = runner.invoke(cascade, ["schedules", "--config", str(config), "run", "nightly", "--date", "2026-11-29"])
        assert late.exit_code == 1
        [alert] = ledger.alerts()
        assert alert["message"].startswith("scheduled run nightly 2026-11-29 (batch nightly-2026-11-29) failed: "
                                           "Redis unreachable for 0 min (Error 111 connecting to ")
        assert alert["check"] == "start Redis or fix [redis] url, then run `cascade schedules run nightly --date " \
                                 "2026-11-29`"
        monkeypatch.undo()
        # And run again by hand, even two hours after it first started, the failed one starts its wait anew
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE schedule_runs SET started_at = started_at - 7200 "
                                 "WHERE run_date = '2026-11-29'")
        again = runner.invoke(cascade, ["schedules", "--config", str(config), "run", "nightly", "--date", "2026-11-29"])
        assert again.exit_code == 1 and "is not submitted yet: Redis does not answer" in again.output
        # When Redis is back, and beat's check finds the run (its row 30 s old)
        server.start()
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE schedule_runs SET updated_at = updated_at - 60")
        beat = start_beat(config, env, tmp_path / "beat.log")
        deadline = time.monotonic() + 30
        # (beat also catches up today's run, whose input is missing: that one fails, as it should)
        while {r["run_date"]: r["state"] for r in ledger.schedule_runs("nightly")}["2026-11-30"] != "submitted":
            assert time.monotonic() < deadline, (tmp_path / "beat.log").read_text()[-3000:]
            time.sleep(0.2)
        # Then beat submitted both waiting runs, once each, under their batch ids
        deadline = time.monotonic() + 30
        while {r["run_date"]: r["state"] for r in ledger.schedule_runs("nightly")}["2026-11-29"] != "submitted":
            assert time.monotonic() < deadline, (tmp_path / "beat.log").read_text()[-3000:]
            time.sleep(0.2)
        client = redis.Redis.from_url(server.url)
        assert client.hget(f"{ns}:batch:nightly-2026-11-30", "total") == b"20"
        assert client.hget(f"{ns}:batch:nightly-2026-11-29", "total") == b"5"
        assert queued(client, ns) == 25
        assert "schedule nightly: run 2026-11-30: trying Redis again" in (tmp_path / "beat.log").read_text()
    finally:
        if beat is not None:
            beat.terminate()
            beat.wait(timeout=30)
        ledger.close()
        server.stop()


def test_ticks_due_while_the_ledger_database_restarts_are_run_once_it_is_back(tmp_path, redis_url):
    # Given a real beat with a 2 s schedule whose ledger is a private PostgreSQL
    from tests.postgres_server import PrivatePostgres

    database = PrivatePostgres()
    config, ns = cluster_config(tmp_path)
    with_schedules(config, """
[schedules.tick]
pipeline = "ticket-triage"
input = "in/tickets-{date}.jsonl"
every_s = 2
""")
    (tmp_path / "config" / "in").mkdir()
    today = datetime.now(UTC).date()
    for day in (today, today + timedelta(days=1)):
        write_tickets(tmp_path / "config" / "in" / f"tickets-{day.isoformat()}.jsonl", 3)
    env = {**cascade_env(redis_url, "http://127.0.0.1:1"), "CASCADE_LEDGER_URL": database.url}
    ledger = Ledger(database.url)
    beat = None
    try:
        ledger.migrate()
        beat = start_beat(config, env, tmp_path / "beat.log")

        def keys() -> list[int]:
            return sorted(int(r["run_date"]) for r in ledger.schedule_runs("tick"))

        def states(until: float) -> dict[int, str]:
            return {int(r["run_date"]): r["state"] for r in ledger.schedule_runs("tick") if int(r["run_date"]) <= until}

        deadline = time.monotonic() + 30
        while len(keys()) < 2:
            assert time.monotonic() < deadline, (tmp_path / "beat.log").read_text()[-3000:]
            time.sleep(0.2)
        # When the database stops for six seconds (three ticks), then runs for a few more
        database.shutdown()
        stopped = time.time()
        time.sleep(6)
        database.start()
        deadline = time.monotonic() + 60
        end = stopped + 12      # the slots up to here are looked at once each has been submitted
        while not keys() or keys()[-1] < end or set(states(end).values()) != {"submitted"}:
            assert time.monotonic() < deadline, (states(end), (tmp_path / "beat.log").read_text()[-3000:])
            time.sleep(0.2)
        # Then no tick was lost: every 2 s slot has its run, its 3 jobs counted once, and beat said why it waited
        slots = sorted(states(end))
        assert slots == list(range(slots[0], slots[-1] + 1, 2)) and slots[-1] > end - 2
        # (a run the outage cut between opening its batch and recording it is resumed under the same batch
        # id: its batch counts a second run, and its 3 jobs are registered once)
        client = redis.Redis.from_url(redis_url)
        batches = {key: client.hgetall(f"{ns}:batch:tick-{key}") for key in slots}
        assert all(int(b[b"runs"]) >= 1 and b[b"total"] == b"3" for b in batches.values()), batches
        text = (tmp_path / "beat.log").read_text()
        assert "waits for the ledger" in text and "Traceback" not in text
    finally:
        if beat is not None:
            beat.terminate()
            beat.wait(timeout=30)
        ledger.close()
        delete_namespace(redis_url, ns)
        database.stop()


def queued(client: redis.Redis, ns: str) -> int:
    """Messages on the cheap tier's queue (kombu keeps one list per priority)."""
    return sum(client.llen(key) for key in client.scan_iter(f"{ns}.tier.cheap*"))


# -- real Celery beat ---------------------------------------------------------------------------------------

def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s: a process that does not stop must not outlive the test."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def start_beat(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`cascade beat`, logging to a file; returns once beat's loop started."""
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(BIN / "cascade"), "beat", "--config", str(config)], env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while b"beat: Starting..." not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def test_beat_closing_never_waits_for_a_run_blocked_on_what_the_closing_thread_holds(tmp_path):
    import threading

    from cascade.ops.beat import scheduler_class
    from cascade.worker.celery_app import create_app

    # Given: beat's scheduler with a run in progress that waits for a lock, as a pool thread waits for the
    # logging lock when Celery's SIGTERM handler interrupts the main thread in the middle of a log line
    settings = load_settings(copy_config(tmp_path), environ={})
    scheduler = scheduler_class(settings, Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))(
        app=create_app(settings), lazy=True)
    held, holding, started, finished, closed = (threading.Lock(), threading.Event(), threading.Event(),
                                                threading.Event(), threading.Event())

    def close_holding_the_lock() -> None:
        with held:
            holding.set()
            assert started.wait(5)
            scheduler.close()
            closed.set()

    def run() -> None:
        started.set()
        with held:
            finished.set()

    closer = threading.Thread(target=close_holding_the_lock, daemon=True)
    closer.start()
    assert holding.wait(5)
    scheduler._pool.submit(run)
    try:
        # When: the thread holding that lock closes the scheduler
        # Then: closing returns at once, and the run in progress still finishes afterwards
        assert closed.wait(5), "close() waited for a run that waits for the closing thread"
        assert finished.wait(5)
    finally:
        if not closed.is_set():
            held.release()      # let the run and the closer end, so a failure does not hang the suite


def test_real_beat_submits_one_batch_per_tick_and_a_second_or_restarted_beat_submits_nothing_twice(
        tmp_path, redis_url):
    # Given a schedule every 2 s with an export, one whose input never exists, real workers and a ledger writer
    config, ns = cluster_config(tmp_path)
    with_schedules(config, """
[schedules.tick]
pipeline = "ticket-triage"
input = "in/tickets-{date}.jsonl"
every_s = 2
export = "out/{batch}.jsonl"

[schedules.lost]
pipeline = "ticket-triage"
input = "in/never-{date}.jsonl"
every_s = 2
""")
    (tmp_path / "config" / "in").mkdir()
    today = datetime.now(UTC).date()
    for day in (today, today + timedelta(days=1)):      # a test running over midnight UTC has its file too
        write_tickets(tmp_path / "config" / "in" / f"tickets-{day.isoformat()}.jsonl", 12)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    client = redis.Redis.from_url(redis_url)
    procs: list[subprocess.Popen] = []
    with SimServer(fast_scenario()) as sim:
        env = {**cascade_env(redis_url, sim.url), "CASCADE_LEDGER_URL": url}
        workers = Workers(config, env, tmp_path)
        ledger = Ledger(ledger_url(url, tmp_path))
        try:
            ledger.migrate()    # before the processes that share it: two first migrations of one SQLite file race
            with open(tmp_path / "ledger.log", "wb") as f:
                procs.append(subprocess.Popen([str(BIN / "cascade"), "ledger", "--config", str(config)], env=env,
                                              stdout=f, stderr=subprocess.STDOUT))

            def runs(state: str | None = None) -> list[dict]:
                return [r for r in ledger.schedule_runs("tick") if state is None or r["state"] == state]

            def wait_for(n: int, timeout: float = 30) -> None:
                deadline = time.monotonic() + timeout
                while len(runs()) < n:
                    assert time.monotonic() < deadline, (tmp_path / "beat-a.log").read_text()[-3000:]
                    time.sleep(0.2)

            # When beat runs for two ticks, a second beat joins it for two more, and the first is stopped and
            # started again for two more
            beat_a = start_beat(config, env, tmp_path / "beat-a.log")
            procs.append(beat_a)
            for tier in ("cheap", "mid", "frontier"):    # beat ticks meanwhile: its batches wait for workers
                workers.start(tier)
            wait_for(2)
            beat_b = start_beat(config, env, tmp_path / "beat-b.log")
            procs.append(beat_b)
            wait_for(len(runs()) + 2)
            beat_a.send_signal(signal.SIGTERM)
            beat_a.wait(timeout=30)
            beat_a2 = start_beat(config, env, tmp_path / "beat-a2.log")
            procs.append(beat_a2)
            wait_for(len(runs()) + 2)
            beat_b.send_signal(signal.SIGTERM)
            beat_b.wait(timeout=30)
            # the restarted beat exports each batch once it is finished
            taken = runs()
            deadline = time.monotonic() + 120
            while any(r["state"] != "exported" for r in runs() if r["run_date"] in {t["run_date"] for t in taken}):
                assert time.monotonic() < deadline, runs()
                time.sleep(0.3)
            beat_a2.send_signal(signal.SIGTERM)
            assert beat_a2.wait(timeout=30) == 0
        finally:
            try:
                for proc in procs:
                    stop(proc)
            finally:
                workers.close()

    # Then every tick has exactly one run and one batch, submitted once (its Redis record counts one run)
    all_runs = runs()
    assert len(taken) >= 6
    for run in all_runs:
        assert run["batch_id"] == f"tick-{run['run_date']}" and int(run["run_date"]) % 2 == 0
        assert run["state"] in ("submitted", "exported"), run
        assert client.hget(f"{ns}:batch:{run['batch_id']}", "runs") == b"1"
    for run in taken:
        # each batch completed: the ledger has its 12 results, and its own export holds the same records
        assert ledger.batch(run["batch_id"])["state"] == "finished"
        assert ledger.result_count(run["batch_id"]) == 12
        exported = read_jsonl(tmp_path / "config" / "out" / f"{run['batch_id']}.jsonl")
        assert len(exported) == 12 and {r["batch"] for r in exported} == {run["batch_id"]}
    # the second beat and the restarted one met runs that were taken and submitted nothing for them
    logs = "".join((tmp_path / name).read_text() for name in ("beat-a.log", "beat-b.log", "beat-a2.log"))
    assert "already ran (submitted" in logs or "is being submitted by another process" in logs
    submitted_lines = [line for line in logs.splitlines() if " submitted: 12 jobs queued" in line]
    assert len(submitted_lines) == len({line.split(" batch ")[1].split()[0] for line in submitted_lines})
    # And the schedule whose input is missing failed each tick with an alert, while beat kept going
    lost = ledger.schedule_runs("lost")
    assert len(lost) >= len(taken) and {r["state"] for r in lost} == {"failed"}
    assert all(r["reason"].startswith(f"input {tmp_path / 'config' / 'in' / 'never-'}") for r in lost)
    alerts = [a for a in ledger.alerts() if a["kind"] == "schedule_failed"]
    assert len(alerts) == len(lost) and all(a["details"]["schedule"] == "lost" for a in alerts), ([(a["details"]["run_date"], a["at"]) for a in alerts], [(r["run_date"], r["started_at"], r["updated_at"]) for r in lost])
    assert "WARNING cascade.schedules: scheduled run lost " in logs
    ledger.close()
    delete_namespace(redis_url, ns)


def test_the_commented_example_in_cascade_toml_is_a_valid_schedule(tmp_path):
    config = copy_config(tmp_path)
    lines = config.read_text().splitlines()
    start = lines.index("# [schedules.nightly-tickets]")
    example = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        example.append(line[2:])
    config.write_text(config.read_text() + "\n" + "\n".join(example) + "\n")
    settings = load_settings(config, environ={})
    run = plan(settings, "nightly-tickets", "2026-12-02")
    assert run.batch == "nightly-tickets-2026-12-02" and settings.schedules["nightly-tickets"].budget_usd == 20.0
    assert run.input == tmp_path / "config" / "in" / "tickets-2026-12-02.jsonl"
    assert run.export == tmp_path / "config" / "out" / "tickets-2026-12-02.jsonl"


@pytest.mark.parametrize("args", [["beat"], ["schedules", "run", "nightly"]])
def test_without_redis_beat_and_schedules_run_say_what_they_need(tmp_path, monkeypatch, args):
    config = with_schedules(copy_config(tmp_path), '[schedules.nightly]\npipeline = "ticket-triage"\n'
                                                   'input = "in.jsonl"\ncron = "0 2 * * *"\n')
    monkeypatch.delenv("CASCADE_REDIS_URL", raising=False)
    where = ["--config", str(config)]
    result = CliRunner().invoke(cascade, args + where if args == ["beat"] else ["schedules", *where, *args[1:]])
    assert result.exit_code == 2
    assert "needs a Redis URL (--redis-url or CASCADE_REDIS_URL)" in result.output
