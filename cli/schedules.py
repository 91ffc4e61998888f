"""`cascade beat` (submit scheduled batches) and `cascade schedules` (list them, run or backfill one now)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import click
import orjson

from cascade.cli.common import Command, Group, config_option, load, redact, redis_option
from cascade.ledger.database import LedgerError, open_ledger, redact_url


@click.command("beat", cls=Command)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@config_option
@redis_option
def beat(loglevel: str, config_path: str | None, redis_url: str | None) -> None:
    """Run Celery beat with the [schedules] of the config: each due run is submitted as its batch.

    Run exactly one per cluster (a second one submits nothing twice, but is not needed). Each run is
    recorded in the ledger first, so a restarted beat never submits a run again. Stops on SIGTERM or Ctrl-C.

    Example: CASCADE_REDIS_URL=redis://localhost:6379/0 cascade beat
    """
    from cascade.ops.beat import run_beat
    from cascade.ops.cron import next_runs
    from cascade.ops.schedules import timing

    settings = load(config_path, redis_url)
    if settings.embedded:
        raise click.UsageError("beat submits batches for workers: it needs a Redis URL (--redis-url or "
                               "CASCADE_REDIS_URL)")
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)     # one line per migration step is noise here
    ledger = _ledger(settings)
    try:
        click.echo(f"cascade beat: {len(settings.schedules)} schedules, broker {redact(settings.redis.url)}, ledger "
                   f"{redact_url(ledger.url)}", err=True)
        for name, schedule in settings.schedules.items():
            [when] = next_runs(timing(schedule), n=1)
            click.echo(f"cascade beat: {name}: {_timing_text(schedule)}, next run {when.isoformat()}", err=True)
        if not settings.schedules:
            click.echo("cascade beat: no [schedules.NAME] in the config: nothing will run", err=True)
        run_beat(settings, ledger, loglevel.upper())
    finally:
        ledger.close()


@click.group("schedules", cls=Group, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per schedule on stdout.")
@click.option("--runs", "n_runs", type=click.IntRange(0), default=3, show_default=True,
              help="How many of the latest runs to show per schedule.")
@config_option
@click.pass_context
def schedules(ctx: click.Context, as_json: bool, n_runs: int, config_path: str | None) -> None:
    """List the schedules with their next run and their latest runs from the ledger.

    Example: cascade schedules
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"config_path": config_path}
        return
    from cascade.ops.cron import next_runs
    from cascade.ops.schedules import last_runs, timing

    settings = load(config_path, None)
    if not settings.schedules:
        click.echo("no schedules: add a [schedules.NAME] section to the config (see config/cascade.toml)", err=True)
        return
    ledger = _ledger(settings)
    try:
        for name, schedule in settings.schedules.items():
            upcoming = [t.isoformat() for t in next_runs(timing(schedule), n=1)]
            runs = last_runs(ledger, name, n_runs)
            if as_json:
                click.echo(orjson.dumps({"schedule": name, "pipeline": schedule.pipeline,
                                         "timing": _timing_text(schedule), "next_run": upcoming[0],
                                         "runs": runs}).decode())
                continue
            click.echo(f"{name}  pipeline {schedule.pipeline}  {_timing_text(schedule)}  next run {upcoming[0]}")
            for run in runs:
                batch = (f"batch {run['batch_state']} {run['done']}/{run['total']}" if run["batch_state"]
                         else "no batch" if run["state"] == "failed" else "batch not in the ledger yet")
                click.echo(f"  {run['run_date']}  {run['batch']}  {run['state']}  ({batch})"
                           + (f"  {run['reason']}" if run["reason"] else ""))
            if not runs:
                click.echo("  no runs yet")
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    finally:
        ledger.close()


@schedules.command("run")
@click.argument("name")
@click.option("--date", "run_date", help="Run date YYYY-MM-DD to run or backfill (default: today in the schedule's "
                                         "time zone; for an every_s schedule, a slot's epoch second).")
@config_option
@redis_option
@click.pass_obj
def run_command(obj: dict, name: str, run_date: str | None, config_path: str | None, redis_url: str | None) -> None:
    """Run one schedule now (or backfill a past date); prints the batch id on stdout.

    A run that exists already is not submitted again; a failed one (say its input was missing) is run
    again. Exit status: 0 submitted or already ran, 1 the run failed or waits for Redis (the reason is
    printed and kept).

    Example: cascade schedules run nightly-tickets --date 2026-12-01
    """
    from cascade.ops.schedules import current_key, plan, run_schedule

    settings = load(config_path or obj["config_path"], redis_url)    # --config before or after `run`
    if name not in settings.schedules:
        known = ", ".join(sorted(settings.schedules)) or "none"
        raise click.BadParameter(f"unknown schedule '{name}' (in [schedules]: {known})", param_hint="NAME")
    if settings.embedded and settings.schedules[name].kind == "batch":
        raise click.UsageError("a scheduled batch is submitted for workers: it needs a Redis URL (--redis-url or "
                               "CASCADE_REDIS_URL)")
    today = current_key(settings.schedules[name], datetime.now(UTC))
    key = run_date or today
    try:
        plan(settings, name, key)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--date") from None
    if (int(key) > int(today)) if key.isdigit() else key > today:   # a slot (epoch second) or a YYYY-MM-DD date
        raise click.BadParameter(f"{key} is still to come (the current run is {today}): run today's or backfill a "
                                 "past one; a future run would take the place of the one its schedule makes",
                                 param_hint="--date")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")    # why a run failed, Redis waits
    ledger = _ledger(settings)
    try:
        outcome = run_schedule(settings, name, key, ledger, retry_failed=True)
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    finally:
        ledger.close()
    click.echo(outcome.batch)
    if outcome.outcome == "failed":     # its reason and what to check were logged above
        raise click.ClickException(f"run {outcome.key} of schedule {name} failed (kept in the ledger with an "
                                   "alert; `cascade schedules` lists it)")
    if outcome.outcome == "waiting":    # the reason was logged above
        raise click.ClickException(f"run {outcome.key} of schedule {name} is not submitted yet: Redis does not "
                                   "answer; `cascade beat` submits it once Redis is back, or run this again")
    click.echo(outcome.message, err=True)
    if outcome.outcome in ("submitted", "resumed"):
        click.echo(f"follow it with: cascade status {outcome.batch} / cascade results {outcome.batch} --follow",
                   err=True)


def _timing_text(schedule) -> str:
    if schedule.every_s is not None:
        return f"every {schedule.every_s} s"
    return f"cron '{schedule.cron}' {schedule.timezone}"


def _ledger(settings):
    """The ledger, migrated, or a ClickException."""
    ledger = open_ledger(settings)
    try:
        ledger.migrate()
    except LedgerError as e:
        ledger.close()
        raise click.ClickException(str(e)) from None
    return ledger
