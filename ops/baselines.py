"""Where a tier's expected escalation rate comes from: one answer for the alerts and the report.

In order: `[alerts] baselines["pipeline.tier"]`, else the figures `cascade calibrate` stored with the
pipeline's calibration, else the pipeline's last `baseline_batches` finished batches in the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cascade.errors import CascadeError
from cascade.ledger.database import Ledger
from cascade.worker.config.schema import Settings


@dataclass(frozen=True)
class Baseline:
    """A tier's expected escalation rate and where it comes from."""

    rate: float
    source: str


def escalation_baselines(settings: Settings, ledger: Ledger | None, pipeline: str,
                         ladder: Sequence[str] | None = None, before: float = math.inf) -> dict[str, Baseline]:
    """Each tier's baseline escalation rate: `[alerts] baselines`, else the figures `cascade calibrate` stored,
    else the pipeline's last `baseline_batches` finished batches submitted before `before`."""
    from cascade.tuning.calibrate import stored_expectation

    if ladder is None:
        known = settings.pipelines.get(pipeline)
        ladder = known.ladder if known is not None else ()
    out: dict[str, Baseline] = {}
    for tier in ladder[:-1]:
        rate = settings.alerts.baselines.get(f"{pipeline}.{tier}")
        if rate is not None:
            out[tier] = Baseline(rate, "[alerts] baselines")
    try:
        expected, path = stored_expectation(settings, settings.pipeline(pipeline))
    except CascadeError:
        expected, path = None, None
    for tier in ladder[:-1]:
        figures = (expected or {}).get("tiers", {}).get(tier)
        if tier not in out and figures:
            out[tier] = Baseline(figures["escalation_rate"], f"calibration {path}")
    if ledger is None:
        return out
    earlier = [row for row in ledger.batches(pipeline, limit=1000)
               if row["submitted_at"] < before and row["state"] == "finished"][: settings.alerts.baseline_batches]
    sums: dict[str, list[int]] = {}
    for row in earlier:
        for f in ledger.tier_figures(row["id"]):
            pair = sums.setdefault(f["tier"], [0, 0])
            pair[0] += f["escalated"]
            pair[1] += f["attempts"]
    for tier in ladder[:-1]:
        escalated, attempts = sums.get(tier, (0, 0))
        if tier not in out and attempts:
            where = "finished batches" if before == math.inf else "batches before the period"
            out[tier] = Baseline(escalated / attempts, f"the ledger's last {len(earlier)} {where}")
    return out
