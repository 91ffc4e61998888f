"""`cascade estimate FILE -p P`: a batch's cost and outcome projected before submitting, with no call."""

from __future__ import annotations

import click
import orjson

from cascade.cli.common import config_option, load, load_pipeline
from cascade.errors import CascadeError, InputError


@click.command("estimate")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--pipeline", "-p", required=True, help="Pipeline name (a file in pipelines/).")
@click.option("--output-tokens", type=click.IntRange(1), default=200, show_default=True,
              help="Assumed answer length of a free-text or JSON answer, for the expected cost.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as one JSON line on stdout.")
@config_option
def estimate_command(source: str, pipeline: str, output_tokens: int, as_json: bool, config_path: str | None) -> None:
    """Rows, expected and worst-case cost, projected escalation and accuracy, and the last tier alone.

    SOURCE is the jobs file you will submit, or a recorded file (rows with `messages` and `responses`,
    read as `cascade replay` reads them: its prompts fill the fields `system` and `user`).

    Example: cascade estimate tickets.jsonl -p ticket-triage
    """
    from cascade.models import Job
    from cascade.producer.reader import read_rows, to_job
    from cascade.recorded import is_recorded, load_recorded
    from cascade.tuning.estimate import estimate
    from cascade.tuning.replay import check_prompt_fields

    settings = load(config_path, "")
    pipe = load_pipeline(settings, pipeline)
    fmt = "csv" if source.lower().endswith(".csv") else "jsonl"
    skipped: list[str] = []
    recorded = is_recorded(source)

    def jobs():
        if recorded:
            for number, row in enumerate(load_recorded(source, on_bad_row=skipped.append).rows, start=1):
                yield Job(row.id, {"system": row.system, "user": row.user}, number)
            return
        with open(source, "rb") as stream:
            for row in read_rows(stream, fmt, settings.producer.max_row_bytes):
                try:
                    yield to_job(row, pipe.prompt.fields)
                except InputError as e:
                    skipped.append(f"{source}: {e}")
    try:
        if recorded:
            check_prompt_fields(pipe)
        report = estimate(settings, pipe, jobs(), output_tokens)
    except CascadeError as e:
        raise click.ClickException(str(e)) from None
    for message in skipped:
        click.echo(f"Warning: {message} (not counted)", err=True)
    if not report["rows"]:
        raise click.ClickException(f"{source}: no rows to estimate" + (f" ({len(skipped)} skipped)" if skipped
                                                                      else " (the input is empty)"))
    report["skipped_rows"] = len(skipped)
    if as_json:
        click.echo(orjson.dumps(report).decode())
        return
    def usd(value: float | None) -> str:
        return "-" if value is None else f"${value:.4f}"

    lines = [f"estimate of {source} on pipeline {pipeline} ({' -> '.join(report['ladder'])}), no calls made",
             f"  rows: {report['rows']}" + (f" ({len(skipped)} skipped)" if skipped else ""),
             (f"  expected cost: {usd(report['expected_cost_usd'])}; worst case: {usd(report['worst_case_cost_usd'])}"
              f"; every job on the first tier only: {usd(report['cheapest_cost_usd'])}"),
             f"  last tier alone: {usd(report['last_tier_alone_cost_usd'])}"]
    if report["projected_escalation"] is not None:
        lines.append("  projected escalation: " + ", ".join(f"{t} {v:.1%}" for t, v in
                                                            report["projected_escalation"].items() if v is not None))
        lines.append(f"  projected accuracy: {report['projected_accuracy']:.1%} (last tier alone "
                     f"{report['projected_last_tier_accuracy']:.1%}, on {report['calibrated_on_rows']} calibration rows)")
    else:
        lines.append("  no calibration figures: run `cascade calibrate` for the expected cost, escalation and accuracy")
    click.echo("\n".join(lines))
