"""The `cascade` command group: every subcommand registered in one place."""

from __future__ import annotations

import click

from cascade.cli.alerts import alerts
from cascade.cli.audit import audit
from cascade.cli.batches import batches, results, status
from cascade.cli.common import Group
from cascade.cli.control import budget, cancel, retry
from cascade.cli.estimate import estimate_command
from cascade.cli.init import init
from cascade.cli.report import report
from cascade.cli.schedules import beat, schedules
from cascade.cli.services import ledger, sim, worker
from cascade.cli.stats import stats
from cascade.cli.submit import submit_command
from cascade.cli.tuning import calibrate_command, replay_command


@click.group(cls=Group)
@click.version_option(package_name="cascade-batch")
def cascade() -> None:
    """Cascade: batch LLM work through cheap-first model tiers with verified escalation.

    Example: cascade worker --tier cheap
    """


COMMANDS = (
    init,
    submit_command,
    status,
    results,
    batches,
    stats,
    cancel,
    retry,
    budget,
    worker,
    ledger,
    sim,
    replay_command,
    calibrate_command,
    report,
    audit,
    alerts,
    beat,
    schedules,
    estimate_command,
)
for command in COMMANDS:
    cascade.add_command(command)
