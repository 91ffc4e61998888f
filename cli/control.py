"""Batch control from anywhere that reaches the Redis: `cascade cancel`, `cascade budget`, `cascade retry`."""

from __future__ import annotations

import click

from cascade.cli.common import USD, Command, config_option, load, redact, redis_option, state_left_redis
from cascade.worker.config import Settings


def _backend(settings: Settings):
    if settings.embedded:
        raise click.UsageError("this command needs a Redis URL (--redis-url or CASCADE_REDIS_URL): "
                               "an embedded batch lives only inside the process that ran it")
    from cascade.worker.backends import open_backend

    return open_backend(settings)


def _not_live(settings: Settings, batch: str) -> str:
    """Why a batch cannot be controlled: it is nowhere, or only in the ledger (its live state left Redis)."""
    from cascade.ledger.database import DEFAULT_FILE, LedgerError, open_ledger

    where = f"no batch '{batch}' in {redact(settings.redis.url)}"
    if not settings.ledger.url and not (settings.config_dir / DEFAULT_FILE).exists():
        return where        # no ledger was ever written here: reading it would create its file
    try:
        ledger = open_ledger(settings)
        try:
            row = ledger.batch(batch)
        finally:
            ledger.close()
    except LedgerError:
        return where
    if row is None:
        return where
    return f"{where}: {state_left_redis(batch, row, settings.redis.retention_days)}"


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
        raise click.ClickException(_not_live(settings, batch))
    if record.finished:
        click.echo(f"batch {batch} has already finished ({record.done} of {record.total} jobs done): nothing to "
                   "cancel", err=True)
        return
    left = record.total - record.done
    click.echo(f"batch {batch} cancelled: {left} unfinished jobs end cancelled as workers reach them "
               f"(run them later with `cascade retry {batch} --status cancelled`)", err=True)


@click.command(cls=Command)
@click.argument("batch")
@click.argument("usd", type=USD())
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
            raise click.ClickException(_not_live(settings, batch))
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
        if backend.store.batch(batch) is None:
            raise click.ClickException(_not_live(settings, batch))
        count = retry_jobs(backend, settings, batch, wanted)
    finally:
        backend.close()
    click.echo(f"batch {batch}: {count} jobs put back to run again ({', '.join(wanted)}); follow them with "
               f"`cascade status {batch}`", err=True)
