"""Fit the pre-router: from the prompt alone, P(a tier accepts the job), and where skipping that tier pays.

After `calibrate` has chosen the ladder and thresholds, every training row says whether each kept tier
would accept it (its profile at the chosen threshold). Per non-last kept tier:

1. Features: the prompt's hashed word unigrams and bigrams (worker/routing.py), binary. A bucket seen
   in fewer than MIN_ROWS training rows cannot generalise; one in more than MAX_SHARE of them is the
   template (the bias carries it): both are dropped, so the written weights are all a worker needs.
2. Model: L2-regularised logistic regression, fitted by cyclic coordinate Newton steps over the sparse
   features (pure Python: a few hundred rows take well under a second).
3. Cross-fitting: each row's P(accepts) comes from a model fitted on the other folds. The L2 strength is
   the one of L2_GRID with the lowest held-back log-loss; a tier whose held-back log-loss does not beat
   the base rate's (the other folds' accept rate) has no signal in its prompts and is never skipped. The
   model written is the average of the fold models, whose predictions the cut was chosen on.
4. Cuts: per tier, skip when P(accepts) < cut. Among the cuts whose held-back routing still meets the
   quality target with the same confidence guard as the thresholds (`meets`), the one with the highest
   pessimistic saving wins, and the router is enabled only when that saving is above zero. Skipping a
   cheap tier saves its call on rows it would reject and costs the dearer tiers on rows it would accept,
   so a few wrong skips undo many right ones, and a training split of a few hundred rows may show none:
   the share of wrong skips is taken at its upper confidence bound (Wilson, Bonferroni over the cuts
   tried), each costing what a wrong skip costs on average.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade.tuning.profile import TierProfile
from cascade.tuning.search import simulate, tier_accepts
from cascade.tuning.target import Target, meets, wilson_upper
from cascade.worker.routing import Router, TierRouter, features, sigmoid

BUCKETS = 2 ** 18       # ~50k distinct n-grams in a few hundred prompts: 2^16 would merge many, 2^18 few
MIN_ROWS = 2            # a bucket in one training row only memorises that row
MAX_SHARE = 0.9         # a bucket in nearly every row is the prompt template: the bias says the same
L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)   # per-row log-loss is summed: strengths comparable to a few rows' evidence
SWEEPS = 25             # coordinate sweeps: the held-back log-loss stops moving well before
FOLDS = 5               # as calibrate's cross-fitting
MAX_CUTS = 16           # cut candidates per tier (quantiles of the held-back predictions), plus "never skip"
MAX_COMBINATIONS = 5000  # above this, one tier's cut at a time
DIGITS = 4              # weights are written rounded; |w| below 5e-5 is dropped


@dataclass(frozen=True)
class Logistic:
    """A fitted tier model: bias and sparse bucket weights."""

    bias: float
    weights: dict[int, float]

    def probability(self, buckets: Sequence[int]) -> float:
        """P(positive) for a row's buckets."""
        return sigmoid(self.bias + sum(self.weights.get(b, 0.0) for b in buckets))


def vocabulary(rows: Sequence[Sequence[int]]) -> set[int]:
    """The buckets worth a weight: in at least MIN_ROWS rows and at most MAX_SHARE of them."""
    seen: dict[int, int] = {}
    for row in rows:
        for b in row:
            seen[b] = seen.get(b, 0) + 1
    most = MAX_SHARE * len(rows)
    return {b for b, count in seen.items() if MIN_ROWS <= count <= most}


def fit_logistic(rows: Sequence[Sequence[int]], labels: Sequence[int], l2: float, sweeps: int = SWEEPS) -> Logistic:
    """L2-regularised logistic regression on binary sparse rows (cyclic coordinate Newton; the bias unpenalised)."""
    n = len(rows)
    rate = (sum(labels) + 0.5) / (n + 1)
    bias = math.log(rate / (1 - rate))
    keep = vocabulary(rows)
    columns: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        for b in row:
            if b in keep:
                columns.setdefault(b, []).append(i)
    weights = dict.fromkeys(columns, 0.0)
    margin = [bias] * n
    for _ in range(sweeps):
        p = [sigmoid(m) for m in margin]
        gradient = sum(pi - y for pi, y in zip(p, labels))
        curvature = sum(pi * (1 - pi) for pi in p) + 1e-6
        step = max(-2.0, min(2.0, -gradient / curvature))
        bias += step
        margin = [m + step for m in margin]
        for b, column in columns.items():
            g = h = 0.0
            for i in column:
                pi = sigmoid(margin[i])
                g += pi - labels[i]
                h += pi * (1 - pi)
            w = weights[b]
            step = max(-2.0, min(2.0, -(g + l2 * w) / (h + l2)))
            if step:
                weights[b] = w + step
                for i in column:
                    margin[i] += step
    return Logistic(bias, weights)


def log_loss(p: Sequence[float], labels: Sequence[int]) -> float:
    """Mean negative log-likelihood of the labels under the probabilities."""
    eps = 1e-6
    return -sum(math.log(max(eps, q if y else 1 - q)) for q, y in zip(p, labels)) / len(labels)


def held_back(rows: Sequence[Sequence[int]], labels: Sequence[int], l2: float,
              folds: int = FOLDS) -> tuple[list[float], Logistic]:
    """Each row's P(positive) from a model fitted on the other folds (rows i % folds), and the fold models'
    average: the model that is written. The cut is chosen on predictions of models fitted on k-1 folds; a
    refit on every row would spread its predictions wider than theirs and skip more rows than the cut meant."""
    n = len(rows)
    out = [0.0] * n
    models = []
    for fold in range(min(folds, n)):
        rest = [i for i in range(n) if i % folds != fold]
        model = fit_logistic([rows[i] for i in rest], [labels[i] for i in rest], l2)
        models.append(model)
        for i in range(fold, n, folds):
            out[i] = model.probability(rows[i])
    weights: dict[int, float] = {}
    for model in models:
        for b, w in model.weights.items():
            weights[b] = weights.get(b, 0.0) + w / len(models)
    return out, Logistic(sum(m.bias for m in models) / len(models), weights)


def base_rate_held_back(labels: Sequence[int], folds: int = FOLDS) -> list[float]:
    """Each row's P(positive) as the other folds' rate: the no-signal predictor to beat."""
    n = len(labels)
    out = [0.0] * n
    for fold in range(min(folds, n)):
        rest = [labels[i] for i in range(n) if i % folds != fold]
        rate = (sum(rest) + 0.5) / (len(rest) + 1)
        for i in range(fold, n, folds):
            out[i] = rate
    return out


@dataclass
class TierFit:
    """One tier's cross-fitted predictions and what they are worth."""

    name: str
    accept_rate: float
    l2: float | None = None
    log_loss: float | None = None
    base_log_loss: float | None = None
    predictions: list[float] = field(default_factory=list)
    model: Logistic | None = None
    signal: bool = False
    why: str = ""


def fit_tier(name: str, rows: Sequence[Sequence[int]], accepts: Sequence[int]) -> TierFit:
    """Cross-fit a tier's model at every strength of L2_GRID and keep the best held-back log-loss."""
    fit = TierFit(name, sum(accepts) / len(accepts))
    if len(set(accepts)) < 2:
        fit.why = "it accepts every training row" if accepts[0] else "it accepts no training row"
        return fit
    fit.base_log_loss = log_loss(base_rate_held_back(accepts), accepts)
    for l2 in L2_GRID:
        p, model = held_back(rows, accepts, l2)
        loss = log_loss(p, accepts)
        if fit.log_loss is None or loss < fit.log_loss:
            fit.l2, fit.log_loss, fit.predictions, fit.model = l2, loss, p, model
    fit.signal = fit.log_loss < fit.base_log_loss
    if not fit.signal:
        fit.why = (f"its prompts carry no signal: held-back log-loss {fit.log_loss:.4f}, the base rate's "
                   f"{fit.base_log_loss:.4f}")
    return fit


def simulate_routed(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
                    keep_last: bool, skip: list[list[bool]]) -> tuple[list[int], list[int], list[int]]:
    """Per row: correctness (0/1), cost and the count of skipped tiers, of the cascade with tier t skipped
    where skip[t][i] (a skip costs nothing; the last tier is never skipped)."""
    n = len(profiles[0].correct)
    last = len(profiles) - 1
    correct, cost, skipped = [0] * n, [0] * n, [0] * n
    for i in range(n):
        for t, p in enumerate(profiles):
            if t < last and skip[t][i]:
                skipped[i] += 1
                continue
            accepted, spent = tier_accepts(p, i, cal[t], thresholds[t])
            cost[i] += spent
            if accepted or t == last:
                correct[i] = int(p.correct[i] and (accepted or keep_last))
                break
    return correct, cost, skipped


def cut_candidates(predictions: Sequence[float]) -> list[float]:
    """0 (never skip) and quantiles of the held-back predictions (skip the rows strictly below each)."""
    ordered = sorted(predictions)
    n = len(ordered)
    cuts = {ordered[min(n - 1, round(k * n / MAX_CUTS))] for k in range(1, MAX_CUTS)}
    return [0.0] + sorted(c for c in cuts if c > ordered[0])


def pessimistic_saving(base: Sequence[int], routed: Sequence[int], skipped: Sequence[int], worst: Sequence[int],
                       confidence: float) -> float:
    """The saving of a routing on these rows, pessimistically: the share of skipped rows where the skip costs
    more (the tier would have accepted) taken at its upper bound, each such row costing what a wrong skip
    costs on average (`worst`: the same tiers skipped on every row).

    A cheap tier's wrong skip costs the dearer tiers' call, a right one saves only the cheap call, and the few
    wrong skips that decide are exactly what a small training split may not show at all.
    """
    rows = [i for i, count in enumerate(skipped) if count]
    if not rows:
        return 0.0
    savings = [base[i] - routed[i] for i in rows]
    gains = [s for s in savings if s >= 0]
    losses = [w - base[i] for i, w in enumerate(worst) if w > base[i]]
    harmful = wilson_upper(len(savings) - len(gains), len(savings), confidence)
    gain = statistics.fmean(gains) if gains else 0.0
    loss = statistics.fmean(losses) if losses else 0.0
    return len(rows) * ((1 - harmful) * gain - harmful * loss)


@dataclass
class RouterFit:
    """What fitting the router found: enabled or why not, the cuts, and the held-back training figures."""

    enabled: bool
    reason: str
    tiers: dict[str, TierFit]
    cuts: dict[str, float] = field(default_factory=dict)
    router: Router | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The calibrate report's "router" entry."""
        return {"enabled": self.enabled, "reason": self.reason,
                "tiers": {name: {"cut": self.cuts.get(name, 0.0), "accept_rate": round(f.accept_rate, 4),
                                 "l2": f.l2, "held_back_log_loss": _r(f.log_loss),
                                 "base_rate_log_loss": _r(f.base_log_loss), **({"why": f.why} if f.why else {})}
                          for name, f in self.tiers.items()},
                **self.figures}

    def block(self) -> dict[str, Any]:
        """What the calibration file records: the router when enabled, else why there is none."""
        if self.router is not None:
            return self.router.to_dict() | {"held_back": self.figures}
        return {"enabled": False, "reason": self.reason}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def fit_router(texts: Sequence[str], profiles: list[TierProfile], cal: list[list[float | None]],
               thresholds: Sequence[float], target: Target, keep_last: bool, last_cost: int) -> RouterFit:
    """Fit the router of a kept ladder at its chosen thresholds on the training rows (see the module docstring)."""
    names = [p.name for p in profiles]
    if len(profiles) < 2:
        return RouterFit(False, "the ladder is the last tier alone: there is no tier to skip", {})
    rows = [features(text, BUCKETS) for text in texts]
    n = len(rows)
    fits = {}
    for t, p in enumerate(profiles[:-1]):
        accepts = [int(tier_accepts(p, i, cal[t], thresholds[t])[0]) for i in range(n)]
        fits[p.name] = fit_tier(p.name, rows, accepts)
    useful = [t for t, name in enumerate(names[:-1]) if fits[name].signal]
    if not useful:
        return RouterFit(False, "no tier's prompts carry a signal: " + "; ".join(
            f"{name}: {f.why}" for name, f in fits.items()), fits)
    reference, _, _ = simulate(profiles[-1:], cal[-1:], [0.0], keep_last)    # what `calibrate` compares with
    never = [[False] * n for _ in profiles]
    base_correct, base_cost, _ = simulate_routed(profiles, cal, thresholds, keep_last, never)
    options = {t: cut_candidates(fits[names[t]].predictions) for t in useful}

    def evaluate(cuts: dict[int, float]) -> tuple[float, list[int], list[int]] | None:
        skip = [[fits[names[t]].predictions[i] < cuts[t] for i in range(n)] if t in cuts else never[t]
                for t in range(len(profiles))]
        correct, cost, skipped = simulate_routed(profiles, cal, thresholds, keep_last, skip)
        if not meets(correct, reference, target):
            return None
        every = [[t in cuts] * n for t in range(len(profiles))]     # what a wrong skip costs: any row, skipped
        _, worst, _ = simulate_routed(profiles, cal, thresholds, keep_last, every)
        return pessimistic_saving(base_cost, cost, skipped, worst, confidence), correct, cost

    best: tuple[float, dict[int, float], Any] | None = None
    if math.prod(len(o) for o in options.values()) <= MAX_COMBINATIONS:
        trials = [dict(zip(options, combo)) for combo in itertools.product(*options.values())]
    else:       # one tier at a time, the others never skipping
        trials = [{t: c} for t in options for c in options[t]]
    # the best of many cuts looks better than it is: the bound holds for all of them at once (Bonferroni)
    confidence = 1 - (1 - target.confidence) / max(1, len(trials) - 1)
    for cuts in trials:
        chosen = {t: c for t, c in cuts.items() if c > 0}
        result = evaluate(chosen) if chosen else None
        if result is not None and (best is None or result[0] > best[0]):
            best = (result[0], chosen, result)
    total = last_cost or 1
    figures = {"held_back_cost_ratio_without": round(sum(base_cost) / total, 4),
               "held_back_accuracy_without": round(sum(base_correct) / n, 4)}
    if best is None or best[0] <= 0:
        bound = f"{best[0] / total:.4f}" if best is not None else "-"
        return RouterFit(False, "skipping does not lower the training cost at the target with the confidence "
                                f"guard on held-back predictions (pessimistic saving, as a share of the last "
                                f"tier's cost: {bound})", fits, figures=figures)
    _, cuts, (_, correct, cost) = best
    figures |= {"held_back_cost_ratio_with": round(sum(cost) / total, 4),
                "held_back_accuracy_with": round(sum(correct) / n, 4),
                "held_back_pessimistic_saving": round(best[0] / total, 4),
                "held_back_skipped": {names[t]: round(sum(1 for i in range(n) if fits[names[t]].predictions[i] < c)
                                                      / n, 4) for t, c in cuts.items()}}
    models = {}
    for t, c in cuts.items():
        model = fits[names[t]].model
        weights = {b: round(w, DIGITS) for b, w in model.weights.items() if round(w, DIGITS)}
        models[names[t]] = TierRouter(round(c, 6), round(model.bias, DIGITS), weights)
    router = Router(tuple(names), BUCKETS, models)
    chosen = {names[t]: round(c, 6) for t, c in cuts.items()}
    return RouterFit(True, "skipping lowers the training cost at the target on held-back predictions", fits,
                     chosen, router, figures)
