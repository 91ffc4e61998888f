"""Scheduled batches: which run a tick belongs to, its batch id and files, and submitting it exactly once.

A run is keyed by its schedule and run date (YYYY-MM-DD in the schedule's time zone; for an `every_s`
schedule, the epoch second its slot starts). The ledger's `schedule_runs` row is claimed before anything is
submitted, so a retried tick, a restarted beat or a second beat find the run and submit nothing. A run
left `submitting` by a process that died is resumed: submission is idempotent by batch id (rows already
registered are skipped). A run that cannot start (missing input, a refused submission) is `failed` with its
reason, an alert row and a WARNING; a failed run is run again only on request (`cascade schedules run`).
Redis unreachable is a passing fault, not a reason to fail the night's run: the run stays `submitting`
with the reason, beat's periodic check tries it again, and only after `REDIS_PATIENCE_S` is it failed.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from cascade.errors import CascadeError, ConfigError
from cascade.ledger.database import Ledger, open_ledger
from cascade.ops.cron import Every, ZonedCrontab, parse_cron, previous_run, zone
from cascade.worker.config.schema import Schedule, Settings
from cascade.worker.store import BatchStore, StoreError
from cascade.worker.store_retry import PASSING

log = logging.getLogger("cascade.schedules")

HEARTBEAT_S = 5.0             # a submitting run's row is touched this often
LOST_CHECK_RUNS = 5           # the newest runs of a schedule whose batch is looked for in Redis (in flight)
STALE_SUBMITTING_S = 30.0     # a submitting row untouched this long was left by a process that died: resume it
SUBMITTING, SUBMITTED, FAILED, EXPORTED = "submitting", "submitted", "failed", "exported"
REDIS_PATIENCE_S = 3600.0     # how long a scheduled run waits for an unreachable Redis before it is failed
WAITING_FOR_REDIS = "waiting for Redis"
AUDITED = "audited"         # a kind = "audit" run: the audit ran (its drift, if any, is an audit_drift alert)


@dataclass(frozen=True)
class RunPlan:
    """One run of a schedule: its key, batch id and files."""

    schedule: Schedule
    key: str                    # the schedule_runs run_date: YYYY-MM-DD, or an every_s slot's epoch second
    date: str                   # what {date} becomes
    batch: str
    input: Path
    export: Path | None


@dataclass(frozen=True)
class RunOutcome:
    """What `run_schedule` did: submitted | resumed | audited (a kind = "audit" run) | already (ran before) |
    busy (another process submits it now) | waiting (for Redis: tried again later) | failed."""

    schedule: str
    key: str
    batch: str
    outcome: str
    state: str
    reason: str = ""
    published: int = 0

    @property
    def message(self) -> str:
        """One line for a person."""
        head = f"schedule {self.schedule}: run {self.key}" + ("" if self.state == AUDITED else f": batch {self.batch}")
        if self.outcome == "already":
            return f"{head} already ran ({self.state}{': ' + self.reason if self.reason else ''}); nothing submitted"
        if self.outcome == "busy":
            return f"{head} is being submitted by another process right now; nothing submitted"
        return f"{head} {self.outcome}{': ' + self.reason if self.reason else ''}"


def timing(schedule: Schedule) -> ZonedCrontab | Every:
    """When the schedule fires (validated at config load, so no error here)."""
    if schedule.every_s is not None:
        return Every(schedule.every_s, zone(schedule.timezone))
    return parse_cron(schedule.cron, schedule.timezone)


def run_key(schedule: Schedule, moment: datetime) -> str:
    """The run a tick at `moment` belongs to: the date (in the schedule's zone) of the latest occurrence at or
    before it; for `every_s`, the epoch second of its slot."""
    when = timing(schedule)
    if isinstance(when, Every):
        return str(when.slot(moment))
    return previous_run(when, moment).date().isoformat()


def current_key(schedule: Schedule, now: datetime | None = None) -> str:
    """The run `cascade schedules run NAME` runs without --date: today's (in the schedule's zone), or the
    current slot."""
    now = now or datetime.now(UTC)
    when = timing(schedule)
    if isinstance(when, Every):
        return str(when.slot(now))
    return now.astimezone(when.tz).date().isoformat()


def key_time(schedule: Schedule, key: str) -> datetime:
    """The scheduled moment of a run key: an every_s slot's start, a date's last occurrence of the cron."""
    when = timing(schedule)
    if isinstance(when, Every):
        return datetime.fromtimestamp(int(key), when.tz)
    day = date.fromisoformat(key)
    return previous_run(when, datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=when.tz))


def check_key(schedule: Schedule, key: str) -> str:
    """`key` if it is a run key of this schedule, else ValueError saying what one looks like."""
    if schedule.every_s is not None:
        if not key.isdigit() or int(key) % schedule.every_s:
            raise ValueError(f"'{key}' is not a slot of schedule {schedule.name} (every {schedule.every_s} s: an "
                             f"epoch second divisible by {schedule.every_s})")
        return key
    try:
        date.fromisoformat(key)
    except ValueError:
        raise ValueError(f"'{key}' is not a date (YYYY-MM-DD)") from None
    if len(key) != 10:
        raise ValueError(f"'{key}' is not a date (YYYY-MM-DD)")
    return key


def batch_id(name: str, key: str) -> str:
    """The batch id of a run: the schedule's name and the run key, e.g. nightly-tickets-2026-12-02."""
    return f"{name}-{key}"


def resolve_path(template: str, day: str, config_dir: Path, batch: str = "") -> Path:
    """A schedule's input or export path for a date (an export's {batch}: the run's batch id); relative paths
    start at the folder of cascade.toml."""
    path = Path(template.replace("{date}", day).replace("{batch}", batch))
    return path if path.is_absolute() else Path(config_dir) / path


def plan(settings: Settings, name: str, key: str) -> RunPlan:
    """The run `key` of schedule `name`; ConfigError for an unknown schedule, ValueError for a bad key."""
    try:
        schedule = settings.schedules[name]
    except KeyError:
        known = ", ".join(sorted(settings.schedules)) or "none"
        raise ConfigError(f"unknown schedule '{name}' (in [schedules]: {known})") from None
    key = check_key(schedule, key)
    day = key if schedule.every_s is None else key_time(schedule, key).date().isoformat()
    export = resolve_path(schedule.export, day, settings.config_dir, batch_id(name, key)) if schedule.export else None
    return RunPlan(schedule, key, day, batch_id(name, key), resolve_path(schedule.input, day, settings.config_dir),
                   export)


def run_schedule(settings: Settings, name: str, run_date: str, ledger: Ledger | None = None,
                 retry_failed: bool = False) -> RunOutcome:
    """Submit run `run_date` of schedule `name` unless it ran already; never waits for the batch.

    A failed run is submitted again only with `retry_failed` (the user fixed the input)."""
    run = plan(settings, name, run_date)
    own = ledger is None
    ledger = ledger or open_ledger(settings)
    try:
        ledger.migrate()
        if ledger.claim_schedule_run(name, run.key, run.batch):
            return _submit(settings, ledger, run, "submitted")
        row = next(r for r in ledger.schedule_runs(name) if r["run_date"] == run.key)
        if row["state"] == SUBMITTING:
            if time.time() - row["updated_at"] < STALE_SUBMITTING_S:
                return RunOutcome(name, run.key, run.batch, "busy", SUBMITTING)
            if row["reason"].startswith(WAITING_FOR_REDIS):
                log.info("schedule %s: run %s: trying Redis again", name, run.key)
            else:
                log.warning("schedule %s: run %s was left submitting (its process died); resuming batch %s",
                            name, run.key, run.batch)
            return _submit(settings, ledger, run, "resumed")
        if row["state"] == FAILED and retry_failed:
            ledger.update_schedule_run(name, run.key, SUBMITTING, "", restart=True)   # its wait for Redis starts now
            return _submit(settings, ledger, run, "submitted")
        return RunOutcome(name, run.key, row["batch_id"], "already", row["state"], row["reason"])
    finally:
        if own:
            ledger.close()


def _submit(settings: Settings, ledger: Ledger, run: RunPlan, outcome: str) -> RunOutcome:
    """Submit the run's input as its batch with the producer's Submitter; a run that cannot is failed."""
    name = run.schedule.name
    if not run.input.is_file():
        return fail(ledger, run, f"input {run.input} does not exist",
                    f"put the file there, then run `cascade schedules run {name} --date {run.key}`")
    if run.schedule.kind == "audit":
        return _audit(settings, ledger, run)
    if settings.embedded:
        return fail(ledger, run, "no Redis URL is configured: a scheduled batch needs workers",
                    "set [redis] url or CASCADE_REDIS_URL for `cascade beat`")
    try:
        result = _submit_file(settings, ledger, run)
    except PASSING as error:
        return _wait_for_redis(ledger, run, error)
    except (CascadeError, StoreError, RedisError, OSError) as error:
        return fail(ledger, run, f"could not submit: {error}",
                    f"fix the cause, then run `cascade schedules run {name} --date {run.key}`")
    if result.published + result.already_submitted == 0 and result.rejected:
        return fail(ledger, run, f"every row of {run.input} was rejected ({result.rejected[0]})",
                    f"fix the input, then run `cascade schedules run {name} --date {run.key}`")
    reason = f"{result.published} jobs queued from {run.input}"
    if result.already_submitted:
        reason += f", {result.already_submitted} submitted earlier"
    if result.rejected:
        reason += f", {len(result.rejected)} rows rejected (first: {result.rejected[0]})"
    ledger.update_schedule_run(name, run.key, SUBMITTED, reason)
    log.info("schedule %s: run %s: batch %s %s: %s", name, run.key, run.batch, outcome, reason)
    return RunOutcome(name, run.key, run.batch, outcome, SUBMITTED, reason, result.published)


def _wait_for_redis(ledger: Ledger, run: RunPlan, error: Exception) -> RunOutcome:
    """Redis did not answer: keep the run `submitting` (beat's check tries again), or fail it after the patience."""
    name = run.schedule.name
    row = next((r for r in ledger.schedule_runs(name) if r["run_date"] == run.key), None)
    waited = time.time() - (row["started_at"] if row else time.time())
    if waited >= REDIS_PATIENCE_S:
        return fail(ledger, run, f"Redis unreachable for {waited / 60:.0f} min ({error})",
                    f"start Redis or fix [redis] url, then run `cascade schedules run {name} --date {run.key}`")
    reason = (f"{WAITING_FOR_REDIS} ({error}); `cascade beat` tries again every {STALE_SUBMITTING_S:.0f} s, for "
              f"up to {REDIS_PATIENCE_S / 60:.0f} min")
    ledger.update_schedule_run(name, run.key, SUBMITTING, reason)
    log.warning("schedule %s: run %s: %s", name, run.key, reason)
    return RunOutcome(name, run.key, run.batch, "waiting", SUBMITTING, reason)


def _audit(settings: Settings, ledger: Ledger, run: RunPlan) -> RunOutcome:
    """A scheduled verifier drift audit: replay the labelled set, keep an alert per drifted figure."""
    from cascade.ops.audit import alert_rows, run_audit

    name = run.schedule.name
    try:
        result = run_audit(settings, run.schedule.pipeline, run.input, run.schedule.split or None)
    except (CascadeError, OSError) as error:
        return fail(ledger, run, f"could not audit: {error}",
                    f"fix the cause, then run `cascade schedules run {name} --date {run.key}`")
    for row in alert_rows(result):
        ledger.record_alert({**row, "details": {**row["details"], "schedule": name, "run_date": run.key}})
        log.warning("schedule %s: run %s: %s; check: %s", name, run.key, row["message"], row["check"])
    accuracy = result.figures[0]
    reason = (f"audit of {result.rows} rows of {run.input}: accuracy {accuracy.today:.1%} "
              f"(calibrated {accuracy.calibrated:.1%}); "
              + (f"{len(result.drifted)} figures drifted" if result.drifted else "no drift"))
    ledger.update_schedule_run(name, run.key, AUDITED, reason)
    log.info("schedule %s: run %s audited: %s", name, run.key, reason)
    return RunOutcome(name, run.key, run.batch, "audited", AUDITED, reason)


def _submit_file(settings: Settings, ledger: Ledger, run: RunPlan):
    """The producer's code path, as `cascade-submit` without --wait: open the batch, feed every row."""
    from cascade.producer import resume
    from cascade.producer.reader import RawRow, read_rows
    from cascade.producer.submit import Submitter
    from cascade.worker.backends import open_backend

    pipeline = settings.pipeline(run.schedule.pipeline)
    touched = [time.monotonic()]

    def heartbeat() -> None:            # the row stays fresh: no one takes this run for abandoned
        if time.monotonic() - touched[0] >= HEARTBEAT_S:
            touched[0] = time.monotonic()
            ledger.update_schedule_run(run.schedule.name, run.key, SUBMITTING)

    fmt = "csv" if run.input.suffix.lower() == ".csv" else "jsonl"

    def rows() -> Iterator[RawRow]:
        with run.input.open("rb") as stream:
            yield from read_rows(stream, fmt, settings.producer.max_row_bytes)

    def say(message: str) -> None:
        log.warning("schedule %s: %s", run.schedule.name, message)

    def kept() -> set[str]:
        return ledger.job_ids(run.batch)

    backend = open_backend(settings, pipeline=pipeline)
    try:
        submitter = Submitter(backend, settings, pipeline, run.batch, round(run.schedule.budget_usd * 1e9),
                              while_waiting=heartbeat, say=say)
        number = submitter.open(str(run.input))
        result = submitter.run(resume.first_rows(number, True, rows(), kept, say, run.batch))
        resume.submit_forgotten(submitter, rows, kept, say)      # what Redis forgot while the pass ran
        return result
    finally:
        backend.close()


def fail(ledger: Ledger, run: RunPlan, reason: str, check: str) -> RunOutcome:
    """Mark the run failed, keep an alert row and log a WARNING; never raises for the run itself."""
    name = run.schedule.name
    ledger.update_schedule_run(name, run.key, FAILED, reason)
    message = f"scheduled run {name} {run.key} (batch {run.batch}) failed: {reason}"
    ledger.record_alert({"kind": "schedule_failed", "state": "fired", "pipeline": run.schedule.pipeline, "tier": "",
                         "window": f"run {run.key}", "message": message, "check": check,
                         "details": {"schedule": name, "run_date": run.key, "batch": run.batch,
                                     "input": str(run.input)}})
    log.warning("%s; check: %s", message, check)
    return RunOutcome(name, run.key, run.batch, "failed", FAILED, reason)


def export_run(settings: Settings, ledger: Ledger, name: str, key: str) -> bool:
    """Write a submitted run's results to its export path once its batch is finished; True when written."""
    from cascade.producer.collect import Collector, RecordWriter

    run = plan(settings, name, key)
    batch = ledger.batch(run.batch)
    if run.export is None or batch is None or batch["state"] != "finished":
        return False
    fmt = "csv" if run.export.suffix.lower() == ".csv" else "jsonl"
    # its own partial file: two beats (one too many, or one restarting) may export the same run at once;
    # each writes the same records and the last rename wins
    partial = run.export.with_name(f"{run.export.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        run.export.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as sink:
            writer = RecordWriter(sink, fmt)
            Collector(ledger, run.batch, writer).collect()
        os.replace(partial, run.export)         # a reader never sees half a file
    except OSError as error:
        partial.unlink(missing_ok=True)
        fail(ledger, run, f"could not export to {run.export}: {error.strerror or error}",
             f"make {run.export.parent} writable; the results stay in the ledger (`cascade results {run.batch}`)")
        return False
    ledger.update_schedule_run(name, key, EXPORTED, f"{writer.written} results written to {run.export}")
    log.info("schedule %s: run %s: %d results of batch %s written to %s", name, key, writer.written, run.batch,
             run.export)
    return True


def maintain(settings: Settings, ledger: Ledger, store: BatchStore | None = None) -> list[RunOutcome]:
    """Beat's periodic check: resume runs left submitting by a dead process, or whose batch Redis lost before it
    finished (`store`: the batch store to look in, kept by the caller; else one is opened for the look);
    export finished batches."""
    resumed = []
    lost = _lost_batches(settings, ledger, store)
    for name, schedule in settings.schedules.items():
        for row in ledger.schedule_runs(name):
            try:
                if row["state"] == SUBMITTING and time.time() - row["updated_at"] >= STALE_SUBMITTING_S:
                    resumed.append(run_schedule(settings, name, row["run_date"], ledger))
                elif row["state"] == SUBMITTED and row["batch_id"] in lost:
                    log.warning("schedule %s: run %s: Redis lost batch %s before it finished (restarted without its "
                                "data?); submitting what the ledger does not hold", name, row["run_date"],
                                row["batch_id"])
                    ledger.update_schedule_run(name, row["run_date"], SUBMITTING, "Redis lost its batch: resuming")
                    resumed.append(_submit(settings, ledger, plan(settings, name, row["run_date"]), "resumed"))
                elif row["state"] == SUBMITTED and schedule.export:
                    export_run(settings, ledger, name, row["run_date"])
            except ValueError as error:     # a row from an earlier config of the schedule (every_s vs cron)
                log.debug("schedule %s: run %s skipped: %s", name, row["run_date"], error)
    return resumed


def _lost_batches(settings: Settings, ledger: Ledger, store: BatchStore | None) -> set[str]:
    """The batches of submitted runs that the ledger holds unfinished and Redis no longer has (it lost them);
    none when Redis cannot be reached (it cannot say)."""
    unfinished = set()
    for name in settings.schedules:
        for row in ledger.schedule_runs(name)[:LOST_CHECK_RUNS]:
            if row["state"] == SUBMITTED:
                batch = ledger.batch(row["batch_id"])
                if batch is not None and batch["state"] not in ("finished", "cancelled"):
                    unfinished.add(row["batch_id"])
    if not unfinished or settings.embedded:
        return set()
    from cascade.worker.backends import batch_store, redis_client

    client = None if store is not None else redis_client(settings)
    try:
        store = store or batch_store(settings, client)
        return {batch for batch in unfinished if store.batch(batch) is None}
    except StoreError:
        return set()
    finally:
        if client is not None:
            client.close()


def last_runs(ledger: Ledger, name: str, n: int = 3) -> list[dict[str, Any]]:
    """The newest `n` runs of a schedule, each with its batch's state in the ledger (None: not there yet)."""
    rows = ledger.schedule_runs(name)[:n]
    out = []
    for row in rows:
        batch = ledger.batch(row["batch_id"])
        out.append({"run_date": row["run_date"], "batch": row["batch_id"], "state": row["state"],
                    "reason": row["reason"], "batch_state": batch["state"] if batch else None,
                    "done": batch["done"] if batch else 0, "total": batch["total"] if batch else 0})
    return out

