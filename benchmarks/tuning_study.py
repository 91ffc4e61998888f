"""Benchmark: which threshold-fitting choices generalise, over repeated 300-row train splits.

    python -m benchmarks.tuning_study [--datasets ../shared/datasets] [--reps 4]

The train and test rows of mmlu-oai and medmcqa-oai (ladder mini -> qwen72 -> gpt4o) are pooled,
and a synthetic three-tier set (a latent difficulty per row; each tier right with a logistic
probability of its skill minus the difficulty; its score that probability, noised) stands for an
unseen set. For each of `reps` random splits (300 train rows, the rest test), every variant fits
its sub-ladder and thresholds on train (drop=0.01) and is measured on test: whether the target
holds, the cost ratio to the last tier alone, and its ratio to the best-in-hindsight search on the
test rows. Progress on stderr, one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

import orjson

from cascade.recorded import RecordedSet, load_recorded
from cascade.tuning import calibrate as C
from cascade.worker.config import load_settings

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"default": {}, "cross_fit": {"cross_fit": True}, "confidence_0.8": {"confidence": 0.8},
            "confidence_0.7": {"confidence": 0.7}}
TARGET = C.Target("drop", 0.01)


def recorded_profiles(datasets: Path, name: str) -> list[C.TierProfile]:
    settings = load_settings(REPO / "examples" / "recorded" / "config" / "cascade.toml", environ={},
                             check_verifiers=False)
    pipeline = settings.pipeline("mmlu")
    rows = [r for f in (f"{name}-train.jsonl", f"{name}-test.jsonl") for r in load_recorded(datasets / f).rows]
    recorded = RecordedSet(rows, name)
    return [C.profile_tier(settings, pipeline, recorded, rows, tier) for tier in pipeline.ladder]


def synthetic_profiles(n: int = 2000, seed: int = 7) -> list[C.TierProfile]:
    rng = random.Random(seed)
    difficulty = [rng.gauss(0, 1.2) for _ in range(n)]
    out = []
    for t, (skill, cost) in enumerate(((-0.5, 1), (0.8, 9), (1.5, 100))):
        raw, ok = [], []
        for d in difficulty:
            z = 1.7 * (skill - d)
            ok.append(rng.random() < 1 / (1 + math.exp(-z)))
            raw.append(1 / (1 + math.exp(-(z + rng.gauss(0, 0.8) + (0.6 if ok[-1] else -0.6)))))
        out.append(C.TierProfile(f"t{t}", True, [True] * n, raw, [True] * n, [cost] * n, [cost] * n, ok, f"t{t}"))
    return out


def part(p: C.TierProfile, rows: list[int]) -> C.TierProfile:
    def pick(values: list) -> list:
        return [values[i] for i in rows]

    return C.TierProfile(p.name, p.scored, pick(p.static_ok), pick(p.raw), pick(p.rest_ok), pick(p.cost_full),
                         pick(p.cost_fail), pick(p.correct), p.key)


def calibrated(profiles: list[C.TierProfile], fitted_on: list[C.TierProfile]) -> list[list[float | None]]:
    maps = [C.fit_map(p, range(len(p.raw))) for p in fitted_on]
    return [[m(r) if m is not None and r is not None else None for r in p.raw] for p, m in zip(profiles, maps)]


def measure(variant: dict, train: list[C.TierProfile], test: list[C.TierProfile]) -> dict:
    goal = C.Target(TARGET.kind, TARGET.value, variant.get("confidence", 0.9))
    values = C.cross_fitted(train) if variant.get("cross_fit") else calibrated(train, train)
    best, _ = C.choose_ladder(train, values, goal, keep_last=True)
    kept, cal = [test[t] for t in best.kept], calibrated(test, train)
    correct, cost, _ = C.simulate(kept, [cal[t] for t in best.kept], best.thresholds, True)
    reference = test[-1].correct
    met = sum(correct) >= sum(reference) - TARGET.value * len(reference) - 1e-9
    return {"met": met, "cost_ratio": cost / sum(test[-1].cost_full)}


def hindsight(test: list[C.TierProfile]) -> float:
    best, _ = C.choose_ladder(test, calibrated(test, test), C.Target(TARGET.kind, TARGET.value, 0.5), True,
                              use_floor=False)
    return best.cost / sum(test[-1].cost_full)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--train-rows", type=int, default=300)
    args = parser.parse_args(argv)
    cases = {"synthetic": synthetic_profiles()}
    for name in ("mmlu-oai", "medmcqa-oai"):
        if (args.datasets / f"{name}-train.jsonl").exists():
            cases[name] = recorded_profiles(args.datasets, name)
    results: dict[str, dict[str, list[dict]]] = {v: {} for v in VARIANTS}
    for case, profiles in cases.items():
        n = len(profiles[0].raw)
        for rep in range(args.reps):
            order = list(range(n))
            random.Random(rep).shuffle(order)
            train_rows, test_rows = sorted(order[: args.train_rows]), sorted(order[args.train_rows:])
            train, test = [part(p, train_rows) for p in profiles], [part(p, test_rows) for p in profiles]
            best = hindsight(test)
            for name, variant in VARIANTS.items():
                figures = measure(variant, train, test) | {"hindsight": best}
                results[name].setdefault(case, []).append(figures)
                print(case, rep, name, figures, file=sys.stderr, flush=True)
    summary = {name: {case: {"target_met_share": statistics.fmean(float(f["met"]) for f in runs),
                             "cost_ratio": round(statistics.fmean(f["cost_ratio"] for f in runs), 4),
                             "ratio_to_hindsight": round(statistics.fmean(f["cost_ratio"] / f["hindsight"]
                                                                          for f in runs), 3)}
                      for case, runs in per.items()} for name, per in results.items()}
    print(orjson.dumps({"benchmark": "tuning_study", "reps": args.reps, "variants": summary}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
