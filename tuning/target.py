"""A quality target, and the guards that decide whether a cascade meets it on the training rows.

Each guard reads per-row figures of one simulated cascade: `correct` (its answer was right, 0/1),
`reference` (the last tier's answer to the same job was right) and `where` (which tier's answer the
job ends with). tuning/calibrate.py explains why there are three, and what they were measured against.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from cascade.verifiers.calibration import CONFIDENCE_DEFAULT


@dataclass(frozen=True)
class Target:
    """A quality target: `drop` below the last tier's accuracy, or an absolute `accuracy` / max `error`."""

    kind: str
    value: float
    confidence: float = CONFIDENCE_DEFAULT

    @classmethod
    def parse(cls, text: str, confidence: float = CONFIDENCE_DEFAULT) -> Target:
        """"drop=0.01" | "accuracy=0.85" | "error=0.15"; ValueError says what is wrong."""
        kind, sep, value = text.partition("=")
        if not sep or kind not in ("drop", "accuracy", "error"):
            raise ValueError(f"expected drop=X, accuracy=X or error=X, got {text!r}")
        number = float(value)
        if not 0 <= number <= 1:
            raise ValueError(f"{kind} must be between 0 and 1, got {number:g}")
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence:g}")
        return cls("accuracy", 1 - number, confidence) if kind == "error" else cls(kind, number, confidence)


def lower_bound(values: Sequence[float], confidence: float) -> float:
    """One-sided lower confidence bound of the mean (normal approximation, the population deviation)."""
    n = len(values)
    total = sum(values)
    if n < 2:
        return total / n
    # sums rather than statistics.pstdev, which is exact but slow: the search asks this thousands of times, of
    # 0/1 or -1/0/1 outcomes, whose integer sums make the variance exact here too
    variance = max(0.0, (n * sum(v * v for v in values) - total * total) / (n * n))
    return total / n - _z(confidence) * math.sqrt(variance / n)


@functools.lru_cache(maxsize=64)
def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(confidence)


def wilson_upper(k: int, m: int, confidence: float) -> float:
    """One-sided upper confidence bound of a proportion k/m (Wilson score); sound at k = 0, where a normal
    bound with the sample deviation claims certainty."""
    if m == 0:
        return 1.0
    z = _z(confidence)
    p = k / m
    centre = p + z * z / (2 * m)
    spread = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    return min(1.0, (centre + spread) / (1 + z * z / m))


def meets(correct: list[int], reference: list[int], target: Target) -> bool:
    """Whether the cascade's per-row correctness meets the target (paired against the reference for drop)."""
    if target.kind == "drop":
        return lower_bound([c - r for c, r in zip(correct, reference)], target.confidence) >= -target.value
    return lower_bound(correct, target.confidence) >= target.value


def tiers_hold(correct: list[int], where: list[int], reference: list[int], target: Target, last: int,
               bounded: bool = False, lone: bool = True) -> bool:
    """Whether every tier before the last meets the target (point estimate; `bounded`: at the target's
    confidence) on the rows whose answer it gives, paired against the reference for drop: no tier's gain on
    the training rows pays for another tier's wrong answers. `lone=False`: where only one tier before the last
    gives answers, there is no other tier to pay for, and the batch guard says all there is to say."""
    groups: dict[int, list[int]] = {}
    for c, r, w in zip(correct, reference, where):
        if w < last:
            groups.setdefault(w, []).append(c - r if target.kind == "drop" else c)
    if not lone and len(groups) < 2:
        return True
    limit = -target.value if target.kind == "drop" else target.value
    if bounded:
        return all(lower_bound(values, target.confidence) >= limit - 1e-9 for values in groups.values())
    return all(sum(values) >= limit * len(values) - 1e-9 for values in groups.values())


def tiers_share_budget(correct: list[int], where: list[int], reference: list[int], target: Target, last: int) -> bool:
    """The tier guard as one budget (measured and rejected: docs/tuning.md): the losses of the tiers before the last
    against the reference, each counted only where it loses, together within the drop."""
    if target.kind != "drop":
        return tiers_hold(correct, where, reference, target, last)
    losses: dict[int, int] = {}
    for c, r, w in zip(correct, reference, where):
        if w < last:
            losses[w] = losses.get(w, 0) + r - c
    return sum(max(0, loss) for loss in losses.values()) <= target.value * len(correct) + 1e-9


def meets_calibrated(correct: list[int], reference: list[int], where: list[int],
                     values: Sequence[Sequence[float | None]], target: Target, last: int) -> bool:
    """The batch bound on calibrated values (measured and rejected: docs/tuning.md): each answer taken as right with its
    tier's calibrated P(correct), paired row by row with the last tier's; outcomes where a value is missing."""
    if target.kind != "drop":
        return meets(correct, reference, target)
    paired = [0.0 if w == last else values[w][i] - values[last][i]
              if values[w][i] is not None and values[last][i] is not None else correct[i] - reference[i]
              for i, w in enumerate(where)]
    return lower_bound(paired, target.confidence) >= -target.value


def reached_floor(reached: list[int], overall: float, target: Target) -> float:
    """The answer floor of a later tier: what the target asks of the reference on the rows that reach the tier,
    its accuracy there taken at its upper confidence bound, and never above the floor of the whole batch."""
    if target.kind != "drop":
        return overall      # an absolute target asks the same of every answer
    upper = -lower_bound([-r for r in reached], target.confidence)
    return min(overall, upper - target.value)


def tier_floors(where: list[int], reference: list[int], target: Target, last: int) -> list[float]:
    """Each early tier's answer floor, given which tier each row ends with: the whole batch's for the first
    tier (every row reaches it), and `reached_floor` of the rows that reach each later one."""
    overall = answer_floor(reference, target)
    out = [overall]
    for t in range(1, last):
        reached = [r for r, w in zip(reference, where) if w >= t]
        out.append(reached_floor(reached, overall, target) if reached else overall)
    return out


def floors_hold(thresholds: Sequence[float], where: list[int], reference: list[int], target: Target,
                last: int) -> bool:
    """Whether each tier that gives answers has its threshold at or above its answer floor."""
    floors = tier_floors(where, reference, target, last)
    return all(thresholds[t] >= floors[t] for t in range(last) if t in where)


def below_floors(thresholds: Sequence[float], where: list[int], reference: list[int],
                 values: Sequence[Sequence[float | None]], target: Target, last: int
                 ) -> dict[tuple[int, float], list[int]]:
    """The accepted groups below their tier's answer floor: (tier, calibrated value) -> the reference's
    correctness on the group's rows that reach the tier (a drop target only; an absolute one has none)."""
    if target.kind != "drop":
        return {}
    floors = tier_floors(where, reference, target, last)
    below: dict[tuple[int, float], list[int]] = {}
    for t in range(last):
        if thresholds[t] >= floors[t]:
            continue        # it accepts nothing below its floor
        low, floor = thresholds[t], floors[t]
        for v, w, r in zip(values[t], where, reference):
            if w >= t and v is not None and low <= v < floor:
                below.setdefault((t, round(v, 4)), []).append(r)
    return below


def group_confidence(target: Target, groups: int) -> float:
    """Each group let through below its floor is a claim of its own; together they hold at the target's
    confidence (Bonferroni)."""
    return 1 - (1 - target.confidence) / max(1, groups)


def grouped_floors_hold(thresholds: Sequence[float], where: list[int], reference: list[int],
                        values: Sequence[Sequence[float | None]], target: Target, last: int) -> bool:
    """The answer guard: every accepted group of a tier's calibrated value is at or above its tier's answer
    floor, or at or above the last tier's accuracy on the group's own rows (those reaching the tier) at its
    upper bound, less the drop (Wilson: a few rows the last tier got wrong prove little). Where a tier is
    unsure the jobs are often hard for the last tier too, and the group's rows say how hard; where they do
    not, the floor of all the reached rows holds."""
    if target.kind != "drop":
        return floors_hold(thresholds, where, reference, target, last)
    below = below_floors(thresholds, where, reference, values, target, last)
    confidence = group_confidence(target, len(below))
    return all(v >= wilson_upper(sum(refs), len(refs), confidence) - target.value for (_, v), refs in below.items())


def answer_floor(reference: list[int], target: Target) -> float:
    """The calibrated P(correct) an accepted answer needs: the accuracy the target asks of the batch."""
    if target.kind == "drop":
        return sum(reference) / len(reference) - target.value
    return target.value
