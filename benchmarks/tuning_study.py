"""Benchmark: which threshold-fitting choices generalise, over repeated 300-row train splits.

    python -m benchmarks.tuning_study [--datasets ../shared/datasets] [--reps 8] [--variants a,b] [--cases a,b]
    python -m benchmarks.tuning_study --own-split      # the recorded sets' own train/test split, once
    python -m benchmarks.tuning_study --own-split --buckets   # where the fit's accuracy margin goes
    python -m benchmarks.tuning_study --variants default --same-accuracy   # and each fit's cost at its own accuracy
    python -m benchmarks.tuning_study --variants default --reliable   # and against the reliable hindsight

The train and test rows of mmlu-oai and medmcqa-oai (ladder mini -> qwen72 -> gpt4o) are pooled,
and three synthetic sets stand for unseen ones: a latent difficulty per row; each tier right with
a logistic probability of its skill minus the difficulty; its score that probability, noised. They
have three tiers (costs 1, 9, 100), five (3, 5, 7, 30, 100: a model family from 1B to 405B) and two
(5, 100). For each of `reps` random splits (300 train rows, the rest test), every variant fits its
sub-ladder and thresholds on train (drop=0.01) and is measured on test: whether the target holds,
the worst accuracy drop, the cost ratio to the last tier alone, and its ratio to the
best-in-hindsight search on the test rows. Progress on stderr, one JSON line on stdout.

`--router` studies the pre-router instead (tuning/router.py): the same splits of the pooled recorded
sets (their prompts), plus two synthetic sets with prompts, one where a topic word in the prompt shifts
the row's difficulty and one where the prompt is unrelated to it (tiers costing 5, 25 and 100). Each split fits the default ladder and
thresholds, then the router, on train; reported on test: how often the router is enabled, the cost
ratio without and with it, and how often the target holds without and with it.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

import orjson

from benchmarks.hindsight import reliable_hindsight
from cascade.recorded import RecordedSet, load_recorded
from cascade.tuning import profile as P
from cascade.tuning import router as R
from cascade.tuning import search as S
from cascade.tuning import target as T
from cascade.worker.config import load_settings
from cascade.worker.routing import prompt_text

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {   # calibrate's keywords and the target's confidence; "default" is what `cascade calibrate` does
    "default": {},
    "reached": {"floor": "reached"},          # the rule before: no group let through below its answer floor
    "answer_floor": {"floor": "answer"},      # the rule before the reached floor: every answer held to the batch's
    "confidence_0.7": {"confidence": 0.7},
    "confidence_0.5": {"confidence": 0.5},    # the batch at its point estimate: what the 90% bound costs
    "answer_floor_confidence_0.7": {"floor": "answer", "confidence": 0.7},
    "reached_confidence_0.7": {"floor": "reached", "confidence": 0.7},
    "cross_fit": {"cross_fit": True},
    "reached_cross_fit": {"floor": "reached", "cross_fit": True},
    "tiers": {"floor": "tiers"},              # each tier held to the target on its own rows, no answer floor
    "tiers_bound": {"floor": "tiers_bound"},  # the same at the target's confidence
    "no_floor": {"floor": "none"},            # the batch bound alone
    "budget": {"floor": "budget"},            # the rule, its tier guard as one budget for all the early tiers
    "model_bound": {"floor": "model"},        # the rule, its batch bound on calibrated values, not outcomes
    "centered": {"centered": True},           # the rule on centred isotonic maps (Oron & Flournoy 2017)
    "fixed_sequence": {"method": "fixed_sequence"},   # Learn then Test along one common threshold, no guards
}
TARGET = T.Target("drop", 0.01)


def recorded_profiles(datasets: Path, name: str) -> list[P.TierProfile]:
    return recorded_case(datasets, name)[0]


def recorded_case(datasets: Path, name: str) -> tuple[list[P.TierProfile], list[str]]:
    """The pooled train+test rows of a recorded set: each tier's profile, and each row's prompt."""
    settings = load_settings(REPO / "examples" / "recorded" / "config" / "cascade.toml", environ={},
                             check_verifiers=False)
    pipeline = settings.pipeline("mmlu")
    rows = [r for f in (f"{name}-train.jsonl", f"{name}-test.jsonl") for r in load_recorded(datasets / f).rows]
    recorded = RecordedSet(rows, name)
    return ([P.profile_tier(settings, pipeline, recorded, rows, tier) for tier in pipeline.ladder],
            [prompt_text(r.system, r.user) for r in rows])


def synthetic_with_prompts(signal: bool, n: int = 2000, seed: int = 11) -> tuple[list[P.TierProfile], list[str]]:
    """The synthetic set with a prompt per row: a topic word (10 topics) and a dozen filler words (of 600).
    With `signal`, the topic carries most of the row's difficulty; without, the topic is drawn apart from it.
    The tiers cost 5, 25 and 100: cheap calls worth skipping where they are sure to be wasted."""
    rng = random.Random(seed)
    shift = [rng.gauss(0, 1.0) for _ in range(10)]
    topics = [rng.randrange(10) for _ in range(n)]
    difficulty = [(shift[k] if signal else rng.gauss(0, 1.0)) + rng.gauss(0, 0.7) for k in topics]
    texts = [f"Topic t{k}. " + " ".join(f"w{rng.randrange(600)}" for _ in range(12)) for k in topics]
    return synthetic_profiles(n, seed, difficulty, (5, 25, 100)), texts


def synthetic_profiles(n: int = 2000, seed: int = 7, difficulty: list[float] | None = None,
                       costs: tuple[int, ...] = (1, 9, 100), skills: tuple[float, ...] = (-0.5, 0.8, 1.5)
                       ) -> list[P.TierProfile]:
    rng = random.Random(seed)
    difficulty = difficulty or [rng.gauss(0, 1.2) for _ in range(n)]
    out = []
    for t, (skill, cost) in enumerate(zip(skills, costs)):
        raw, ok = [], []
        for d in difficulty:
            z = 1.7 * (skill - d)
            ok.append(rng.random() < 1 / (1 + math.exp(-z)))
            raw.append(1 / (1 + math.exp(-(z + rng.gauss(0, 0.8) + (0.6 if ok[-1] else -0.6)))))
        out.append(P.TierProfile(f"t{t}", True, [True] * n, raw, [True] * n, [cost] * n, [cost] * n, ok, f"t{t}"))
    return out


def part(p: P.TierProfile, rows: list[int]) -> P.TierProfile:
    def pick(values: list) -> list:
        return [values[i] for i in rows]

    return P.TierProfile(p.name, p.scored, pick(p.static_ok), pick(p.raw), pick(p.rest_ok), pick(p.cost_full),
                         pick(p.cost_fail), pick(p.correct), p.key)


def calibrated(profiles: list[P.TierProfile], fitted_on: list[P.TierProfile], centered: bool = False
               ) -> list[list[float | None]]:
    maps = [P.fit_map(p, range(len(p.raw)), centered) for p in fitted_on]
    return [[m(r) if m is not None and r is not None else None for r in p.raw] for p, m in zip(profiles, maps)]


def fixed_sequence(profiles: list[P.TierProfile], cal: list[list[float | None]], target: T.Target) -> S.LadderChoice:
    """Learn then Test (Angelopoulos et al. 2021) along a one-parameter path, measured and not kept
    (docs/tuning.md): per sub-ladder, one calibrated threshold for every tier before the last, tested from the
    highest down with the batch bound, stopping at the first that fails (fixed-sequence testing needs no correction
    along the path); the sub-ladders share the confidence (Bonferroni); the cheapest that passed, else the last
    tier alone."""
    ladders = S.sub_ladders(len(profiles))
    goal = T.Target(target.kind, target.value, 1 - (1 - target.confidence) / len(ladders))
    reference, _, _ = S.simulate(profiles[-1:], cal[-1:], [0.0], True)
    best = None
    for kept in ladders:
        sub, values = [profiles[t] for t in kept], [cal[t] for t in kept]
        path = sorted({v for t in range(len(kept) - 1) for v in values[t] if v is not None}, reverse=True)
        passed = None
        for level in path if len(kept) > 1 else [S.FLAG_THRESHOLD]:
            thresholds = (level,) * (len(kept) - 1) + (S.FLAG_THRESHOLD,)
            correct, cost, _ = S.simulate(sub, values, thresholds, True)
            if len(kept) > 1 and not T.meets(correct, reference, goal):
                break
            passed = S.LadderChoice(kept, thresholds, True, cost, sum(correct))
        if passed is not None and (best is None or passed.cost < best.cost):
            best = passed
    return best


def measure(variant: dict, train: list[P.TierProfile], test: list[P.TierProfile], same_accuracy: bool = False
            ) -> dict:
    goal = T.Target(TARGET.kind, TARGET.value, variant.get("confidence", TARGET.confidence))
    centered = variant.get("centered", False)
    values = P.cross_fitted(train) if variant.get("cross_fit") else calibrated(train, train, centered)
    if variant.get("method") == "fixed_sequence":
        best = fixed_sequence(train, values, goal)
    else:
        best, _ = S.choose_ladder(train, values, goal, keep_last=True, floor=variant.get("floor", S.FLOORS[0]))
    kept, cal = [test[t] for t in best.kept], calibrated(test, train, centered)
    correct, cost, _ = S.simulate(kept, [cal[t] for t in best.kept], best.thresholds, True)
    reference, last = test[-1].correct, sum(test[-1].cost_full)
    met = sum(correct) >= sum(reference) - TARGET.value * len(reference) - 1e-9
    out = {"met": met, "cost_ratio": cost / last, "drop": (sum(reference) - sum(correct)) / len(reference)}
    if same_accuracy:   # the cheapest thresholds on test as accurate there as this fit (the fit itself is one)
        goal = T.Target("accuracy", sum(correct) / len(correct) - 1e-9, 0.5)
        same, _ = S.choose_ladder(test, calibrated(test, test), goal, True, floor="none")
        out["same_accuracy"] = min(same.cost, cost) / last if same.feasible else cost / last
    return out


def hindsight(test: list[P.TierProfile], reliable: bool = False) -> dict[str, float]:
    """The best in hindsight on the test rows (cost ratio); with `reliable`, also the reliable hindsight
    (benchmarks/hindsight.py: the target met on 9 of 10 resampled test sets)."""
    values, last = calibrated(test, test), sum(test[-1].cost_full)
    best, _ = S.choose_ladder(test, values, T.Target(TARGET.kind, TARGET.value, 0.5), True, floor="none")
    out = {"hindsight": best.cost / last}
    if reliable:
        out["reliable"] = reliable_hindsight(test, values, TARGET, True, last)["cost_ratio"]
    return out


def buckets(train: list[P.TierProfile], test: list[P.TierProfile]) -> dict[str, list[dict]]:
    """Where the fitted cascade's accuracy margin goes: per early tier of the default fit, the jobs that reach
    it grouped by the value its train-fitted map gives them, with its accuracy and the last tier's on those
    jobs, on train and on test, and whether the fit accepts the group."""
    best, _ = S.choose_ladder(train, calibrated(train, train), TARGET, keep_last=True)
    out: dict[str, list[dict]] = {}
    for split, profiles in (("train", train), ("test", test)):
        kept = [profiles[t] for t in best.kept]
        values = calibrated(profiles, train)
        cal = [values[t] for t in best.kept]
        _, _, where = S.run(kept, cal, best.thresholds, True)
        for k, p in enumerate(kept[:-1]):
            # a group is the jobs of one rounded value on one side of the threshold: a threshold can fall inside
            # a rounded value (a map's values a hair apart), and the jobs below it are escalated
            groups: dict[tuple[float, bool], list[int]] = {}
            for i, w in enumerate(where):
                if w >= k and cal[k][i] is not None:
                    groups.setdefault((round(cal[k][i], 2), cal[k][i] >= best.thresholds[k]), []).append(i)
            rows = out.setdefault(p.name, [])
            for (value, accepted), members in sorted(groups.items()):
                entry = next((r for r in rows if (r["value"], r["accepted"]) == (value, accepted)), None)
                if entry is None:
                    entry = {"value": value, "accepted": accepted}
                    rows.append(entry)
                entry[split] = {"jobs": len(members),
                                "accuracy": round(statistics.fmean(p.correct[i] for i in members), 3),
                                "last_tier": round(statistics.fmean(kept[-1].correct[i] for i in members), 3)}
    return {name: sorted(rows, key=lambda r: (r["value"], r["accepted"])) for name, rows in out.items()}


def measure_router(train: list[P.TierProfile], test: list[P.TierProfile], train_texts: list[str],
                   test_texts: list[str]) -> dict:
    """Fit the default ladder, thresholds and router on train; test figures without and with the router."""
    values = calibrated(train, train)
    best, _ = S.choose_ladder(train, values, TARGET, keep_last=True)
    kept_train, kept_test = [train[t] for t in best.kept], [test[t] for t in best.kept]
    fit = R.fit_router(train_texts, kept_train, [values[t] for t in best.kept], best.thresholds, TARGET, True,
                       sum(train[-1].cost_full))
    cal = calibrated(test, train)
    cal = [cal[t] for t in best.kept]
    n = len(test_texts)
    never = [[False] * n for _ in kept_test]
    skip = never if fit.router is None else [[fit.router.skips(p.name, text) is not None for text in test_texts]
                                             for p in kept_test]
    reference, last = test[-1].correct, sum(test[-1].cost_full)
    out = {"enabled": fit.enabled}
    for name, matrix in (("without", never), ("with", skip)):
        correct, cost, _ = R.simulate_routed(kept_test, cal, best.thresholds, True, matrix)
        out[f"met_{name}"] = sum(correct) >= sum(reference) - TARGET.value * n - 1e-9
        out[f"cost_ratio_{name}"] = sum(cost) / last
    return out


def router_study(args: argparse.Namespace) -> dict:
    """The --router study: figures per case over `reps` random splits."""
    cases = {"synthetic_topic": synthetic_with_prompts(True), "synthetic_no_signal": synthetic_with_prompts(False)}
    for name in ("mmlu-oai", "medmcqa-oai"):
        if (args.datasets / f"{name}-train.jsonl").exists():
            cases[name] = recorded_case(args.datasets, name)
    summary = {}
    for case, (profiles, texts) in cases.items():
        runs = []
        for rep in range(args.reps):
            order = list(range(len(texts)))
            random.Random(rep).shuffle(order)
            train_rows, test_rows = sorted(order[: args.train_rows]), sorted(order[args.train_rows:])
            figures = measure_router([part(p, train_rows) for p in profiles], [part(p, test_rows) for p in profiles],
                                     [texts[i] for i in train_rows], [texts[i] for i in test_rows])
            runs.append(figures)
            print(case, rep, figures, file=sys.stderr, flush=True)
        summary[case] = {"enabled_share": statistics.fmean(float(f["enabled"]) for f in runs),
                         **{f"{k}_{w}": round(statistics.fmean(float(f[f"{k}_{w}"]) for f in runs), 4)
                            for k in ("cost_ratio", "met") for w in ("without", "with")}}
    return {"benchmark": "tuning_study", "study": "router", "reps": args.reps, "train_rows": args.train_rows,
            "cases": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=300)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--cases", default="", help="comma-separated (default: every case)")
    parser.add_argument("--router", action="store_true", help="study the pre-router instead of the thresholds")
    parser.add_argument("--own-split", action="store_true",
                        help="the recorded sets' own train/test split (once), instead of random splits")
    parser.add_argument("--same-accuracy", action="store_true",
                        help="also the cheapest thresholds on test as accurate as each fit (slower)")
    parser.add_argument("--reliable", action="store_true",
                        help="also each fit's cost against the reliable hindsight (benchmarks/hindsight.py; slower)")
    parser.add_argument("--buckets", action="store_true",
                        help="per early tier of the default fit: accuracy by calibrated value, train and test "
                             "(first split)")
    args = parser.parse_args(argv)
    if args.router:
        print(orjson.dumps(router_study(args)).decode())
        return 0
    cases = {"synthetic": synthetic_profiles(),    # and a five-tier ladder like a model family from 1B to 405B
             "synthetic_5": synthetic_profiles(seed=5, costs=(3, 5, 7, 30, 100), skills=(-1.2, -0.5, 0.3, 1.3, 1.6)),
             "synthetic_2": synthetic_profiles(seed=2, costs=(5, 100), skills=(0.3, 1.5))}
    own: dict[str, int] = {}    # a recorded set's training rows, first in its pooled rows
    for name in ("mmlu-oai", "medmcqa-oai"):
        if (args.datasets / f"{name}-train.jsonl").exists():
            cases[name] = recorded_profiles(args.datasets, name)
            own[name] = len(load_recorded(args.datasets / f"{name}-train.jsonl").rows)
    if args.own_split:
        cases = {k: v for k, v in cases.items() if k in own}
    chosen = {v: VARIANTS[v] for v in args.variants.split(",")}
    results: dict[str, dict[str, list[dict]]] = {v: {} for v in chosen}
    cases = {k: v for k, v in cases.items() if not args.cases or k in args.cases.split(",")}
    found: dict[str, dict] = {}
    for case, profiles in cases.items():
        n = len(profiles[0].raw)
        for rep in range(1 if args.own_split else args.reps):
            order = list(range(n))
            if not args.own_split:
                random.Random(rep).shuffle(order)
            cut = own[case] if args.own_split else args.train_rows
            train_rows, test_rows = sorted(order[:cut]), sorted(order[cut:])
            train, test = [part(p, train_rows) for p in profiles], [part(p, test_rows) for p in profiles]
            if args.buckets:
                found[case] = buckets(train, test)
                _print_buckets(case, found[case])
                break
            best = hindsight(test, args.reliable)
            for name, variant in chosen.items():
                figures = measure(variant, train, test, args.same_accuracy) | best
                results[name].setdefault(case, []).append(figures)
                print(case, rep, name, figures, file=sys.stderr, flush=True)
    if args.buckets:
        print(orjson.dumps({"benchmark": "tuning_study", "study": "buckets", "own_split": args.own_split,
                            "cases": found}).decode())
        return 0
    summary = {name: {case: {"target_met_share": statistics.fmean(float(f["met"]) for f in runs),
                             "cost_ratio": round(statistics.fmean(f["cost_ratio"] for f in runs), 4),
                             "ratio_to_hindsight": round(statistics.fmean(f["cost_ratio"] / f["hindsight"]
                                                                          for f in runs), 3),
                             "max_drop": round(max(f["drop"] for f in runs), 4),
                             **({"ratio_to_same_accuracy_hindsight": round(statistics.fmean(
                                 f["cost_ratio"] / f["same_accuracy"] for f in runs), 3)}
                                if args.same_accuracy else {}),
                             **({"ratio_to_reliable_hindsight": round(statistics.fmean(
                                 f["cost_ratio"] / f["reliable"] for f in runs), 3)} if args.reliable else {})}
                      for case, runs in per.items()} for name, per in results.items()}
    reps = 1 if args.own_split else args.reps
    print(orjson.dumps({"benchmark": "tuning_study", "reps": reps, "own_split": args.own_split,
                        "variants": summary}).decode())
    return 0


def _print_buckets(case: str, tiers: dict[str, list[dict]]) -> None:
    for name, rows in tiers.items():
        print(f"{case}: {name}, jobs reaching it, by calibrated value (tier / last tier accuracy)", file=sys.stderr)
        for r in rows:
            cells = [f"{s} {r[s]['jobs']:4d} jobs {r[s]['accuracy']:.3f} / {r[s]['last_tier']:.3f}" if s in r
                     else f"{s} {'-':>29}" for s in ("train", "test")]
            print(f"  {r['value']:.2f} {'accepted' if r['accepted'] else 'escalated':9}  " + "   ".join(cells),
                  file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
