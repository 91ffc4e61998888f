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
     tier's surplus on the training rows pays for another tier's wrong answers (where only one of them
     gives answers, nothing can pay for it, and the batch guard is the whole claim);
   - each answer: none is accepted whose calibrated P(correct) is below the accuracy the target asks
     of the last tier on the rows that reach its tier (the answer floor). For the first tier those are
     all rows; for a later tier, the last tier's accuracy on them is taken at its upper bound (at the
     same confidence), and the floor is never above the first tier's. A group of answers below its floor
     (one calibrated value of one tier) is let through when the last tier is no better on that group's
     own rows: its accuracy there at its Wilson upper bound, less the drop, is at most the group's value.
     The groups let through are claims of their own, so they share the confidence (Bonferroni).

The per-tier and per-answer guards are what keep a fit honest on a small training split. Without
them a middle tier that happens to beat the last tier on the training rows "pays" for a cheap tier's
wrong answers, and that credit does not carry over to new rows: on mmlu-oai (285 training rows,
where qwen2.5-72b beats gpt-4o by 9 points but loses by 2 on the test rows) the batch bound alone
accepted 76% of gpt-4o-mini's answers and lost 4.0 points on the test split (measured when the
first floor was added, commit c16f5b9). That floor held every tier to the accuracy of the whole
batch. But the rows a middle tier sees are the hard ones, where the last tier is weaker too, so it
let a strong middle tier accept only its surest answers. The reached floor fixed that for the average
of the rows a tier sees, and the groups below it fix it where a tier is unsure: those are the jobs the
last tier often gets wrong too (on mmlu-oai the groups let through cut the test cost from 0.416 to
0.339 of gpt-4o). `python -m benchmarks.tuning_study` measures the rules side by side (docs/tuning.md).

Step 1 is tuning/profile.py, step 3 tuning/search.py with the guards in tuning/target.py; this module
runs them and writes what they found.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from cascade.errors import ConfigError
from cascade.recorded import RecordedRow, RecordedSet
from cascade.tuning.label_free import agreement
from cascade.tuning.profile import SCORED, TierProfile, cross_fitted, fit_map, profile_tier
from cascade.tuning.replay import complete_rows, tier_cost, tier_samples
from cascade.tuning.search import (
    NEVER,
    answer_floors,
    choose_ladder,
    let_through,
    simulate,
    skip_reasons,
    sub_ladders,
    tier_rates,
)
from cascade.tuning.target import Target, answer_floor
from cascade.verifiers.calibration import CalibrationMap, TierCalibration, dump_calibration, load_calibration
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.pricing import to_usd
from cascade.worker.prompts import render
from cascade.worker.routing import prompt_text

if TYPE_CHECKING:
    from cascade.tuning.router import RouterFit


@dataclass
class CalibrationResult:
    """The fitted entries, the tiers skipped, and the expected figures on the rows they were fitted on."""

    entries: dict[str, TierCalibration]
    report: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    router: RouterFit | None = None
    profiles: list[TierProfile] = field(default_factory=list, repr=False)   # every tier of the ladder on the rows
    values: list[list[float | None]] = field(default_factory=list, repr=False)   # their calibrated values

    def meta(self) -> dict[str, Any]:
        """What the calibration file records beside its entries: the skipped tiers (the loader reads them) and
        the training figures (`cascade estimate` projects from them)."""
        r = self.report
        expected = {**r["expected"], "ladder": r["ladder"], "escalation": r["escalation"],
                    "last_tier_accuracy": r["last_tier_accuracy"], "cost_ratio": r["cost_ratio"]}
        return {"expected": expected, **({"skip": {r["pipeline"]: self.skipped}} if self.skipped else {}),
                **({"router": {r["pipeline"]: self.router.block()}} if self.router is not None else {})}


def calibrate(settings: Settings, pipeline: Pipeline, recorded: RecordedSet, target: Target,
              rows: list[RecordedRow] | None = None, floor: str = "grouped",
              cross_fit: bool = False, label_free: bool = False, route: bool = True,
              progress: Callable[[int, int, str], None] | None = None) -> CalibrationResult:
    """Profile every tier, fit isotonic maps, choose a sub-ladder and its thresholds, then the pre-router
    (`route=False`: none); the report holds the training figures. `floor="none"` drops the tier and answer
    guards (the best-in-hindsight search). `progress(done, total, what)` is told each step before it runs."""
    rows = list(rows if rows is not None else recorded.rows)
    if not rows:
        raise ConfigError(f"{recorded.source}: no rows to calibrate on")
    rows, left_out = complete_rows(settings, pipeline, recorded, rows)
    ladder = pipeline.full_ladder
    steps = len(ladder) + len(sub_ladders(len(ladder))) + int(route)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, steps, what)
        done += 1

    profiles = []
    for tier in ladder:
        step(f"replaying {tier} over {len(rows)} rows")
        profiles.append(profile_tier(settings, pipeline, recorded, rows, tier))
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
    best, tried = choose_ladder(profiles, cross_fitted(profiles) if cross_fit else cal, target, keep_last, floor,
                                lambda kept: step("searching thresholds of " + " -> ".join(ladder[t] for t in kept)))
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
        "labels": "agreement with the last tier" if label_free else "recorded", "labelled_rows": labelled,
        "ladder": [ladder[t] for t in best.kept], "skipped": skip_reasons(ladder, best, tried, last_cost or 1),
        "thresholds": {p.name: thresholds[t] for t, p in enumerate(profiles) if p.name in maps},
        "answer_floor": answer_floor(reference, target),
        "floors": answer_floors(kept, [cal[t] for t in best.kept], best.thresholds, reference, target, keep_last),
        "below_floors": let_through(kept, [cal[t] for t in best.kept], best.thresholds, reference, target, keep_last),
        "accuracy": sum(correct) / n, "last_tier_accuracy": sum(reference) / n,
        "cost_usd": to_usd(cost), "last_tier_cost_usd": to_usd(last_cost),
        "cost_ratio": cost / last_cost if last_cost else None,
        "escalation": {p.name: escalated[t] / n for t, p in enumerate(kept[:-1])},
        "expected": {"rows": n, "accuracy": sum(correct) / n,
                     "tiers": tier_rates(kept, [cal[t] for t in best.kept], best.thresholds)},
    }
    if left_out:
        report["left_out"] = left_out
    router = None
    if route:
        from cascade.tuning.router import fit_router  # it builds on this module's simulation

        step("fitting the pre-router")
        texts = [prompt_text(*render(pipeline.prompt, {"system": r.system, "user": r.user})) for r in rows]
        router = fit_router(texts, kept, [cal[t] for t in best.kept], best.thresholds, target, keep_last, last_cost)
        report["router"] = router.report()
    if len(best.kept) == 1 and len(ladder) > 1:
        report["warning"] = (f"no cascade beats the last tier alone on these rows: every job goes to {ladder[-1]} "
                             f"({', '.join(skipped)} skipped)")
    if progress is not None:
        progress(steps, steps, "done")
    return CalibrationResult(entries, report, skipped, router, profiles, cal)


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
