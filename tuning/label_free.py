"""Calibration without labels: agreement with the last tier's answer stands in for being right.

Most traffic has no gold answers. The last tier is what a cascade is measured against anyway (the
regret-to-the-strongest-model view), so "right" becomes "gives the last tier's answer": on recorded
rows, every tier's answer is compared with the last tier's; in production, the shadow pairs the
ledger holds (an early-accepted answer re-run on the last tier) are exactly such comparisons.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cascade.errors import ConfigError
from cascade.verifiers.calibration import TierCalibration, fit_isotonic
from cascade.verifiers.parsing import normalize_label
from cascade.worker.config.schema import Pipeline

_RAW = re.compile(r"\(raw (-?[\d.]+(?:e-?\d+)?)\)")


def answer_key(pipeline: Pipeline) -> Callable[[str | None], str | None]:
    """How two answers of this pipeline are compared: its label, the answer a pattern with a group
    extracts (a self-consistency or regex check's), else the whitespace-normalised text."""
    if pipeline.output == "label" and pipeline.labels:
        return lambda text: None if text is None else normalize_label(text, pipeline.labels)
    patterns = [spec["pattern"] for specs in pipeline.verifiers.values() for spec in specs
                if isinstance(spec.get("pattern"), str) and re.compile(spec["pattern"]).groups >= 1]
    if patterns:
        pattern = re.compile(patterns[0])

        def extracted(text: str | None) -> str | None:
            match = pattern.search(text) if text is not None else None
            return match.group(1).strip() if match else None
        return extracted
    return lambda text: None if text is None else (" ".join(text.split()).casefold() or None)


def agreement(pipeline: Pipeline, outputs: Sequence[str | None], reference: Sequence[str | None]) -> list[bool]:
    """Per row: whether the answer is the reference's (no answer never agrees)."""
    key = answer_key(pipeline)
    out = []
    for mine, theirs in zip(outputs, reference):
        a, b = key(mine), key(theirs)
        out.append(a is not None and a == b)
    return out


def raw_score(attempt: dict[str, Any], verifier: str) -> float | None:
    """The raw score of a score verifier in a recorded attempt: "(raw X)" of its reason, else its score."""
    for verdict in attempt.get("verdicts", ()):
        if verdict.get("verifier") == verifier:
            found = _RAW.search(verdict.get("reason", ""))
            if found:
                return float(found.group(1))
            score = verdict.get("score")
            return float(score) if isinstance(score, int | float) else None
    return None


def fit_shadow_pairs(pairs: Iterable[dict[str, Any]], pipeline: Pipeline, scored: dict[str, tuple[str, str]],
                     agreement_target: float, confidence: float,
                     bound: Callable[[Sequence[float], float], float]) -> tuple[dict[str, TierCalibration],
                                                                                 dict[str, Any]]:
    """Maps of P(agree with the last tier) and thresholds per early tier, from the ledger's shadow pairs.

    `scored` is tier -> (score verifier name, calibration key). Shadow pairs only cover answers the
    current thresholds accepted, so the fit can only keep or raise a threshold: the lowest observed
    raw score whose accepted pairs (every pair at or above it) agree with the last tier at
    `agreement_target` with the confidence bound. A tier without enough agreement escalates all.
    """
    by_tier: dict[str, list[tuple[float, bool]]] = {}
    for pair in pairs:
        tier = pair.get("tier")
        if tier not in scored:
            continue
        attempt = pair.get("attempt") or {}
        raw = raw_score(attempt, scored[tier][0])
        if raw is not None:
            by_tier.setdefault(tier, []).append((raw, bool(pair.get("agree"))))
    if not by_tier:
        raise ConfigError(f"pipeline {pipeline.name}: no shadow pairs with a score of a calibrated tier in the "
                          "ledger (is [shadow] rate set, and have batches run?)")
    entries, report = {}, {"pairs": {}, "agreement": {}, "thresholds": {}}
    for tier, points in by_tier.items():
        fitted = fit_isotonic([r for r, _ in points], [a for _, a in points])
        ordered = sorted(points, reverse=True)
        threshold, kept = 1.01, 0
        agrees = []
        for i, (raw, agree) in enumerate(ordered):
            agrees.append(float(agree))
            last_of_score = i + 1 == len(ordered) or ordered[i + 1][0] != raw
            if last_of_score and bound(agrees, confidence) >= agreement_target:
                threshold, kept = fitted(raw), i + 1
        entries[scored[tier][1]] = TierCalibration(fitted, threshold, len(points))
        report["pairs"][tier] = len(points)
        report["agreement"][tier] = sum(a for _, a in points) / len(points)
        report["thresholds"][tier] = {"threshold": threshold, "accepted_share_of_pairs": kept / len(points)}
    return entries, report
