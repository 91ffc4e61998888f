"""The figures of `cascade report`, read from the ledger: one batch, or a pipeline's batches over a period.

One pass over the result records gives cost and latency per tier, the escalation rate in windows of jobs,
and the first failing verifier of every rejected attempt; the batch rows give budgets; the alerts and
shadow pairs tables give what happened around them. `ops/report_page.py` turns a `Report` into HTML.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from cascade.errors import CascadeError
from cascade.ledger.database import Ledger
from cascade.ops.baselines import Baseline, escalation_baselines
from cascade.worker.config.schema import Settings

WINDOWS = 40            # about this many points on the escalation chart
MIN_WINDOW = 50         # ...each of at least this many jobs (fewer is noise)
AFTER_BATCH_S = 3600    # a batch's report shows the alerts raised up to this long after it finished


class ReportError(CascadeError):
    """The report cannot be made: no such batch, or no batches for the pipeline in the period."""


@dataclass
class TierFigures:
    """One tier over the report: attempts, escalations, accepts, cost and every attempt's latency."""

    tier: str
    attempts: int = 0
    escalated: int = 0
    final_jobs: int = 0
    cost_nanos: int = 0
    latencies: array = field(default_factory=lambda: array("d"))

    @property
    def escalation_rate(self) -> float:
        """Escalated attempts / attempts (0 with no attempts)."""
        return self.escalated / self.attempts if self.attempts else 0.0


@dataclass
class Window:
    """A run of consecutive jobs of one batch: when it ended and, per tier, (escalated, attempts)."""

    batch: str
    ended_at: float
    jobs: int = 0
    tiers: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Report:
    """Everything the page shows."""

    title: str
    pipeline: str
    ladder: list[str]
    start: float
    end: float
    batches: list[dict[str, Any]]                  # batch rows, oldest first
    jobs: int = 0
    statuses: Counter = field(default_factory=Counter)
    cost_nanos: int = 0
    counterfactual_nanos: int = 0
    tiers: dict[str, TierFigures] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    rejects: Counter = field(default_factory=Counter)        # (tier, verifier, reason) -> attempts
    baselines: dict[str, Baseline] = field(default_factory=dict)
    band_points: float = 5.0
    shadow: list[dict[str, Any]] = field(default_factory=list)
    agreement_baseline: float = 0.0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    made_at: float = field(default_factory=time.time)

    @property
    def savings_nanos(self) -> int:
        """What the cascade saved against every job on the last tier alone."""
        return self.counterfactual_nanos - self.cost_nanos


def batch_report(settings: Settings, ledger: Ledger, batch_id: str) -> Report:
    """The report of one batch; ReportError when the ledger has no such batch."""
    row = ledger.batch(batch_id)
    if row is None:
        raise ReportError(f"no batch '{batch_id}' in the ledger")
    end = row["finished_at"] or time.time()
    report = Report(f"batch {batch_id}", row["pipeline"], _ladder(settings, ledger, row), row["submitted_at"], end,
                    [row])
    _fill(settings, ledger, report, shadow_batch=batch_id)
    return report


def pipeline_report(settings: Settings, ledger: Ledger, pipeline: str, since_s: float) -> Report:
    """The report of a pipeline's batches submitted in the last `since_s` seconds; ReportError when none."""
    now = time.time()
    rows = sorted(ledger.batches(pipeline, now - since_s, limit=100_000), key=lambda r: r["submitted_at"])
    if not rows:
        raise ReportError(f"pipeline '{pipeline}' has no batches in the ledger since "
                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(now - since_s))}")
    report = Report(f"pipeline {pipeline}", pipeline, _ladder(settings, ledger, rows[-1]), now - since_s, now, rows)
    _fill(settings, ledger, report)
    return report


def _ladder(settings: Settings, ledger: Ledger, row: dict[str, Any]) -> list[str]:
    """The pipeline's tiers, cheapest first: from the configuration, else as the batch's figures ordered them."""
    try:
        return list(settings.pipeline(row["pipeline"]).ladder)
    except CascadeError:
        return [f["tier"] for f in ledger.tier_figures(row["id"])]


def _fill(settings: Settings, ledger: Ledger, report: Report, shadow_batch: str | None = None) -> None:
    for tier in report.ladder:
        report.tiers[tier] = TierFigures(tier)
    total = sum(row["done"] for row in report.batches)
    size = max(MIN_WINDOW, math.ceil(total / WINDOWS))
    for row in report.batches:
        window = None
        for result in ledger.iter_results(row["id"]):
            if window is None or window.jobs >= size:
                window = Window(row["id"], 0.0)
                report.windows.append(window)
            _add(report, window, orjson.loads(result.record))
    if not report.ladder:           # neither configured nor finished: the tiers in the order the records met them
        report.ladder = list(report.tiers)
    report.band_points = settings.alerts.escalation_points
    report.baselines = escalation_baselines(settings, ledger, report.pipeline, report.ladder, report.start)
    pairs = ledger.shadow_pairs(report.pipeline, report.start)
    # a batch's shadow calls and the alerts its last records raise may come after it finished
    report.shadow = [p for p in pairs if p["batch_id"] == shadow_batch] if shadow_batch else pairs
    report.agreement_baseline = settings.alerts.agreement_baseline
    until = report.end + AFTER_BATCH_S if shadow_batch else report.end
    report.alerts = [a for a in ledger.alerts(report.start, report.pipeline) if a["at"] <= until]


def _add(report: Report, window: Window, record: dict[str, Any]) -> None:
    """One result record into the report's figures and its window."""
    report.jobs += 1
    window.jobs += 1
    window.ended_at = max(window.ended_at, record.get("finished_at") or 0.0)
    report.statuses[record["status"]] += 1
    report.cost_nanos += round(record.get("cost_usd", 0.0) * 1e9)
    report.counterfactual_nanos += round(record.get("counterfactual_usd", 0.0) * 1e9)
    attempts = record.get("attempts", ())
    tried = list(dict.fromkeys(a.get("tier") for a in attempts))   # a retry round's tier counted once
    final = record.get("tier")
    for a in attempts:
        figures = report.tiers.setdefault(a.get("tier") or "-", TierFigures(a.get("tier") or "-"))
        figures.cost_nanos += round(a.get("cost_usd", 0.0) * 1e9)
        if a.get("latency_ms") is not None:
            figures.latencies.append(float(a["latency_ms"]))
        reason = first_failure(a)
        if reason is not None:
            report.rejects[(a.get("tier") or "-", *reason)] += 1
    for position, tier in enumerate(tried):
        figures = report.tiers.setdefault(tier or "-", TierFigures(tier or "-"))
        escalated = position < len(tried) - 1
        figures.attempts += 1
        figures.escalated += escalated
        counts = window.tiers.setdefault(tier or "-", [0, 0])
        counts[0] += escalated
        counts[1] += 1
    if final in report.tiers:
        report.tiers[final].final_jobs += 1


def first_failure(attempt: dict[str, Any]) -> tuple[str, str] | None:
    """(verifier, reason) of the first failing verdict of an attempt, or ("provider", error kind); None if it passed.

    A reason is cut at its first colon: "refusal marker: i'm not sure" quotes the answer, "refusal marker" is
    the reason (as the batch counters keep it)."""
    for verdict in attempt.get("verdicts", ()):
        if not verdict.get("passed", True):
            return str(verdict.get("verifier", "?")), str(verdict.get("reason", "")).split(":", 1)[0].strip()
    error = attempt.get("error")
    if error:
        return "provider", str(error).split(":", 1)[0].strip()[:80]
    return None


