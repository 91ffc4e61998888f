"""Commands that read batches: `cascade status`, `cascade results`, `cascade stats`."""

from __future__ import annotations

import sys
from contextlib import ExitStack

import click
import orjson

from cascade.cli.common import Command, config_option, load, redact, redis_option
from cascade.errors import CascadeError
from cascade.producer.report import format_summary, summarize
from cascade.producer.results import ResultDrain
from cascade.worker.config import Settings
from cascade.worker.runtime import called_tiers
from cascade.worker.store import SweepStore


def _distributed_store(settings: Settings):
    if settings.embedded:
        raise click.UsageError("this command needs a Redis URL (--redis-url or CASCADE_REDIS_URL): "
                               "an embedded batch lives only inside the process that ran it")
    from cascade.worker.backends import batch_store, redis_client

    return batch_store(settings, redis_client(settings))


@click.command(cls=Command)
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@config_option
@redis_option
def status(batch: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Show a batch's progress, per-tier figures, cost and savings.

    Example: cascade status ticket-triage-20261122-081500-ab12
    """
    settings = load(config_path, redis_url)
    store = _distributed_store(settings)
    try:
        record = store.batch(batch)
    except CascadeError as e:
        raise click.BadParameter(str(e), param_hint="BATCH") from None
    if record is None:
        raise click.ClickException(f"no batch '{batch}' in {redact(settings.redis.url)}")
    pipe = load_pipeline(settings, record.pipeline)
    summary = summarize(record.counters, settings, pipe) | {"batch": batch, "state": record.state}
    sweeps = SweepStore(store.redis, settings.redis.namespace)
    summary["stopped_tiers"] = sweeps.stopped_tiers(called_tiers(pipe))
    workers = sweeps.live_workers()
    summary["workers"] = {tier: sum(1 for w in workers if w.tier == tier) for tier in pipe.ladder}
    if as_json:
        click.echo(orjson.dumps(summary).decode())
        return
    click.echo(format_summary(summary, f"batch {batch} ({record.state}, pipeline {pipe.name})"))
    click.echo("  workers: " + ", ".join(f"{tier} {n}" for tier, n in summary["workers"].items()))
    for tier, reason in summary["stopped_tiers"].items():
        click.echo(f"  STOPPED tier {tier}: {reason} (its jobs wait; fix it and restart its workers)")


def load_pipeline(settings: Settings, name: str):
    """A pipeline by name or a ClickException."""
    try:
        return settings.pipeline(name)
    except CascadeError as e:
        raise click.ClickException(str(e)) from None


@click.command(cls=Command)
@click.argument("batch")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Append the records to this file (default: stdout).")
@click.option("--follow", "-f", is_flag=True, help="Keep draining until the batch is finished.")
@click.option("--keep", is_flag=True, help="Leave the records in Redis (default: delete each once written).")
@config_option
@redis_option
def results(batch: str, out: str | None, follow: bool, keep: bool, config_path: str | None,
            redis_url: str | None) -> None:
    """Write a batch's result records as JSONL, removing them from Redis once written.

    Example: cascade results ticket-triage-20261122-081500-ab12 --follow --out results.jsonl
    """
    settings = load(config_path, redis_url)
    store = _distributed_store(settings)
    with ExitStack() as stack:
        sink = stack.enter_context(open(out, "ab")) if out else sys.stdout.buffer
        drain = ResultDrain(store, batch, sink, trim=not keep)
        if follow:
            drain.wait()
        else:
            drain.drain()
    click.echo(f"results: {drain.written} records" + (f" appended to {out}" if out else ""), err=True)


@click.command(cls=Command)
@click.option("--pipeline", "-p", "names", multiple=True, help="Only these pipelines (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per pipeline.")
@config_option
@redis_option
def stats(names: tuple[str, ...], as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Per pipeline and tier: attempts, escalation rate, reject reasons, tokens, cost, savings.

    Example: cascade stats --pipeline ticket-triage
    """
    settings = load(config_path, redis_url)
    store = _distributed_store(settings)
    for name in names or sorted(settings.pipelines):
        pipe = load_pipeline(settings, name)
        summary = summarize(store.pipeline_counters(name), settings, pipe)
        if as_json:
            click.echo(orjson.dumps(summary).decode())
        else:
            click.echo(format_summary(summary, f"pipeline {name} (all batches)"))


def _backend(settings: Settings):
    if settings.embedded:
        raise click.UsageError("this command needs a Redis URL (--redis-url or CASCADE_REDIS_URL): "
                               "an embedded batch lives only inside the process that ran it")
    from cascade.worker.backends import open_backend

    return open_backend(settings)


@click.command(cls=Command)
@click.argument("batch")
@config_option
@redis_option
def cancel(batch: str, config_path: str | None, redis_url: str | None) -> None:
    """Cancel a batch: queued jobs end `cancelled`; calls already in flight finish and are recorded.

    Example: cascade cancel ticket-triage-20261122-081500-ab12
    """
    settings = load(config_path, redis_url)
    backend = _backend(settings)
    try:
        record = backend.store.cancel(batch)
    finally:
        backend.close()
    if record is None:
        raise click.ClickException(f"no batch '{batch}' in {redact(settings.redis.url)}")
    left = record.total - record.done
    click.echo(f"batch {batch} cancelled: {left} unfinished jobs end cancelled as workers reach them "
               f"(run them later with `cascade retry {batch} --status cancelled`)", err=True)


@click.command(cls=Command)
@click.argument("batch")
@click.argument("usd", type=click.FloatRange(min=0, min_open=True))
@config_option
@redis_option
def budget(batch: str, usd: float, config_path: str | None, redis_url: str | None) -> None:
    """Set a batch's budget in USD (raise it while it runs; jobs that already ran out need `cascade retry`).

    Example: cascade budget nightly-2026-11-22 25
    """
    settings = load(config_path, redis_url)
    backend = _backend(settings)
    try:
        record = backend.store.batch(batch)
        if record is None:
            raise click.ClickException(f"no batch '{batch}' in {redact(settings.redis.url)}")
        backend.store.set_budget(batch, round(usd * 1e9))
    finally:
        backend.close()
    spent = record.counters.get("cost", 0) / 1e9
    click.echo(f"batch {batch}: budget ${usd:.6f} (spent so far ${spent:.6f})", err=True)


RETRY_STATUSES = ("failed", "budget_exhausted", "cancelled")


@click.command(cls=Command)
@click.argument("batch")
@click.option("--status", "statuses", default="failed,budget_exhausted", show_default=True,
              help=f"Comma-separated statuses to run again, of: {', '.join(RETRY_STATUSES)}.")
@config_option
@redis_option
def retry(batch: str, statuses: str, config_path: str | None, redis_url: str | None) -> None:
    """Run again the jobs of a batch that ended with these statuses.

    Each job starts again at the tier where it stopped (the tier that failed, or whose call did not fit
    the budget); the cheaper tiers it already paid for are not called again, and only the new calls'
    cost is added. Their new records carry "retry_round".

    Example: cascade retry nightly-2026-11-22 --status failed,budget_exhausted
    """
    from cascade.producer.control import retry as retry_jobs

    wanted = tuple(s.strip() for s in statuses.split(",") if s.strip())
    unknown = [s for s in wanted if s not in RETRY_STATUSES]
    if unknown or not wanted:
        raise click.BadParameter(f"unknown status {', '.join(unknown) or '(none)'}; use {', '.join(RETRY_STATUSES)}",
                                 param_hint="--status")
    settings = load(config_path, redis_url)
    backend = _backend(settings)
    try:
        count = retry_jobs(backend, settings, batch, wanted)
    finally:
        backend.close()
    click.echo(f"batch {batch}: {count} jobs put back to run again ({', '.join(wanted)}); follow them with "
               f"`cascade status {batch}`", err=True)
