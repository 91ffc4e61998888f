"""The verifier drift audit: a fixed labelled set replayed through today's configuration, compared with the
figures `cascade calibrate` stored when the pipeline was fitted.

Verifiers drift when thresholds are edited, a calibration file is replaced or a check's code changes: the
cheap tier accepts more, the cost looks better and the answers get worse. Recorded answers do not change,
so on the rows the pipeline was calibrated on, any move is the configuration's doing. The audit drifts when
accuracy drops, or a tier's accept rate moves either way, by more than `[alerts] escalation_points`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cascade.errors import ConfigError

KIND = "audit_drift"


class AuditError(ConfigError):
    """The audit cannot run: the pipeline has no stored calibration figures to compare with."""


@dataclass(frozen=True)
class Figure:
    """One compared figure: accuracy, or a tier's accept rate (accepted / jobs reaching the tier)."""

    name: str                  # "accuracy" | "accept rate"
    tier: str                  # "" for accuracy
    calibrated: float | None
    today: float | None
    attempts: int              # jobs behind `today` (the rows, or the jobs reaching the tier)
    drifted: bool

    @property
    def change_points(self) -> float | None:
        """today - calibrated, in percentage points."""
        return None if self.calibrated is None or self.today is None else (self.today - self.calibrated) * 100


@dataclass(frozen=True)
class AuditResult:
    """An audit's figures and verdict."""

    pipeline: str
    recorded: str
    rows: int
    calibration: str           # the calibration file whose figures were compared with
    fitted_on: str             # the recorded file (and split) those figures come from
    calibrated_rows: int
    points: float              # the drift threshold, in percentage points
    figures: tuple[Figure, ...]

    @property
    def drifted(self) -> tuple[Figure, ...]:
        """The figures that moved too far."""
        return tuple(f for f in self.figures if f.drifted)

    @property
    def ok(self) -> bool:
        """No figure drifted."""
        return not self.drifted

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self) | {"ok": self.ok}


def run_audit(settings: Any, pipeline: str, recorded_path: str | Path, split: str | None = None) -> AuditResult:
    """Replay `recorded_path` (only rows of `split`, when given) through `pipeline` as configured today and compare
    accuracy and per-tier accept rates with the calibration's stored figures; ConfigError says what is missing."""
    from cascade.recorded import load_recorded
    from cascade.tuning.calibrate import stored_expectation
    from cascade.tuning.replay import replay

    pipe = settings.pipeline(pipeline)
    expected, path = stored_expectation(settings, pipe)
    if path is None:
        raise AuditError(f"pipeline {pipeline} names no calibration file: an audit compares with the figures "
                         "`cascade calibrate` stores in one")
    if expected is None:
        raise AuditError(f"{path}: no expected figures (written before `cascade calibrate` stored them, or by "
                         f"hand): run `cascade calibrate -p {pipeline}` again")
    data = load_recorded(recorded_path, split)
    if not data.rows:
        raise ConfigError(f"{recorded_path}: no rows{f' with split {split!r}' if split else ''}")
    result = replay(settings, pipe, data)
    points = settings.alerts.escalation_points
    limit = points / 100
    accuracy = result.report["accuracy"]
    figures = [Figure("accuracy", "", expected["accuracy"], accuracy, len(data.rows),
                      accuracy is not None and expected["accuracy"] - accuracy > limit)]
    for tier in result.report["tiers"]:
        stored = expected.get("tiers", {}).get(tier["tier"])
        calibrated = stored["accept_rate"] if stored and stored.get("reached") else None
        today = tier["accepted"] / tier["attempts"] if tier["attempts"] else None
        moved = calibrated is not None and today is not None and abs(today - calibrated) > limit
        figures.append(Figure("accept rate", tier["tier"], calibrated, today, tier["attempts"], moved))
    fitted_on = str(expected.get("fitted_on") or "?") + (f" (split {expected['split']})" if expected.get("split") else "")
    return AuditResult(pipeline, str(recorded_path), len(data.rows), str(path), fitted_on, int(expected.get("rows", 0)),
                       points, tuple(figures))


def alert_rows(result: AuditResult) -> list[dict[str, Any]]:
    """One `alerts` row (kind audit_drift) per drifted figure, as Ledger.record_alert takes them."""
    rows = []
    for f in result.drifted:
        what = "accuracy" if not f.tier else f"{f.tier} accept rate"
        rows.append({
            "kind": KIND, "state": "fired", "pipeline": result.pipeline, "tier": f.tier,
            "baseline": f.calibrated, "value": f.today,
            "window": f"audit of {result.rows} rows of {result.recorded}",
            "message": f"{result.pipeline}: {what} {f.today:.1%} against {f.calibrated:.1%} at calibration "
                       f"({f.change_points:+.1f} points, limit {result.points:g})",
            "check": (f"what changed in pipelines/{result.pipeline}.toml or {result.calibration} since it was "
                      f"calibrated (thresholds, verifiers); recalibrate on purpose or revert"),
            "details": result.as_dict(),
        })
    return rows


def format_audit(result: AuditResult) -> str:
    """The audit's table for humans."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    lines = [f"audit of pipeline {result.pipeline} on {result.recorded} ({result.rows} rows)",
             f"  against {result.calibration} (fitted on {result.fitted_on}, {result.calibrated_rows} rows)",
             f"  {'figure':<28} {'calibrated':>10} {'today':>8} {'change':>8} {'jobs':>6}"]
    for f in result.figures:
        name = f.name if not f.tier else f"{f.tier} {f.name}"
        change = "-" if f.change_points is None else f"{f.change_points:+.1f}"
        lines.append(f"  {name:<28} {pct(f.calibrated):>10} {pct(f.today):>8} {change:>8} {f.attempts:>6}"
                     + ("  DRIFT" if f.drifted else ""))
    if result.ok:
        lines.append(f"  no drift beyond {result.points:g} points ([alerts] escalation_points)")
    else:
        lines.append(f"  DRIFT: {len(result.drifted)} figure(s) moved more than {result.points:g} points "
                     "([alerts] escalation_points)")
    return "\n".join(lines)
