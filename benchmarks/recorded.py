"""Benchmark: cascades fitted on recorded training rows, reported on the test rows, for every recorded set.

    python -m benchmarks.recorded [--datasets ../shared/datasets] [--config examples/recorded/config]

For each set in the datasets folder (benchmarks/recorded_sets.py finds them, and derives a pipeline
from the training rows for a set without an example pipeline): copy the example config to a
temporary directory, `cascade calibrate` on the train split (where the pipeline has a score
verifier), then `cascade replay` on the test split. Where calibrate enabled the pre-router, the test
split is replayed once more without its block (field `router`: with and without). Two searches in
hindsight run on the test rows themselves, never fitted on: the cheapest thresholds that meet the same
target there (`hindsight_cost_ratio`), and the cheapest as accurate there as the fitted cascade was
(`same_accuracy_hindsight_cost_ratio`): the first gap counts the accuracy the guards kept in hand, the
second only the choice of thresholds. The reliable hindsight (benchmarks/hindsight.py) is the cheapest search on
the test rows whose cascade meets the target on 9 of 10 resampled test sets (`reliable_hindsight_cost_ratio`;
`hindsight_reliability`: how often the best in hindsight does). One JSON object per set on stdout, then one JSON
line with every set; each step on stderr as it starts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.hindsight import reliable_hindsight
from benchmarks.recorded_sets import RecordedBenchmark, derive_pipeline, discover, static_ladder
from cascade.errors import CascadeError, ConfigError
from cascade.recorded import load_recorded
from cascade.tuning.calibrate import Target, calibrate, calibration_paths, write_placeholders
from cascade.tuning.replay import replay
from cascade.verifiers.calibration import CONFIDENCE_DEFAULT, dump_calibration
from cascade.worker.config import load_settings

REPO = Path(__file__).resolve().parent.parent


def run_set(bench: RecordedBenchmark, datasets: Path, config_dir: Path, confidence: float) -> dict:
    """Fit on train (when there is something to fit), replay test; the set's JSON summary."""
    started = time.perf_counter()
    train = load_recorded(datasets / bench.train, "train" if bench.split_field else None, on_bad_row=_warn)
    test = load_recorded(datasets / bench.test, "test" if bench.split_field else None, on_bad_row=_warn)
    if not train.rows or not test.rows:
        raise ConfigError(f"{bench.name}: no {'training' if not train.rows else 'test'} rows read "
                          f"from {train.source if not train.rows else test.source}")
    name, target = bench.pipeline, bench.target
    chosen_for = None     # the target a derived pipeline without a signal chose its sub-ladder for
    if name is None:
        name, scored = derive_pipeline(bench.name, train, config_dir)
        if not scored and target:   # static checks only: the cheapest sub-ladder they keep within the target
            name, _ = derive_pipeline(bench.name, train, config_dir, static_ladder(config_dir, name, train, target))
            chosen_for = target
        target = target if scored else None
    pipeline_file = config_dir / "pipelines" / f"{name}.toml"
    settings = load_settings(config_dir / "cascade.toml", environ={}, check_verifiers=False)
    pipeline = settings.pipeline(name)
    full = (settings, pipeline)      # before the fit: every tier of the ladder, for the searches in hindsight
    fitted = hindsight = reliable = None
    named = calibration_paths(pipeline_file)
    if named and target:
        goal = Target.parse(target, confidence)
        _step(bench.name, f"fitting {' -> '.join(pipeline.full_ladder)} on {len(train.rows)} training rows")
        fitted = calibrate(settings, pipeline, train, goal)
        (config_dir / next(iter(named))).write_bytes(dump_calibration(fitted.entries, {"pipeline": name,
                                                                                       **fitted.meta()}))
        # best in hindsight: the same search on the test rows, point target, no tier or answer guard (never fitted on)
        _step(bench.name, f"searching the best in hindsight on {len(test.rows)} test rows")
        searched = calibrate(settings, pipeline, test, Target(goal.kind, goal.value, 0.5), floor="none",
                             cross_fit=False, route=False)
        hindsight = searched.report
        _step(bench.name, "searching the reliable hindsight (the target met on 9 of 10 resampled test sets)")
        reliable = reliable_hindsight(searched.profiles, searched.values, goal,
                                      pipeline.on_last_failure == "accept_flagged",
                                      round(hindsight["last_tier_cost_usd"] * 1e9))
    free = None
    if named and target:    # label-free: fitted on agreement with the last tier, measured on the labels
        _step(bench.name, "fitting without labels, replaying it on the test rows")
        unlabelled = calibrate(settings, pipeline, train, goal, label_free=True, route=False)
        (config_dir / next(iter(named))).write_bytes(dump_calibration(unlabelled.entries, {"pipeline": name,
                                                                                           **unlabelled.meta()}))
        free_settings = load_settings(config_dir / "cascade.toml", environ={})
        free_pipeline = free_settings.pipeline(name)
        free = replay(free_settings, free_pipeline, test).report
        free = {"accuracy": _round(free["accuracy"]), "cost_ratio": _round(free["cost_ratio"]),
                "target_met": _met(target, free), "kept": list(free_pipeline.ladder)}
        (config_dir / next(iter(named))).write_bytes(dump_calibration(fitted.entries, {"pipeline": name,
                                                                                       **fitted.meta()}))
    write_placeholders(config_dir, pipeline_file)
    settings = load_settings(config_dir / "cascade.toml", environ={})
    pipeline = settings.pipeline(name)
    _step(bench.name, f"replaying {' -> '.join(pipeline.ladder)} on the test rows")
    report = replay(settings, pipeline, test).report
    router = None
    if fitted is not None and fitted.router is not None:    # the same calibration without its router block
        without = report
        if fitted.router.enabled:
            meta = {k: v for k, v in fitted.meta().items() if k != "router"}
            (config_dir / next(iter(named))).write_bytes(dump_calibration(fitted.entries, {"pipeline": name, **meta}))
            without = replay(load_settings(config_dir / "cascade.toml", environ={}), pipeline, test).report
        router = {"enabled": fitted.router.enabled, "cost_ratio_without": _round(without["cost_ratio"]),
                  "cost_ratio_with": _round(report["cost_ratio"]), "accuracy_without": _round(without["accuracy"]),
                  "accuracy_with": _round(report["accuracy"]), "target_met_without": _met(target, without),
                  "routed": {tier: _round(share) for tier, share in report["routed"].items()},
                  "cuts": fitted.router.cuts, **({} if fitted.router.enabled else {"reason": fitted.router.reason})}
    left_out = (fitted.report.get("left_out", []) if fitted else []) + report.get("left_out", [])
    for note in left_out:
        _warn(note)
    fitted_for = target if fitted else chosen_for
    ratio = report["cost_ratio"]
    best = hindsight["cost_ratio"] if hindsight else None
    same = None     # the cheapest thresholds on test as accurate there as the fitted cascade (never fitted on)
    if fitted is not None and report["accuracy"] is not None:
        _step(bench.name, "searching the cheapest thresholds as accurate on the test rows")
        found = calibrate(*full, test, Target("accuracy", report["accuracy"] - 1e-9, 0.5), floor="none",
                          cross_fit=False, route=False).report
        same = found["cost_ratio"] if found["feasible"] else None
    return {
        "set": bench.name,
        "pipeline": name,
        "ladder": list(pipeline.full_ladder),
        "kept": list(pipeline.ladder),
        "skipped": fitted.report["skipped"] if fitted else {},
        "train_rows": len(train.rows),
        "left_out": left_out,
        "test_rows": report["jobs"],
        "target": fitted_for,
        "thresholds": fitted.report["thresholds"] if fitted else None,
        "accuracy": _round(report["accuracy"]),
        "last_tier_accuracy": _round(report["last_tier_accuracy"]),
        "target_met": _met(fitted_for, report) if fitted_for else None,
        "cost_ratio": _round(ratio),
        "hindsight_cost_ratio": _round(best),
        "hindsight_ladder": hindsight["ladder"] if hindsight else None,
        "ratio_to_hindsight": _round(ratio / best) if best else None,
        "hindsight_reliability": _round(reliable["hindsight_met"]) if reliable else None,
        "reliable_hindsight_cost_ratio": _round(reliable["cost_ratio"]) if reliable else None,
        "reliable_hindsight_drop_share": reliable["drop_share"] if reliable else None,
        "ratio_to_reliable_hindsight": _round(ratio / reliable["cost_ratio"]) if reliable else None,
        "same_accuracy_hindsight_cost_ratio": _round(same),
        "ratio_to_same_accuracy_hindsight": _round(ratio / same) if same else None,
        "escalation": {tier: _round(rate) for tier, rate in report["escalation"].items()},
        "label_free": free,
        "router": router,
        "oracle_accuracy": _round(report["oracle_accuracy"]),
        "oracle_cost_ratio": _round(report["oracle_cost_ratio"]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _met(target: str, report: dict) -> bool | None:
    """Whether the test accuracy meets the target (drop: below the last tier's test accuracy by at most X)."""
    goal = Target.parse(target)
    if report["accuracy"] is None:
        return None
    need = report["last_tier_accuracy"] - goal.value if goal.kind == "drop" else goal.value
    return report["accuracy"] >= need - 1e-9


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def _step(name: str, what: str) -> None:
    print(f"recorded: {name}: {what}", file=sys.stderr, flush=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main(argv: list[str] | None = None) -> int:
    """Run every set whose files exist; print a JSON object per set and a final JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "recorded" / "config")
    parser.add_argument("--confidence", type=float, default=CONFIDENCE_DEFAULT, help="confidence of the fitted target")
    parser.add_argument("--set", dest="sets", action="append", help="only this set (repeatable)")
    args = parser.parse_args(argv)
    results, failed = [], {}
    with tempfile.TemporaryDirectory(prefix="cascade-recorded-") as tmp:
        config_dir = Path(tmp) / "config"
        shutil.copytree(args.config, config_dir)
        for bench in discover(args.datasets):
            if args.sets and bench.name not in args.sets:
                continue
            try:
                result = run_set(bench, args.datasets, config_dir, args.confidence)
            except CascadeError as e:     # one set that cannot run is reported; the others go on
                failed[bench.name] = str(e)
                _warn(f"set {bench.name} not run: {e}")
                continue
            results.append(result)
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode(), flush=True)
    if not results and not failed:
        print(f"no recorded sets in {args.datasets}", file=sys.stderr)
    print(orjson.dumps({"benchmark": "recorded", "sets": results, **({"not_run": failed} if failed else {})}).decode())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
