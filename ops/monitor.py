"""The monitor: final result records and shadow pairs in, alerts out (escalation drift, cost creep, shadow agreement).

The ledger writer feeds it every committed batch of records. Per pipeline and tier it keeps the rolling
escalation rate of recent attempts; per pipeline the cascade's cost against the last tier alone over recent
jobs, and the agreement of recent shadow pairs. Baselines for escalation come from ops/baselines.py
([alerts] baselines, the calibration's stored figures, the ledger's recent batches), else from the first
`min_sample` attempts this monitor sees. Alerts that are active in the ledger stay active across a
restart, and a transition another writer already recorded is taken over rather than sent again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from cascade.ledger.database import LedgerError
from cascade.ops.alerts import Alert, Sink, deliver
from cascade.ops.baselines import Baseline, escalation_baselines
from cascade.ops.slo import FIRED, Detector, Transition, agreement_detector, cost_detector, escalation_detector
from cascade.worker.config.schema import Settings

log = logging.getLogger("cascade.alerts")

ESCALATION = "escalation_drift"
COST = "cost_creep"
AGREEMENT = "shadow_agreement"
FINISHED_BEFORE_NEXT_CALL = ("budget_exhausted", "cancelled")   # finalized before the next tier was called

Key = tuple[str, str, str]      # (kind, pipeline, tier)


def attempt_outcomes(record: dict[str, Any], ladder: Sequence[str] = ()) -> list[tuple[str, bool]]:
    """(tier, escalated) for each attempt of a final result record.

    Every attempt but the last escalated (that is why there is a next one). The last one did not, except
    when the job ended before its next tier was called (budget exhausted, cancelled, or failed with no
    error on a tier that is not the last: the next step died as poison or an internal error)."""
    attempts = record.get("attempts") or ()
    out = [(a["tier"], True) for a in attempts[:-1]]
    if attempts:
        last = attempts[-1]
        status = record.get("status")
        escalated = status in FINISHED_BEFORE_NEXT_CALL or (
            status == "failed" and "error" not in last and bool(ladder) and last["tier"] != ladder[-1])
        out.append((last["tier"], escalated))
    return out


class Monitor:
    """Watches result records and shadow pairs; returns (and hands to its sinks) the alerts that fire or clear."""

    def __init__(self, settings: Settings, sinks: Sequence[Sink] = (), ledger: Any = None):
        self.settings = settings
        self.config = settings.alerts
        self.sinks = tuple(sinks)
        self.ledger = ledger
        self._escalation: dict[tuple[str, str], tuple[Detector, str]] = {}
        self._cost: dict[str, Detector] = {}
        self._agreement: dict[str, tuple[Detector, str, str]] = {}     # pipeline -> (detector, shadow tier, source)
        self._baselines: dict[str, dict[str, Baseline]] = {}    # pipeline -> tier -> its baseline
        self._restored: dict[Key, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> list[Key]:
        """(kind, pipeline, tier) of every alert active now."""
        with self._lock:
            out = [(ESCALATION, p, t) for (p, t), (d, _) in self._escalation.items() if d.active]
            out += [(COST, p, self._last_tier(p)) for p, d in self._cost.items() if d.active]
            out += [(AGREEMENT, p, t) for p, (d, t, _) in self._agreement.items() if d.active]
            return out

    def observe_records(self, records: Iterable[dict[str, Any]]) -> list[Alert]:
        """Take final result records (as in the results stream); the alerts they fire or clear."""
        found: list[Alert] = []
        try:
            with self._lock:
                for record in records:
                    self._observe_record(record, found)
        finally:        # what fired before a failure (the ledger unreachable) is still sent
            deliver(found, self.sinks)
        return found

    def _observe_record(self, record: dict[str, Any], found: list[Alert]) -> None:
        pipeline = record.get("pipeline")
        if not pipeline:
            return
        ladder = self._ladder(pipeline)
        for tier, escalated in attempt_outcomes(record, ladder):
            if ladder and tier == ladder[-1]:
                continue            # the last tier has nowhere to escalate to
            detector, source = self._escalation_detector(pipeline, tier)
            change = detector.observe(int(escalated))
            if change is not None:
                found += self._keep(self._escalation_alert(pipeline, tier, change, source, record.get("batch", "")))
        cost = round(record.get("cost_usd", 0.0) * 1e9)
        alone = round(record.get("counterfactual_usd", 0.0) * 1e9)
        if cost or alone:
            change = self._cost_detector(pipeline).observe(cost, alone)
            if change is not None:
                found += self._keep(self._cost_alert(pipeline, change, record.get("batch", "")))

    def observe_shadow(self, pairs: Iterable[dict[str, Any]]) -> list[Alert]:
        """Take shadow pairs (rows shaped like the ledger's shadow_pairs); the alerts they fire or clear."""
        found: list[Alert] = []
        try:
            with self._lock:
                for pair in pairs:
                    pipeline = pair["pipeline"]
                    detector, shadow_tier, source = self._agreement_detector(pipeline, pair.get("shadow_tier") or "")
                    change = detector.observe(int(bool(pair["agree"])))
                    if change is not None:
                        found += self._keep(self._agreement_alert(pipeline, shadow_tier, change, source))
        finally:
            deliver(found, self.sinks)
        return found

    def agreement(self) -> dict[str, tuple[float | None, float | None]]:
        """Per pipeline: the rolling shadow agreement and its baseline (None until known), for the gauges."""
        with self._lock:
            return {p: (d.rolling.value, d.baseline) for p, (d, _, _) in self._agreement.items()}

    # -- detectors, created on first sight with their baseline and the state the ledger remembers ---------

    def _escalation_detector(self, pipeline: str, tier: str) -> tuple[Detector, str]:
        entry = self._escalation.get((pipeline, tier))
        if entry is None:
            restored = self._was_active((ESCALATION, pipeline, tier))
            baseline, source = self._escalation_baseline(pipeline, tier)
            if baseline is None and restored is not None and restored.get("baseline") is not None:
                baseline, source = restored["baseline"], "as when the alert fired"
            entry = (escalation_detector(self.config, baseline, active=restored is not None), source)
            self._escalation[(pipeline, tier)] = entry
        return entry

    def _escalation_baseline(self, pipeline: str, tier: str) -> tuple[float | None, str]:
        baselines = self._baselines.get(pipeline)
        if baselines is None:
            baselines = self._baselines[pipeline] = escalation_baselines(self.settings, self.ledger, pipeline)
        found = baselines.get(tier)
        if found is not None:
            return found.rate, found.source
        return None, (f"learned from the first {min(self.config.min_sample, self.config.window_attempts)} attempts: "
                      "none in [alerts] baselines, the calibration or the ledger")

    def _cost_detector(self, pipeline: str) -> Detector:
        detector = self._cost.get(pipeline)
        if detector is None:
            active = self._was_active((COST, pipeline, self._last_tier(pipeline))) is not None
            detector = self._cost[pipeline] = cost_detector(self.config, active=active)
        return detector

    def _agreement_detector(self, pipeline: str, shadow_tier: str) -> tuple[Detector, str, str]:
        entry = self._agreement.get(pipeline)
        if entry is None:
            restored = self._was_active((AGREEMENT, pipeline, shadow_tier))
            baseline: float | None = self.config.agreement_baseline or None
            source = "[alerts] agreement_baseline"
            if baseline is None:
                source = (f"learned from the first {min(self.config.min_shadow, self.config.shadow_window)} pairs: "
                          "no [alerts] agreement_baseline")
                if restored is not None and restored.get("baseline") is not None:
                    baseline, source = restored["baseline"], "as when the alert fired"
            detector = agreement_detector(self.config, baseline, active=restored is not None)
            entry = self._agreement[pipeline] = (detector, shadow_tier, source)
        return entry

    def _ladder(self, pipeline: str) -> tuple[str, ...]:
        known = self.settings.pipelines.get(pipeline)
        return known.ladder if known is not None else ()

    def _last_tier(self, pipeline: str) -> str:
        ladder = self._ladder(pipeline)
        return ladder[-1] if ladder else ""

    # -- what the ledger remembers ------------------------------------------------------------------------

    def _was_active(self, key: Key) -> dict[str, Any] | None:
        """The ledger's last row for this alert if it is a `fired` one (restored once, at first use)."""
        if self._restored is None:
            self._restored = self._latest_rows() if self.ledger is not None else {}
        row = self._restored.get(key)
        return row if row is not None and row["state"] == FIRED else None

    def _latest_rows(self, pipeline: str | None = None) -> dict[Key, dict[str, Any]]:
        latest: dict[Key, dict[str, Any]] = {}
        for row in self.ledger.alerts(0.0, pipeline):
            latest[(row["kind"], row["pipeline"], row["tier"])] = row
        return latest

    def _keep(self, alert: Alert) -> list[Alert]:
        """[alert], unless another writer (sharing the ledger) already recorded this very transition."""
        if self.ledger is not None:
            try:
                row = self._latest_rows(alert.pipeline).get((alert.kind, alert.pipeline, alert.tier))
            except LedgerError:
                return [alert]          # cannot tell: a duplicate is better than a lost alert
            if row is not None and row["state"] == alert.state:
                log.info("alert %s %s %s/%s: already recorded by another writer", alert.kind, alert.state,
                         alert.pipeline, alert.tier)
                return []
        return [alert]

    # -- the words of each alert --------------------------------------------------------------------------

    def _escalation_alert(self, pipeline: str, tier: str, change: Transition, source: str, batch: str) -> Alert:
        points = (change.value - change.baseline) * 100
        window = f"last {change.observed} attempts"
        if change.state == FIRED:
            message = (f"escalation rate of {pipeline} tier {tier} is {change.value:.1%}, {points:+.1f} points from "
                       f"its baseline {change.baseline:.1%} ({source}; alert beyond "
                       f"±{self.config.escalation_points:g} points)")
            check = (f"did the {tier} model or the input format change? look at the reject reasons of {tier} in "
                     f"`cascade stats --pipeline {pipeline}`" if points > 0 else
                     f"did the checks of {tier} grow lenient? compare shadow agreement (`cascade alerts --pipeline "
                     f"{pipeline}`) and re-fit with `cascade calibrate`")
        else:
            message = (f"escalation rate of {pipeline} tier {tier} is back to {change.value:.1%}, within "
                       f"{self.config.clear_points:g} points of its baseline {change.baseline:.1%}")
            check = "nothing to do; if the rate moved for a known reason, set it in [alerts] baselines"
        return Alert(ESCALATION, change.state, pipeline, tier, change.baseline, change.value, window, message, check,
                     {"baseline_source": source, "points": round(points, 2), "observed": change.observed,
                      "batch": batch})

    def _cost_alert(self, pipeline: str, change: Transition, batch: str) -> Alert:
        last = self._last_tier(pipeline) or "the last tier"
        window = f"last {change.observed} jobs"
        if change.state == FIRED:
            message = (f"the cascade of {pipeline} costs {change.value:.1%} of running every job on {last} alone "
                       f"(alert above {change.baseline:.0%})")
            check = (f"which tier escalates most (`cascade stats --pipeline {pipeline}`)? past ~55-60% escalation "
                     f"sending jobs straight to {last} is cheaper: re-fit thresholds or shorten the ladder")
        else:
            message = (f"the cascade of {pipeline} is back to {change.value:.1%} of {last} alone "
                       f"(clears below {self.config.cost_clear:.0%})")
            check = "nothing to do"
        return Alert(COST, change.state, pipeline, self._last_tier(pipeline), change.baseline, change.value, window,
                     message, check, {"observed": change.observed, "batch": batch})

    def _agreement_alert(self, pipeline: str, shadow_tier: str, change: Transition, source: str) -> Alert:
        points = (change.baseline - change.value) * 100
        window = f"last {change.observed} shadow pairs"
        if change.state == FIRED:
            message = (f"shadow agreement of {pipeline} (answers accepted below {shadow_tier or 'the last tier'}, "
                       f"re-run on it) is {change.value:.1%}, {points:.1f} points below its baseline "
                       f"{change.baseline:.1%} ({source}; alert beyond {self.config.agreement_points:g} points)")
            check = ("did a cheaper model start answering differently while still passing its checks? read the "
                     "disagreeing rows of the ledger's shadow_pairs and tighten or re-fit the verifiers")
        else:
            message = (f"shadow agreement of {pipeline} is back to {change.value:.1%}, within "
                       f"{self.config.clear_points:g} points of its baseline {change.baseline:.1%}")
            check = "nothing to do"
        return Alert(AGREEMENT, change.state, pipeline, shadow_tier, change.baseline, change.value, window, message,
                     check, {"baseline_source": source, "points": round(points, 2), "observed": change.observed})
