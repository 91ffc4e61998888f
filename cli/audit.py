"""`cascade audit`: the verifier drift audit of a pipeline on a fixed labelled set of recorded answers."""

from __future__ import annotations

from contextlib import ExitStack

import click
import orjson

from cascade.cli.batches import _ledger
from cascade.cli.common import Command, config_option, load

DRIFT_EXIT = 3      # the audit ran and found drift (1: it could not run, 2: usage)


@click.command(cls=Command)
@click.option("--pipeline", "-p", required=True, help="Pipeline name (a file in pipelines/).")
@click.option("--recorded", "-r", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The labelled evaluation set: recorded answers (JSONL in the ../shared/datasets format).")
@click.option("--split", help="Only rows whose `split` field is this (e.g. train).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line on stdout.")
@config_option
def audit(pipeline: str, recorded: str, split: str | None, as_json: bool, config_path: str | None) -> None:
    """Replay a labelled set through today's configuration and compare accuracy and per-tier accept rates with
    the figures `cascade calibrate` stored. Exit 3 and an `audit_drift` alert in the ledger when accuracy drops,
    or an accept rate moves, by more than [alerts] escalation_points.

    Example: cascade audit -p mmlu -r ../shared/datasets/mmlu-oai-train.jsonl --config examples/recorded/config/cascade.toml
    """
    from cascade.ops.audit import alert_rows, format_audit, run_audit

    settings = load(config_path, "")
    result = run_audit(settings, pipeline, recorded, split)
    rows = alert_rows(result)
    if rows:
        with ExitStack() as stack:
            ledger = _ledger(settings, stack)
            for row in rows:
                ledger.record_alert(row)
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        click.echo(format_audit(result))
    if rows:
        raise SystemExit(DRIFT_EXIT)
