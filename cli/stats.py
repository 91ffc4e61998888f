"""`cascade stats`: per pipeline and tier figures, live or over a period; or cost broken down by a tag."""

from __future__ import annotations

import time
from contextlib import ExitStack

import click
import orjson

from cascade.cli.batches import _ledger, _redis_store, parse_age
from cascade.cli.common import Command, config_option, load, load_pipeline, redis_option
from cascade.ledger.reports import by_tag, summed_counters
from cascade.producer.report import format_summary, summarize
from cascade.worker.store import StoreError


@click.command(cls=Command)
@click.option("--pipeline", "-p", "names", multiple=True, help="Only these pipelines (default: all).")
@click.option("--by", "tag", help="Break attempts, escalation, cost and savings down by this tag (a pipeline's `tags`).")
@click.option("--since", help="Only batches (or, with --by, results) this recent: 36h, 7d, 4w (default: all; --by: 30d).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per pipeline (or tag value).")
@config_option
@redis_option
def stats(names: tuple[str, ...], tag: str | None, since: str | None, as_json: bool, config_path: str | None,
          redis_url: str | None) -> None:
    """Per pipeline and tier: attempts, escalation rate, reject reasons, tokens, cost, savings.

    Example: cascade stats --pipeline ticket-triage --by team --since 30d
    """
    settings = load(config_path, redis_url)
    pipelines = [load_pipeline(settings, name) for name in names or sorted(settings.pipelines)]
    with ExitStack() as stack:
        if tag is not None:
            start = time.time() - parse_age(since or "30d")
            groups = by_tag(_ledger(settings, stack), tag, start, [p.name for p in pipelines])
            _print_tags(tag, groups, since or "30d", as_json)
            return
        store = _redis_store(settings) if since is None else None
        for pipe in pipelines:
            counters = None
            if store is not None:       # live: every batch of the pipeline, counted as it runs
                try:
                    counters, title = store.pipeline_counters(pipe.name), f"pipeline {pipe.name} (all batches)"
                except StoreError as e:
                    click.echo(f"cascade: Redis cannot be reached ({e}): the ledger's figures follow", err=True)
                    store = None
            if counters is None:
                start = time.time() - parse_age(since) if since else 0.0
                counters = summed_counters(_ledger(settings, stack), pipe.name, start)
                title = f"pipeline {pipe.name} (batches {'since ' + since if since else 'in the ledger'})"
            summary = summarize(counters, settings, pipe)
            click.echo(orjson.dumps(summary).decode() if as_json else format_summary(summary, title))


def _print_tags(tag: str, groups: list[dict], since: str, as_json: bool) -> None:
    if as_json:
        for group in groups:
            click.echo(orjson.dumps(group).decode())
        return
    click.echo(f"cost by {tag}, results of the last {since}:")
    click.echo(f"  {tag:<20} {'jobs':>8} {'attempts':>9} {'esc.rate':>8} {'cost $':>12} {'last tier $':>12} "
               f"{'savings':>8}")
    for g in groups:
        click.echo(f"  {g[tag][:20]:<20} {g['jobs']:>8} {g['attempts']:>9} {g['escalation_rate']:>8.1%} "
                   f"{g['cost_usd']:>12.6f} {g['last_tier_only_cost_usd']:>12.6f} {g['savings_share']:>8.1%}")
    if not groups:
        click.echo(f"  (no results with tags since {since}: name them in the pipeline's `tags`)")
