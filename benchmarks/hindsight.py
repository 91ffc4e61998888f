"""The reliable hindsight: the cheapest cascade searched on the test rows themselves that would meet the target
on 9 of 10 fresh test sets drawn like them.

The best in hindsight (`hindsight_cost_ratio`) spends the whole drop on the test rows' own luck: drawn
again, its thresholds meet the target about half the time. A fitter that must meet the target reliably
keeps a margin for the luck of the set it is measured on, even if it knew the rows' population exactly.
This search gives that fitter perfect knowledge (the test rows stand for their population) and asks for
the target on `RELIABILITY` of `RESAMPLES` resampled test sets of the same size: no fitter that sees only
training rows can be expected to be cheaper at that reliability. It is computed by the benchmark and never
fitted on.
"""

from __future__ import annotations

import random

from cascade.tuning.profile import TierProfile
from cascade.tuning.search import choose_ladder, run
from cascade.tuning.target import Target

RELIABILITY = 0.9     # the share of resampled test sets the cascade must meet the target on
RESAMPLES = 200
STEPS = 8             # the drop is tried in eighths, the largest share that meets the target found by bisection


def reliable_hindsight(profiles: list[TierProfile], values: list[list[float | None]], target: Target,
                       keep_last: bool, last_cost: int, seed: int = 7) -> dict[str, float] | None:
    """The search in hindsight at the largest share of the drop (in eighths, by bisection: how often a cascade meets
    the target falls as it spends more of the drop) whose cascade meets `target` on `RELIABILITY` of the resampled
    sets: its cost as a share of `last_cost` (nano-USD, the last tier alone on the same rows), that share of the
    drop, how often it meets the target, and how often the best in hindsight (the whole drop) does. None for an
    absolute target."""
    if target.kind != "drop" or not last_cost:
        return None
    n = len(profiles[0].correct)
    rng = random.Random(seed)
    draws = [[rng.randrange(n) for _ in range(n)] for _ in range(RESAMPLES)]
    reference, _, _ = run(profiles[-1:], values[-1:], [0.0], keep_last)

    def searched(step: int) -> tuple[float, float]:
        """How often the search at `step` eighths of the drop meets the target, and its cost ratio."""
        aim = Target("drop", target.value * step / STEPS, 0.5)
        best, _ = choose_ladder(profiles, values, aim, keep_last, floor="none")
        correct, costs, _ = run([profiles[t] for t in best.kept], [values[t] for t in best.kept], best.thresholds,
                                keep_last)
        gain = [c - r for c, r in zip(correct, reference)]
        met = sum(sum(gain[i] for i in draw) >= -target.value * n - 1e-9 for draw in draws) / RESAMPLES
        return met, sum(costs) / last_cost

    found = {STEPS: searched(STEPS)}
    low, high = 0, STEPS           # the largest step known to meet it (0 is taken to), the smallest known not to
    if found[STEPS][0] >= RELIABILITY:
        low = STEPS
    while high - low > 1:
        mid = (low + high) // 2
        found[mid] = searched(mid)
        low, high = (mid, high) if found[mid][0] >= RELIABILITY else (low, mid)
    met, cost = found[low] if low in found else searched(low)
    return {"cost_ratio": cost, "drop_share": low / STEPS, "met": met, "hindsight_met": found[STEPS][0]}
