"""`cascade alerts`: the alerts that fired and cleared, from the ledger, and which are active now."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import click
import orjson

from cascade.cli.batches import parse_age
from cascade.cli.common import Command, config_option, load
from cascade.ledger.database import LedgerError, open_ledger
from cascade.ops.slo import FIRED


@click.command(cls=Command)
@click.option("--since", default="7d", show_default=True, help="How far back: 90m, 36h, 7d, 4w.")
@click.option("--pipeline", "-p", help="Only alerts of this pipeline.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per alert, oldest first.")
@config_option
def alerts(since: str, pipeline: str | None, as_json: bool, config_path: str | None) -> None:
    """List alerts (escalation drift, cost creep, shadow agreement...) from the ledger, oldest first, with what
    to check; then the ones still active.

    Example: cascade alerts --since 30d --pipeline ticket-triage
    """
    settings = load(config_path, None)
    start = time.time() - parse_age(since)
    with ExitStack() as stack:
        ledger = open_ledger(settings)
        stack.callback(ledger.close)
        try:
            ledger.migrate()
            rows = ledger.alerts(start, pipeline)
            everything = ledger.alerts(0.0, pipeline)
        except LedgerError as e:
            raise click.ClickException(str(e)) from None
    if as_json:
        for row in rows:
            click.echo(orjson.dumps({str(k): v for k, v in row.items()}).decode())   # keys: str, not quoted_name
        return
    if not rows:
        click.echo(f"(no alerts since {since}{' for ' + pipeline if pipeline else ''})", err=True)
    else:
        click.echo(f"{'at (UTC)':<16}  {'state':<7}  {'kind':<16}  {'pipeline/tier':<28} {'value':>7} "
                   f"{'baseline':>8}  window")
    for row in rows:
        click.echo(f"{_when(row['at'])}  {row['state'].upper():<7}  {row['kind']:<16}  "
                   f"{_where(row):<28} {_share(row['value']):>7} {_share(row['baseline']):>8}  {row['window']}")
        click.echo(f"    {row['message']}")
        if row["check"]:
            click.echo(f"    check: {row['check']}")
    active = _active(everything)
    click.echo("active now: " + ("; ".join(f"{r['kind']} {_where(r)} since {_when(r['at'])}" for r in active)
                                 if active else "none"))


def _active(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts whose last row is `fired`, from every row oldest first."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        latest[(row["kind"], row["pipeline"], row["tier"])] = row
    return [row for row in latest.values() if row["state"] == FIRED]


def _where(row: dict[str, Any]) -> str:
    return f"{row['pipeline']}/{row['tier']}" if row["tier"] else row["pipeline"] or "-"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(at))


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
