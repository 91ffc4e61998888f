"""`cascade report`: one self-contained HTML page of a batch or of a pipeline's recent batches, from the ledger."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import click
from click.core import ParameterSource

from cascade.cli.batches import _ledger, parse_age
from cascade.cli.common import Command, config_option, load


@click.command(cls=Command)
@click.argument("batch", required=False)
@click.option("--pipeline", "-p", help="Report a pipeline's batches over --since instead of one batch.")
@click.option("--since", default="30d", show_default=True, help="With --pipeline: how far back (36h, 7d, 4w).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@config_option
def report(batch: str | None, pipeline: str | None, since: str, out: str, config_path: str | None) -> None:
    """Write an HTML report: cost and savings per tier, escalation against its SLO band, reject reasons, shadow
    agreement, latency, budget use and alerts. One file; it opens with no network.

    Example: cascade report --pipeline ticket-triage --since 30d --out report.html
    """
    from cascade.ops.report import batch_report, pipeline_report
    from cascade.ops.report_page import render

    if (batch is None) == (pipeline is None):
        raise click.UsageError("give a BATCH or --pipeline P (one of them)")
    if batch is not None and click.get_current_context().get_parameter_source("since") is not ParameterSource.DEFAULT:
        raise click.UsageError("--since goes with --pipeline; a batch's report covers the whole batch")
    settings = load(config_path, None)
    with ExitStack() as stack:
        ledger = _ledger(settings, stack)
        made = (batch_report(settings, ledger, batch) if batch is not None
                else pipeline_report(settings, ledger, pipeline, parse_age(since)))
    try:
        Path(out).write_text(render(made), encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"report: {made.title}, {made.jobs} jobs in {len(made.batches)} batches -> {out}", err=True)
