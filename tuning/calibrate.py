"""Fit calibration maps and per-tier thresholds on recorded responses (the training split).

1. Profile: replay the pipeline one tier at a time with its score verifier (logprob or
   self_consistency) made permissive, so every row shows each tier's raw score, static verdicts,
   cost and correctness.
2. Fit: isotonic regression of correctness on the raw score, per tier.
3. Choose: the sub-ladder and per-tier thresholds on calibrated P(correct) that minimise the training
   cost under three guards:
   - the batch: the quality target holds with the target's confidence (a one-sided normal bound on
     the paired accuracy, 90% by default);
   - each tier: every tier before the last meets the target on the rows whose answer it gives, so no
     tier's surplus on the training rows pays for another tier's wrong answers;
   - each answer: none is accepted whose calibrated P(correct) is below the accuracy the target asks
     of the last tier on the rows that reach its tier (the answer floor). For the first tier those are
     all rows; for a later tier, the last tier's accuracy on them is taken at its upper bound (at the
     same confidence), and the floor is never above the first tier's.

The per-tier and per-answer guards are what keep a fit honest on a small training split. Without
them a middle tier that happens to beat the last tier on the training rows "pays" for a cheap tier's
wrong answers, and that credit does not carry over to new rows: on mmlu-oai (285 training rows,
where qwen2.5-72b beats gpt-4o by 9 points but loses by 2 on the test rows) the batch bound alone
accepted 76% of gpt-4o-mini's answers and lost 4.0 points on the test split (measured when the
first floor was added, commit c16f5b9). That floor held every tier to the accuracy of the whole
batch. But the rows a middle tier sees are the hard ones, where the last tier is weaker too, so it
let a strong middle tier accept only its surest answers. `python -m benchmarks.tuning_study`
measures the rules side by side (README, "Tuning on your own recorded traffic").
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from cascade.errors import ConfigError
from cascade.recorded import RecordedRow, RecordedSet
from cascade.tuning.label_free import agreement
from cascade.tuning.replay import run_pipeline, tier_cost, tier_samples
from cascade.tuning.target import Target, answer_floor, floors_hold, meets, tier_floors, tiers_hold
from cascade.verifiers.calibration import (
    CalibrationMap,
    TierCalibration,
    dump_calibration,
    fit_isotonic,
    load_calibration,
)
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.pricing import to_usd
from cascade.worker.prompts import render
from cascade.worker.routing import prompt_text

if TYPE_CHECKING:
    from cascade.tuning.router import RouterFit

#: verifiers whose raw score a calibration file maps to P(correct)
SCORED = ("logprob", "self_consistency")
NEVER = 1.01                 # a threshold above every probability: this tier escalates everything
FLAG_THRESHOLD = 0.5         # the last tier's threshold only flags (accept_flagged): flag the likely-wrong
MAX_CANDIDATES = 40          # thresholds tried per tier (quantiles of the calibrated values)
MAX_COMBINATIONS = 20000     # above this, coordinate descent instead of trying every combination
FOLDS = 5                    # cross-fitting: thresholds are chosen on values of maps fitted on the other folds
FLOORS = ("reached", "answer", "none")


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


def _accepts(p: TierProfile, i: int, cal: list[float | None], threshold: float) -> tuple[bool, int]:
    """Whether tier profile `p` accepts row i at `threshold`, and what the attempt cost."""
    if not p.static_ok[i]:
        return False, p.cost_full[i]
    if p.scored:
        if cal[i] is None or cal[i] < threshold:
            return False, p.cost_fail[i]
    return p.rest_ok[i], p.cost_full[i]


def run(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
        keep_last: bool) -> tuple[list[int], int, list[int]]:
    """Per-row correctness (0/1), total cost, and per row the tier whose answer it ends with."""
    n = len(profiles[0].correct)
    correct, cost, where = [0] * n, 0, [0] * n
    for i in range(n):
        for t, p in enumerate(profiles):
            accepted, spent = _accepts(p, i, cal[t], thresholds[t])
            cost += spent
            if accepted or t == len(profiles) - 1:
                correct[i] = int(p.correct[i] and (accepted or keep_last))
                where[i] = t
                break
    return correct, cost, where


def simulate(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
             keep_last: bool) -> tuple[list[int], int, list[int]]:
    """Per-row correctness (0/1), total cost and escalations per tier of the cascade at `thresholds`."""
    correct, cost, where = run(profiles, cal, thresholds, keep_last)
    escalated = [sum(1 for w in where if w > t) for t in range(len(profiles))]
    return correct, cost, escalated


def answer_floors(profiles: list[TierProfile], cal: list[list[float | None]], thresholds: Sequence[float],
                  reference: list[int], target: Target, keep_last: bool) -> dict[str, float]:
    """Each early tier's answer floor at these thresholds (what the report shows beside the thresholds)."""
    _, _, where = run(profiles, cal, thresholds, keep_last)
    floors = tier_floors(where, reference, target, len(profiles) - 1)
    return {p.name: floor for p, floor in zip(profiles, floors)}


def candidates(values: list[float | None], floor: float = 0.0) -> list[float]:
    """Thresholds worth trying: the distinct calibrated values at or above `floor` (thinned to quantiles), NEVER."""
    distinct = sorted({v for v in values if v is not None and v >= floor})
    if len(distinct) > MAX_CANDIDATES:
        step = (len(distinct) - 1) / (MAX_CANDIDATES - 1)
        distinct = sorted({distinct[round(k * step)] for k in range(MAX_CANDIDATES)})
    return distinct + [NEVER]


def choose_thresholds(profiles: list[TierProfile], cal: list[list[float | None]], target: Target,
                      keep_last: bool, floor: str = "reached") -> tuple[list[float], bool]:
    """The cheapest thresholds meeting the target on these rows; (all NEVER, False) when none does.

    `floor`: "reached" (the guards of the module docstring), "answer" (every tier's answers held to the
    floor of the whole batch, the earlier rule) or "none" (the batch target alone: the best-in-hindsight search).
    """
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {', '.join(FLOORS)}, got {floor!r}")
    reference, _, _ = simulate(profiles[-1:], cal[-1:], [0.0], keep_last)
    free = [t for t, p in enumerate(profiles) if p.scored and (t < len(profiles) - 1 or not keep_last)]
    overall = answer_floor(reference, target)
    last = len(profiles) - 1
    # the first tier is reached by every row, so its floor is the batch's under either rule
    options = {t: candidates(cal[t], overall if floor == "answer" or (floor == "reached" and t == 0) else 0.0)
               for t in free}
    base = [NEVER if t in free else FLAG_THRESHOLD for t in range(len(profiles))]
    best: tuple[int, int, list[float]] | None = None

    def consider(thresholds: list[float]) -> None:
        nonlocal best
        correct, cost, where = run(profiles, cal, thresholds, keep_last)
        if best is not None and (cost, -sum(correct)) >= best[:2]:
            return
        if floor == "reached" and not (floors_hold(thresholds, where, reference, target, last)
                                       and tiers_hold(correct, where, reference, target, last)):
            return
        if meets(correct, reference, target):
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
            ok, _ = _accepts(p, i, cal[t], thresholds[t])
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
                  keep_last: bool, floor: str = "reached") -> tuple[LadderChoice, list[LadderChoice]]:
    """The cheapest sub-ladder meeting the target (the last tier alone is one), and every sub-ladder tried.

    A tier that escalates nearly everything still costs its call on every job that reaches it, so a
    ladder without it can be cheaper at the same accuracy; trying every sub-ladder finds that. When
    none meets the target, the last tier alone is the answer (marked infeasible).
    """
    tried = []
    for kept in sub_ladders(len(profiles)):
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


@dataclass
class CalibrationResult:
    """The fitted entries, the tiers skipped, and the expected figures on the rows they were fitted on."""

    entries: dict[str, TierCalibration]
    report: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    router: RouterFit | None = None

    def meta(self) -> dict[str, Any]:
        """What the calibration file records beside its entries: the skipped tiers (the loader reads them) and
        the training figures (`cascade estimate` projects from them)."""
        r = self.report
        expected = {**r["expected"], "ladder": r["ladder"], "escalation": r["escalation"],
                    "last_tier_accuracy": r["last_tier_accuracy"], "cost_ratio": r["cost_ratio"]}
        return {"expected": expected, **({"skip": {r["pipeline"]: self.skipped}} if self.skipped else {}),
                **({"router": {r["pipeline"]: self.router.block()}} if self.router is not None else {})}


def fit_map(p: TierProfile, rows: Iterable[int]) -> CalibrationMap | None:
    """The isotonic map of a scored tier fitted on these rows (those its static checks passed), or None."""
    pairs = [(p.raw[i], p.correct[i]) for i in rows if p.static_ok[i] and p.raw[i] is not None]
    return fit_isotonic([r for r, _ in pairs], [c for _, c in pairs]) if p.scored and pairs else None


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


def calibrate(settings: Settings, pipeline: Pipeline, recorded: RecordedSet, target: Target,
              rows: list[RecordedRow] | None = None, floor: str = "reached",
              cross_fit: bool = False, label_free: bool = False, route: bool = True) -> CalibrationResult:
    """Profile every tier, fit isotonic maps, choose a sub-ladder and its thresholds, then the pre-router
    (`route=False`: none); the report holds the training figures. `floor="none"` drops the tier and answer
    guards (the best-in-hindsight search)."""
    rows = list(rows if rows is not None else recorded.rows)
    if not rows:
        raise ConfigError(f"{recorded.source}: no rows to calibrate on")
    ladder = pipeline.full_ladder
    profiles = [profile_tier(settings, pipeline, recorded, rows, tier) for tier in ladder]
    labelled = any(r.gold is not None or any(a.correct is not None for a in r.responses.values()) for r in rows)
    label_free = label_free or not labelled
    if label_free:    # right = the last tier's answer (which is right by definition)
        reference = [None if o is None else _text(o) for o in profiles[-1].outputs]
        for p in profiles:
            p.correct = agreement(pipeline, [None if o is None else _text(o) for o in p.outputs], reference)
    shared = [p.key for p in profiles if p.scored]
    if len(shared) != len(set(shared)):
        raise ConfigError(f"{pipeline.source}: tiers share a calibration `key`; each tier's map and threshold is "
                          "fitted on its own answers, so give each tier its own key")
    maps = {p.name: m for p in profiles if (m := fit_map(p, range(len(rows)))) is not None}
    cal = [[maps[p.name](r) if p.name in maps and r is not None else None for r in p.raw] for p in profiles]
    keep_last = pipeline.on_last_failure == "accept_flagged"
    # cross_fit: choose on out-of-fold values (measured in the module docstring: off by default), report with
    # the map that is written
    best, tried = choose_ladder(profiles, cross_fitted(profiles) if cross_fit else cal, target, keep_last, floor)
    kept = [profiles[t] for t in best.kept]
    correct, cost, escalated = simulate(kept, [cal[t] for t in best.kept], best.thresholds, keep_last)
    reference, _, _ = simulate(profiles[-1:], cal[-1:], [0.0], keep_last)
    last_n = tier_samples(settings, pipeline)[ladder[-1]]
    last_cost = sum(tier_cost(settings, ladder[-1], recorded.find((r.system, r.user)) or r, last_n, live=True)
                    for r in rows)
    thresholds = [NEVER] * len(profiles)
    for t, value in zip(best.kept, best.thresholds):
        thresholds[t] = value
    n = len(rows)
    entries = {p.key: TierCalibration(maps[p.name], thresholds[t], sum(1 for r in p.raw if r is not None))
               for t, p in enumerate(profiles) if p.name in maps}
    skipped = [ladder[t] for t in range(len(ladder) - 1) if t not in best.kept]
    report = {
        "pipeline": pipeline.name, "recorded": recorded.source, "rows": n,
        "target": f"{target.kind}={target.value:g}", "confidence": target.confidence, "feasible": best.feasible,
        "labels": "agreement with the last tier" if label_free else "recorded",
        "ladder": [ladder[t] for t in best.kept], "skipped": skip_reasons(ladder, best, tried, last_cost or 1),
        "thresholds": {p.name: thresholds[t] for t, p in enumerate(profiles) if p.name in maps},
        "answer_floor": answer_floor(reference, target),
        "floors": answer_floors(kept, [cal[t] for t in best.kept], best.thresholds, reference, target, keep_last),
        "accuracy": sum(correct) / n, "last_tier_accuracy": sum(reference) / n,
        "cost_usd": to_usd(cost), "last_tier_cost_usd": to_usd(last_cost),
        "cost_ratio": cost / last_cost if last_cost else None,
        "escalation": {p.name: escalated[t] / n for t, p in enumerate(kept[:-1])},
        "expected": {"rows": n, "accuracy": sum(correct) / n,
                     "tiers": tier_rates(kept, [cal[t] for t in best.kept], best.thresholds)},
    }
    router = None
    if route:
        from cascade.tuning.router import fit_router  # it builds on this module's simulation

        texts = [prompt_text(*render(pipeline.prompt, {"system": r.system, "user": r.user})) for r in rows]
        router = fit_router(texts, kept, [cal[t] for t in best.kept], best.thresholds, target, keep_last, last_cost)
        report["router"] = router.report()
    if len(best.kept) == 1 and len(ladder) > 1:
        report["warning"] = (f"no cascade beats the last tier alone on these rows: every job goes to {ladder[-1]} "
                             f"({', '.join(skipped)} skipped)")
    return CalibrationResult(entries, report, skipped, router)


def _text(output: Any) -> str:
    return output if isinstance(output, str) else orjson.dumps(output, option=orjson.OPT_SORT_KEYS).decode()


def calibration_paths(pipeline_file: Path) -> dict[str, set[str]]:
    """The calibration files a pipeline's score verifiers name, each with the keys they read (tier or `key`)."""
    try:
        with pipeline_file.open("rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}   # loading the config reports what is wrong with the file
    ladder = raw.get("ladder", [])
    out: dict[str, set[str]] = {}
    for section, specs in raw.get("verifiers", {}).items():
        for spec in specs:
            if isinstance(spec, dict) and spec.get("name") in SCORED and spec.get("calibration"):
                keys = {spec["key"]} if spec.get("key") else set(ladder if section == "default" else [section])
                out.setdefault(spec["calibration"], set()).update(keys)
    return out


def write_placeholders(config_dir: Path, pipeline_file: Path) -> list[Path]:
    """Give each calibration file the pipeline names a safe entry (escalate everything) for every key it lacks.

    The config cannot load while a referenced file or entry is missing, and `cascade calibrate`
    needs the config; the fit overwrites the placeholders.
    """
    written = []
    identity = CalibrationMap(((0.0, 0.0), (1.0, 1.0)))
    for name, keys in calibration_paths(pipeline_file).items():
        path = config_dir / name
        try:
            entries = load_calibration(path) if path.exists() else {}
        except ValueError:
            entries = {}        # unreadable: the fit replaces it
        missing = sorted(keys - set(entries))
        if missing or not path.exists():
            entries.update({k: TierCalibration(identity, NEVER) for k in missing})
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(dump_calibration(entries, {"placeholder": True}))
            written.append(path)
    return written


def stored_expectation(settings: Settings, pipeline: Pipeline) -> tuple[dict[str, Any] | None, Path | None]:
    """The expected figures `cascade calibrate` wrote into a calibration file of the pipeline, and that file;
    (None, file) when its files hold none (written by hand, or before calibrate stored them), (None, None)
    when the pipeline names no calibration file."""
    found = None
    for name in calibration_paths(Path(pipeline.source)):
        path = settings.config_dir / name
        found = found or path
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue        # loading the config reports an unreadable calibration file
        if isinstance(data, dict) and isinstance(data.get("expected"), dict) and data.get("pipeline") in (
                None, pipeline.name):
            return data["expected"] | {"fitted_on": data.get("fitted_on"), "split": data.get("split")}, path
    return None, found
