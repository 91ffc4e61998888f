"""The search: a cascade simulated on tier profiles, and the cheapest sub-ladder and thresholds that meet
a target under the guards of tuning/target.py (tuning/calibrate.py says why there are three)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cascade.tuning.profile import TierProfile
from cascade.tuning.target import (
    Target,
    answer_floor,
    below_floors,
    floors_hold,
    grouped_floors_hold,
    meets,
    meets_calibrated,
    tier_floors,
    tiers_hold,
    tiers_share_budget,
)

NEVER = 1.01                 # a threshold above every probability: this tier escalates everything
FLAG_THRESHOLD = 0.5         # the last tier's threshold only flags (accept_flagged): flag the likely-wrong
MAX_CANDIDATES = 40          # thresholds tried per tier (quantiles of the calibrated values)
MAX_COMBINATIONS = 20000     # above this, coordinate descent instead of trying every combination
FLOORS = ("grouped", "reached", "answer", "none", "tiers", "tiers_bound", "budget", "model")   # the first is the rule
GROUPED = ("grouped", "budget", "model")     # the rules whose answer guard lets groups through below a floor


#: per row, what a threshold decides at one tier: (score, cost at or above it, cost below it, accepted at or above)
Gate = tuple[float, int, int, bool]


def gate(p: TierProfile, cal: Sequence[float | None], i: int) -> Gate:
    """Row i at tier profile `p`: a row its static checks fail, or its score verifier gave no score, is below
    every threshold; a tier without a score verifier is above every one."""
    if not p.static_ok[i]:
        return -math.inf, p.cost_full[i], p.cost_full[i], False
    if not p.scored:
        return math.inf, p.cost_full[i], p.cost_full[i], p.rest_ok[i]
    if cal[i] is None:
        return -math.inf, p.cost_fail[i], p.cost_fail[i], False
    return cal[i], p.cost_full[i], p.cost_fail[i], p.rest_ok[i]


def tier_accepts(p: TierProfile, i: int, cal: list[float | None], threshold: float) -> tuple[bool, int]:
    """Whether tier profile `p` accepts row i at `threshold`, and what the attempt cost."""
    score, above, below, ok = gate(p, cal, i)
    return (ok, above) if score >= threshold else (False, below)


def run(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
        keep_last: bool) -> tuple[list[int], list[int], list[int]]:
    """Per row: correctness (0/1), cost, and the tier whose answer it ends with."""
    gates = [[gate(p, c, i) for i in range(len(p.correct))] for p, c in zip(profiles, cal)]
    return run_gates(gates, [p.correct for p in profiles], thresholds, keep_last)


def run_gates(gates: list[list[Gate]], right: list[list[bool]], thresholds: Sequence[float],
              keep_last: bool) -> tuple[list[int], list[int], list[int]]:
    """`run` on gates built once: the search simulates thousands of thresholds over the same rows."""
    n, last = len(gates[0]), len(gates) - 1
    correct, cost, where = [0] * n, [0] * n, [0] * n
    for i in range(n):
        for t, threshold in enumerate(thresholds):
            score, above, below, ok = gates[t][i]
            if score >= threshold:
                cost[i] += above
                accepted = ok
            else:
                cost[i] += below
                accepted = False
            if accepted or t == last:
                correct[i] = int(right[t][i] and (accepted or keep_last))
                where[i] = t
                break
    return correct, cost, where


def simulate(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
             keep_last: bool) -> tuple[list[int], int, list[int]]:
    """Per-row correctness (0/1), total cost and escalations per tier of the cascade at `thresholds`."""
    correct, cost, where = run(profiles, cal, thresholds, keep_last)
    escalated = [sum(1 for w in where if w > t) for t in range(len(profiles))]
    return correct, sum(cost), escalated


def answer_floors(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
                  reference: list[int], target: Target, keep_last: bool) -> dict[str, float]:
    """Each early tier's answer floor at these thresholds (what the report shows beside the thresholds)."""
    _, _, where = run(profiles, cal, thresholds, keep_last)
    floors = tier_floors(where, reference, target, len(profiles) - 1)
    return {p.name: floor for p, floor in zip(profiles, floors)}


def let_through(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
                reference: list[int], target: Target, keep_last: bool) -> dict[str, list[dict[str, float]]]:
    """Per early tier, the groups it answers below its answer floor at these thresholds: the calibrated value,
    how many of the group's rows reach the tier, and the last tier's accuracy on them (what the report shows)."""
    _, _, where = run(profiles, cal, thresholds, keep_last)
    out: dict[str, list[dict[str, float]]] = {}
    for (t, value), refs in sorted(below_floors(thresholds, where, reference, cal, target, len(profiles) - 1).items()):
        out.setdefault(profiles[t].name, []).append({"value": value, "rows": len(refs),
                                                     "last_tier_accuracy": sum(refs) / len(refs)})
    return out


def candidates(values: list[float | None], floor: float = 0.0) -> list[float]:
    """Thresholds worth trying: the distinct calibrated values at or above `floor` (thinned to quantiles), NEVER."""
    distinct = sorted({v for v in values if v is not None and v >= floor})
    if len(distinct) > MAX_CANDIDATES:
        step = (len(distinct) - 1) / (MAX_CANDIDATES - 1)
        distinct = sorted({distinct[round(k * step)] for k in range(MAX_CANDIDATES)})
    return distinct + [NEVER]


def choose_thresholds(profiles: list[TierProfile], cal: list[list[float | None]], target: Target,
                      keep_last: bool, floor: str = "grouped") -> tuple[list[float], bool]:
    """The cheapest thresholds meeting the target on these rows; (all NEVER, False) when none does.

    `floor`: "grouped" (the guards of tuning/calibrate.py), "reached" (the same without the groups let
    through below a floor, the rule before), "answer" (every tier's answers held to the floor of the whole
    batch, the rule before that) or "none" (the batch target alone: the best-in-hindsight search). "tiers"
    and "tiers_bound" hold each tier to the target on its own rows (point estimate, or at the target's
    confidence) and drop the answer floors; "budget" is the rule with the tier guard as one budget
    (`tiers_share_budget`), "model" the rule with the batch bound on calibrated values (`meets_calibrated`):
    rules benchmarks/tuning_study.py measured and rejected.
    """
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {', '.join(FLOORS)}, got {floor!r}")
    reference, _, _ = simulate(profiles[-1:], cal[-1:], [0.0], keep_last)
    free = [t for t, p in enumerate(profiles) if p.scored and (t < len(profiles) - 1 or not keep_last)]
    overall = answer_floor(reference, target)
    last = len(profiles) - 1
    # the first tier is reached by every row, so its floor is the batch's under every rule that has floors
    options = {t: candidates(cal[t], overall if floor == "answer" or (floor == "reached" and t == 0) else 0.0)
               for t in free}
    if floor in GROUPED and 0 in options:   # the grid above the floor as "reached" has it, and the values below
        below = [v for v in cal[0] if v is not None and v < overall]
        options[0] = sorted(set(candidates(cal[0], overall)) | set(candidates(below)))
    base = [NEVER if t in free else FLAG_THRESHOLD for t in range(len(profiles))]
    best: tuple[int, int, list[float]] | None = None
    gates = [[gate(p, c, i) for i in range(len(p.correct))] for p, c in zip(profiles, cal)]
    right = [p.correct for p in profiles]

    def consider(thresholds: list[float]) -> None:
        nonlocal best
        correct, costs, where = run_gates(gates, right, thresholds, keep_last)
        cost = sum(costs)
        if best is not None and (cost, -sum(correct)) >= best[:2]:
            return
        if floor in GROUPED or floor == "reached":
            answers = (floors_hold(thresholds, where, reference, target, last) if floor == "reached"
                       else grouped_floors_hold(thresholds, where, reference, cal, target, last))
            tiers = (tiers_share_budget(correct, where, reference, target, last) if floor == "budget"
                     else tiers_hold(correct, where, reference, target, last, lone=floor == "reached"))
            if not (answers and tiers):
                return
        if floor.startswith("tiers") and not tiers_hold(correct, where, reference, target, last,
                                                        bounded=floor == "tiers_bound"):
            return
        if (meets_calibrated(correct, reference, where, cal, target, last) if floor == "model"
                else meets(correct, reference, target)):
            best = (cost, -sum(correct), list(thresholds))

    if math.prod(len(o) for o in options.values()) <= MAX_COMBINATIONS:
        for combo in itertools.product(*options.values()):
            consider([dict(zip(free, combo)).get(t, base[t]) for t in range(len(profiles))])
    else:
        current = list(base)
        consider(current)
        for _ in range(5):
            before = list(current)
            for t in free:
                for value in options[t]:
                    consider(current[:t] + [value] + current[t + 1:])
                if best is not None:
                    current = list(best[2])
            if current == before:
                break
    return (best[2], True) if best is not None else (base, False)


def tier_rates(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float]
               ) -> dict[str, dict[str, float]]:
    """Per tier of the cascade at `thresholds`: the share of jobs that reach it, and its accept and escalation
    rates (of the jobs reaching it); what `cascade audit` later compares a replay with."""
    n = len(profiles[0].correct)
    reached, accepted = [0] * len(profiles), [0] * len(profiles)
    for i in range(n):
        for t, p in enumerate(profiles):
            reached[t] += 1
            ok, _ = tier_accepts(p, i, cal[t], thresholds[t])
            accepted[t] += ok
            if ok:
                break
    last = len(profiles) - 1
    return {p.name: {"reached": reached[t] / n, "accept_rate": accepted[t] / reached[t] if reached[t] else 0.0,
                     "escalation_rate": (reached[t] - accepted[t]) / reached[t] if reached[t] and t < last else 0.0}
            for t, p in enumerate(profiles)}


@dataclass(frozen=True)
class LadderChoice:
    """A sub-ladder (positions in the full ladder, the last always kept), its thresholds and training figures."""

    kept: tuple[int, ...]
    thresholds: tuple[float, ...]      # per kept tier
    feasible: bool
    cost: int
    correct: int


def sub_ladders(size: int) -> list[tuple[int, ...]]:
    """Every ladder that keeps the last of `size` tiers, from the last tier alone to all of them."""
    last = size - 1
    return [combo + (last,) for r in range(size) for combo in itertools.combinations(range(last), r)]


def choose_ladder(profiles: list[TierProfile], cal: list[list[float | None]], target: Target,
                  keep_last: bool, floor: str = "grouped",
                  searched: Callable[[tuple[int, ...]], None] | None = None) -> tuple[LadderChoice, list[LadderChoice]]:
    """The cheapest sub-ladder meeting the target (the last tier alone is one), and every sub-ladder tried.

    A tier that escalates nearly everything still costs its call on every job that reaches it, so a
    ladder without it can be cheaper at the same accuracy; trying every sub-ladder finds that. When
    none meets the target, the last tier alone is the answer (marked infeasible). `searched` is told each
    sub-ladder before its search (progress).
    """
    tried = []
    for kept in sub_ladders(len(profiles)):
        if searched is not None:
            searched(kept)
        sub, sub_cal = [profiles[t] for t in kept], [cal[t] for t in kept]
        thresholds, feasible = choose_thresholds(sub, sub_cal, target, keep_last, floor)
        correct, cost, _ = simulate(sub, sub_cal, thresholds, keep_last)
        tried.append(LadderChoice(kept, tuple(thresholds), feasible, cost, sum(correct)))
    feasible = [c for c in tried if c.feasible]
    if not feasible:
        return tried[0], tried
    return min(feasible, key=lambda c: (c.cost, -c.correct, -len(c.kept))), tried


def skip_reasons(names: Sequence[str], best: LadderChoice, tried: list[LadderChoice], total: int) -> dict[str, str]:
    """Why each tier outside the chosen ladder is skipped, in words and training figures."""
    out = {}
    for t, name in enumerate(names[:-1]):
        if t in best.kept:
            continue
        with_it = [c for c in tried if c.feasible and t in c.kept]
        if not with_it:
            out[name] = "no ladder with it meets the target on the training rows"
        else:
            cheapest = min(with_it, key=lambda c: c.cost)
            out[name] = (f"cheaper without it: the best ladder with it costs {cheapest.cost / total:.3f} of the last "
                         f"tier alone on the training rows, the chosen one {best.cost / total:.3f}")
    return out
