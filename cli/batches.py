"""Commands that read batches: `cascade status`, `cascade results`, `cascade batches`.

Live batches are read from Redis; results and finished batches from the ledger, as often as wanted.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import ExitStack

import click
import orjson

from cascade.cli.common import Command, config_option, load, load_pipeline, redact, redis_option, state_left_redis
from cascade.errors import CascadeError
from cascade.ledger.database import Ledger, LedgerError, open_ledger, redact_url
from cascade.models import Status
from cascade.producer.report import format_summary, summarize
from cascade.worker.config import Settings
from cascade.worker.runtime import called_tiers
from cascade.worker.store import BatchRecord, BatchStore, StoreError, SweepStore


def _redis_store(settings: Settings) -> BatchStore | None:
    """The batch store of a distributed setup, or None in embedded mode (batches there live in the ledger)."""
    if settings.embedded:
        return None
    from cascade.worker.backends import batch_store, redis_client

    return batch_store(settings, redis_client(settings))


def _ledger(settings: Settings, stack: ExitStack) -> Ledger:
    ledger = open_ledger(settings)
    stack.callback(ledger.close)
    try:
        ledger.migrate()
    except LedgerError as e:
        raise click.ClickException(str(e)) from None
    return ledger


def _live(store: BatchStore | None, batch: str) -> BatchRecord | None | bool:
    """The batch's live record in Redis; None when Redis has none (or in embedded mode); False when Redis
    cannot be reached (said on stderr: the ledger's record is what there is)."""
    if store is None:
        return None
    try:
        return store.batch(batch)
    except StoreError as e:
        click.echo(f"cascade: Redis cannot be reached ({e}): the ledger's record of {batch} follows", err=True)
        return False
    except CascadeError as e:
        raise click.BadParameter(str(e), param_hint="BATCH") from None


@click.command(cls=Command)
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@config_option
@redis_option
def status(batch: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """Show a batch's progress, per-tier figures, cost and savings (live from Redis, else from the ledger).

    Example: cascade status ticket-triage-20261122-081500-ab12
    """
    settings = load(config_path, redis_url)
    store = _redis_store(settings)
    with ExitStack() as stack:
        record = _live(store, batch)
        if record:
            pipe = load_pipeline(settings, record.pipeline)
            state = "finished" if record.finished and record.state == "submitted" else record.state
            summary = summarize(record.counters, settings, pipe) | {"batch": batch, "state": state}
            sweeps = SweepStore(store.redis, settings.redis.namespace)
            summary["stopped_tiers"] = sweeps.stopped_tiers(called_tiers(pipe))
            workers = sweeps.live_workers()
            summary["workers"] = {tier: sum(1 for w in workers if w.tier == tier) for tier in pipe.ladder}
            summary["provider_batches"] = provider_batches(settings, store, pipe.ladder, batch)
        else:
            row = _ledger(settings, stack).batch(batch)
            if row is None:
                where = f"{redact(settings.redis.url)} or " if store is not None else ""
                raise click.ClickException(f"no batch '{batch}' in {where}the ledger")
            pipe = load_pipeline(settings, row["pipeline"])
            summary = summarize(row["counters"], settings, pipe) | {"batch": batch, "state": row["state"]}
            if record is None and store is not None and row["state"] not in ("finished", "cancelled"):
                click.echo(f"cascade: batch {batch}: {state_left_redis(batch, row, settings.redis.retention_days)}",
                           err=True)
    if as_json:
        click.echo(orjson.dumps(summary).decode())
        return
    click.echo(format_summary(summary, f"batch {batch} ({summary['state']}, pipeline {pipe.name})"))
    if "workers" in summary:
        click.echo("  workers: " + ", ".join(f"{tier} {n}" for tier, n in summary["workers"].items()))
    for tier, reason in summary.get("stopped_tiers", {}).items():
        click.echo(f"  STOPPED tier {tier}: {reason} (its jobs wait; fix it and restart its workers)")
    for tier, open_batches in summary.get("provider_batches", {}).items():
        click.echo(format_provider_batches(tier, open_batches))


def provider_batches(settings: Settings, store: BatchStore, ladder: tuple[str, ...], batch: str) -> dict[str, list]:
    """The open provider batches of `batch`, per batch-mode tier of its ladder: state, counts, time waited."""
    from cascade.worker.store.provider_batches import ProviderBatchStore

    tracker, now = ProviderBatchStore(store.redis, settings.redis.namespace), time.time()
    out = {}
    for tier in ladder:
        if not settings.tiers[tier].batched:
            continue
        out[tier] = [{"id": r.provider_id or r.id, "state": r.state, "status": r.status, "requests": len(r.members),
                      **{k: r.counts.get(k, 0) for k in ("succeeded", "errored", "expired", "canceled")},
                      "waited_s": round((r.ended_at or now) - r.created_at, 1)}
                     for r in tracker.records(tier) if r.batch == batch]
    return out


def format_provider_batches(tier: str, open_batches: list[dict]) -> str:
    """One line per tier, then one per open provider batch."""
    if not open_batches:
        return f"  provider batches on {tier}: none open"
    lines = [f"  provider batches on {tier}: {len(open_batches)} open"]
    for b in open_batches:
        lines.append(f"    {b['id']}: {b['status'] or b['state']}, {b['requests']:,} requests, {b['succeeded']:,} "
                     f"succeeded, {b['errored'] + b['expired']:,} errored or expired lines, waited {b['waited_s']:.0f} s")
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("batch")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the records to this file (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in Status]),
              help="Only records with this status (repeatable).")
@click.option("--follow", "-f", is_flag=True, help="Keep writing records as they arrive until the batch is finished.")
@config_option
@redis_option
def results(batch: str, out: str | None, fmt: str, statuses: tuple[str, ...], follow: bool, config_path: str | None,
            redis_url: str | None) -> None:
    """Write a batch's result records from the ledger (JSONL or CSV); reading never removes them.

    Example: cascade results ticket-triage-20261122-081500-ab12 --follow --out results.jsonl
    """
    from cascade.ledger.writer import LedgerWriter
    from cascade.producer.collect import Collector, RecordWriter
    from cascade.producer.submit import StoreWaits

    settings = load(config_path, redis_url)
    store = _redis_store(settings)
    with ExitStack() as stack:
        ledger = _ledger(settings, stack)
        live = _live(store, batch) or None
        if live is None and ledger.batch(batch) is None:
            where = f"{redact(settings.redis.url)} or " if store is not None else ""
            raise click.ClickException(f"no batch '{batch}' in {where}the ledger ({redact_url(ledger.url)})")
        try:
            sink = stack.enter_context(open(out, "wb")) if out else sys.stdout.buffer
        except OSError as e:
            raise click.ClickException(f"cannot write {out}: {e.strerror or e}") from None
        # a batch the ledger holds whole needs no Redis, even with --follow (its keys may be gone, or Redis down)
        follow = follow and not (live is None and _ledger_finished(ledger, batch))
        # with Redis at hand this process is one more ledger writer, so --follow never waits on a missing service
        writer = LedgerWriter(settings, store.redis, ledger) if store is not None and follow else None
        collector = Collector(ledger, batch, RecordWriter(sink, fmt), writer, statuses)
        try:
            if follow:
                waits = StoreWaits(lambda message: click.echo(f"cascade results: {message}", err=True))
                collector.wait(lambda: _finished(store, ledger, batch, settings.redis.retention_days), through=waits)
            else:
                collector.collect()
        except BrokenPipeError:         # `cascade results B | head`: the reader went away; nothing is lost
            sys.stderr.close()
            return
        except LedgerError as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"results: {collector.out.written} records" + (f" written to {out}" if out else ""), err=True)


def _finished(store: BatchStore | None, ledger: Ledger, batch: str, retention_days: float) -> bool:
    """The batch is finished and the ledger holds all its records; a ClickException when Redis no longer has an
    unfinished batch (waiting would be waiting forever)."""
    record = store.batch(batch) if store is not None else None
    if record is not None:
        return record.finished and ledger.result_count(batch) >= record.done
    if _ledger_finished(ledger, batch):
        return True
    row = ledger.batch(batch)
    if store is not None and row is not None:
        raise click.ClickException(f"batch {batch}: {state_left_redis(batch, row, retention_days)}")
    return False


def _ledger_finished(ledger: Ledger, batch: str) -> bool:
    """The ledger's row says the batch is over, and the ledger holds every record it counts."""
    row = ledger.batch(batch)
    return row is not None and row["state"] in ("finished", "cancelled") and ledger.result_count(batch) >= row["done"]


@click.command(cls=Command)
@click.option("--pipeline", "-p", help="Only batches of this pipeline.")
@click.option("--since", default="7d", show_default=True, help="How far back: 90m, 36h, 7d, 4w.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per batch.")
@config_option
@redis_option
def batches(pipeline: str | None, since: str, as_json: bool, config_path: str | None, redis_url: str | None) -> None:
    """List batches from the ledger with state, progress, cost and savings, newest first.

    Example: cascade batches --pipeline ticket-triage --since 30d
    """
    settings = load(config_path, redis_url)
    start = time.time() - parse_age(since)
    with ExitStack() as stack:
        rows = _ledger(settings, stack).batches(pipeline, start)
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(_listed(row)).decode())
        return
    click.echo(f"{'batch':<44} {'pipeline':<18} {'state':<11} {'done':>13} {'cost $':>11} {'savings':>8}  submitted")
    for row in rows:
        item = _listed(row)
        click.echo(f"{item['batch']:<44} {item['pipeline']:<18} {item['state']:<11} "
                   f"{item['done']:>6}/{item['total']:<6} {item['cost_usd']:>11.6f} {item['savings_share']:>8.1%}  "
                   f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(item['submitted_at']))}")
    if not rows:
        click.echo(f"(no batches since {since})", err=True)


def _listed(row: dict) -> dict:
    cost, counterfactual = row["cost_nanos"], row["counterfactual_nanos"]
    return {"batch": row["id"], "pipeline": row["pipeline"], "state": row["state"], "done": row["done"],
            "total": row["total"], "cost_usd": cost / 1e9, "last_tier_only_cost_usd": counterfactual / 1e9,
            "savings_share": (counterfactual - cost) / counterfactual if counterfactual else 0.0,
            "submitted_at": row["submitted_at"], "finished_at": row["finished_at"], "source": row["source"]}


def parse_age(text: str) -> float:
    """Seconds in "90m", "36h", "7d", "4w" (or plain seconds); BadParameter otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise click.BadParameter(f"{text!r}: use a number of 0 or more and s, m, h, d or w (7d)",
                                 param_hint="--since") from None
    return value * units[unit]
