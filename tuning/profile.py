"""Each tier on every recorded row, as if every job had reached it: its score, verdicts, cost and
correctness (`profile_tier`), and the isotonic maps of its score to P(correct) (`fit_map`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade.recorded import RecordedRow, RecordedSet
from cascade.tuning.replay import run_pipeline
from cascade.verifiers.calibration import CalibrationMap, fit_isotonic
from cascade.worker.config.schema import Pipeline, Settings

#: verifiers whose raw score a calibration file maps to P(correct)
SCORED = ("logprob", "self_consistency")
FOLDS = 5                    # cross-fitting: thresholds are chosen on values of maps fitted on the other folds


@dataclass
class TierProfile:
    """One tier on every row, as if every job had reached it."""

    name: str
    scored: bool                                   # the chain has a score verifier to calibrate
    static_ok: list[bool] = field(default_factory=list)   # every verdict before the score passed
    raw: list[float | None] = field(default_factory=list)  # the raw score (None: it failed outright)
    rest_ok: list[bool] = field(default_factory=list)     # every verdict after the score passed
    cost_full: list[int] = field(default_factory=list)    # nano-USD when the score passes
    cost_fail: list[int] = field(default_factory=list)    # nano-USD when the score fails (later checks skipped)
    correct: list[bool] = field(default_factory=list)
    key: str = ""                                  # the calibration entry its verifier reads (`key`, else the tier)
    outputs: list[Any] = field(default_factory=list)      # the answer it returns (None: none)


def scored_index(specs: Sequence[dict[str, Any]]) -> int | None:
    """Position of the first score verifier in a chain's specs, or None."""
    return next((i for i, s in enumerate(specs) if s.get("name") in SCORED), None)


def profile_tier(settings: Settings, pipeline: Pipeline, recorded: RecordedSet, rows: list[RecordedRow],
                 tier: str) -> TierProfile:
    """Replay one tier alone with its score verifier accepting everything, and read each row's figures."""
    specs = list(pipeline.verifier_specs(tier))
    index = scored_index(specs)
    name = specs[index]["name"] if index is not None else None
    if index is not None:
        specs[index] = {k: v for k, v in specs[index].items() if k not in ("calibration", "key")} | {"threshold": 0.0}
    alone = pipeline.model_copy(update={"ladder": (tier,), "verifiers": {tier: tuple(specs)},
                                        "on_last_failure": "accept_flagged"})
    records, _ = run_pipeline(settings, alone, recorded, rows)
    key = (pipeline.verifier_specs(tier)[index].get("key") or tier) if index is not None else tier
    profile = TierProfile(tier, index is not None, key=key)
    model = settings.tiers[tier].model
    for row, record in zip(rows, records):
        served = recorded.find((row.system, row.user)) or row
        attempt = record["attempts"][-1]
        verdicts = attempt.get("verdicts", [])
        at = next((i for i, v in enumerate(verdicts) if v["verifier"] == name), None)
        spent = [round(v.get("cost_usd", 0.0) * 1e9) for v in verdicts]
        total = round(attempt["cost_usd"] * 1e9)
        call = total - sum(spent)
        if at is None:   # no score verifier, or the chain stopped before it
            profile.static_ok.append(index is None and all(v["passed"] for v in verdicts) and "error" not in attempt)
            profile.raw.append(None)
            profile.rest_ok.append(True)
            profile.cost_fail.append(total)
        else:
            profile.static_ok.append(all(v["passed"] for v in verdicts[:at]))
            profile.raw.append(verdicts[at].get("score") if verdicts[at]["passed"] else None)
            profile.rest_ok.append(all(v["passed"] for v in verdicts[at + 1:]))
            profile.cost_fail.append(call + sum(spent[: at + 1]))
        profile.cost_full.append(total)
        profile.outputs.append(record["output"])
        response = served.responses[model]
        profile.correct.append(bool(record["output"] is not None and response.answer_correct(record["output"],
                                                                                              served.gold)))
    return profile


def fit_map(p: TierProfile, rows: Iterable[int], centered: bool = False) -> CalibrationMap | None:
    """The isotonic map of a scored tier fitted on these rows (those its static checks passed), or None."""
    pairs = [(p.raw[i], p.correct[i]) for i in rows if p.static_ok[i] and p.raw[i] is not None]
    return fit_isotonic([r for r, _ in pairs], [c for _, c in pairs], centered) if p.scored and pairs else None


def cross_fitted(profiles: list[TierProfile], folds: int = FOLDS) -> list[list[float | None]]:
    """Each row's calibrated value from a map fitted on the other folds (rows i % folds), per tier.

    Choosing thresholds on the values of a map fitted on the same rows rewards the map's own noise:
    a threshold falls just above a lucky bucket. Out-of-fold values carry the noise a new row will.
    """
    n = len(profiles[0].raw)
    out: list[list[float | None]] = [[None] * n for _ in profiles]
    for fold in range(min(folds, n)):
        held = range(fold, n, folds)
        rest = [i for i in range(n) if i % folds != fold]
        for t, p in enumerate(profiles):
            fitted = fit_map(p, rest)
            for i in held:
                out[t][i] = fitted(p.raw[i]) if fitted is not None and p.raw[i] is not None else None
    return out
