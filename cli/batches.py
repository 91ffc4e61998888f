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


def _distributed_store(settings: Settings):
    if settings.embedded:
        raise click.UsageError("this command needs a Redis URL (--redis-url or CASCADE_REDIS_URL): "
                               "an embedded batch lives only inside the process that ran it")
    import redis

    from cascade.worker.backends import batch_store

    return batch_store(settings, redis.Redis.from_url(settings.redis.url))


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
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(format_summary(summary, f"batch {batch} ({record.state}, pipeline {pipe.name})"))


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
