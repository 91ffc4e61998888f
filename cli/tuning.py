"""`cascade replay` and `cascade calibrate`: a pipeline evaluated and tuned offline on recorded responses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from cascade.cli.common import config_option, load
from cascade.errors import CascadeError
from cascade.verifiers.calibration import CONFIDENCE_DEFAULT
from cascade.worker.config.load import config_path as find_config
from cascade.worker.config.load import load_settings

recorded_option = click.option("--recorded", "-r", required=True, type=click.Path(exists=True, dir_okay=False),
                               help="Recorded responses (JSONL in the ../shared/datasets format).")
split_option = click.option("--split", help="Only rows whose `split` field is this (e.g. train or test).")
pipeline_option = click.option("--pipeline", "-p", required=True, help="Pipeline name (a file in pipelines/).")


class StepBar:
    """calibrate's steps (tiers replayed, sub-ladders searched, the router) as a bar on stderr: it appears after
    half a second and is gone when the report prints."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="step", file=sys.stderr, disable=not enabled, delay=0.5, leave=False,
                        dynamic_ncols=True, bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}]")

    def __call__(self, done: int, total: int, what: str) -> None:
        self.bar.total, self.bar.n = total, done
        self.bar.set_description_str(f"calibrate: {what}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_report(report: dict[str, Any], title: str) -> str:
    """A replay or calibration report for humans."""
    ratio = report["cost_ratio"]
    escalation = ", ".join(f"{tier} {_percent(rate)}" for tier, rate in report["escalation"].items())
    agreement = report.get("labels", "recorded") != "recorded"    # no labels: "right" is the last tier's answer
    measure = "agreement with the last tier" if agreement else "accuracy"
    lines = [
        title,
        f"  rows: {report.get('jobs', report.get('rows'))}; {measure} {_percent(report['accuracy'])} "
        f"(last tier alone {_percent(report['last_tier_accuracy'])})",
        f"  cost: ${report['cost_usd']:.6f}; last tier alone ${report['last_tier_cost_usd']:.6f}; "
        f"ratio {'-' if ratio is None else f'{ratio:.3f}'}",
        f"  escalated (share of jobs): {escalation or '-'}",
    ]
    if agreement:
        why = ("not used (--label-free)" if report.get("labelled_rows") else "none in the rows (no correct, no gold)")
        lines.append(f"  labels: {why}: right means agreeing with the last tier")
    if report.get("oracle_cost_ratio") is not None and report.get("oracle_accuracy") is not None:
        lines.append(f"  oracle (stop at the first correct tier): accuracy {_percent(report['oracle_accuracy'])}, "
                     f"cost ratio {report['oracle_cost_ratio']:.3f}")
    if "thresholds" in report:
        floors = ", ".join(f"{t} {v:.3f}" for t, v in report.get("floors", {}).items())
        lines.append(f"  thresholds (calibrated P({'agree' if agreement else 'correct'})): "
                     + ", ".join(f"{t} {'never' if v > 1 else f'{v:g}'}" for t, v in report["thresholds"].items())
                     + (f"; answer floors: {floors}" if floors else ""))
        for tier, groups in report.get("below_floors", {}).items():
            lines.append(f"  {tier} answers below its floor where the last tier is no better: " + ", ".join(
                f"{g['value']:.3f} (last tier {g['last_tier_accuracy']:.3f} on {g['rows']} rows)" for g in groups))
        if report.get("skipped"):
            lines.append(f"  ladder: {' -> '.join(report['ladder'])}")
            lines += [f"  skipped {tier}: {why}" for tier, why in report["skipped"].items()]
        if not report["feasible"]:
            lines.append(f"  target {report['target']} not reachable on these rows: every job goes to the last tier")
        if report.get("warning"):
            lines.append(f"  WARNING: {report['warning']}")
    if report.get("router"):
        lines += format_router(report["router"])
    return "\n".join(lines)


def format_router(router: dict[str, Any]) -> list[str]:
    """The pre-router's lines of a calibration report: enabled or why not, the cuts, the held-back costs."""
    if not router["enabled"]:
        without = router.get("held_back_cost_ratio_without")
        cost = "" if without is None else f"; held-back cost ratio {without:.3f} without it"
        return [f"  router: not enabled ({router['reason']}){cost}"]
    cuts = ", ".join(f"{tier} skipped below P(accepts) {t['cut']:.3f}" for tier, t in router["tiers"].items()
                     if t["cut"] > 0)
    costs = (f"  router on held-back training predictions: cost ratio {router['held_back_cost_ratio_with']:.3f} "
             f"with it, {router['held_back_cost_ratio_without']:.3f} without; accuracy "
             f"{_percent(router['held_back_accuracy_with'])} with, "
             f"{_percent(router['held_back_accuracy_without'])} without")
    return [f"  router: enabled; {cuts}", costs]


def _write(path: Path, data: bytes) -> None:
    """Write an output file, or stop with one line saying why it cannot be written."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None


def _warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def _rows(recorded: Any, split: str | None) -> list[Any]:
    rows = [r for r in recorded.rows if split is None or r.split == split]
    if not rows:
        skipped = f" ({len(recorded.skipped)} lines skipped: not recorded rows)" if recorded.skipped else ""
        raise click.BadParameter(f"no rows{f' with split {split!r}' if split else ''} in {recorded.source}{skipped}",
                                 param_hint="--recorded")
    return rows


@click.command("replay")
@pipeline_option
@recorded_option
@split_option
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the result records (JSONL) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON line on stdout.")
@config_option
def replay_command(pipeline: str, recorded: str, split: str | None, out: str | None, as_json: bool,
                   config_path: str | None) -> None:
    """Run a pipeline's exact decisions over recorded responses: accuracy, cost, escalation, oracle.

    Example: cascade replay -p mmlu -r ../shared/datasets/mmlu-oai-test.jsonl --config examples/recorded/config/cascade.toml
    """
    from cascade.recorded import load_recorded
    from cascade.tuning.replay import replay

    settings = load(config_path, "")
    try:
        pipe = settings.pipeline(pipeline)
        data = load_recorded(recorded, on_bad_row=_warn)
        result = replay(settings, pipe, data, _rows(data, split))
    except CascadeError as e:
        raise click.ClickException(str(e)) from None
    for note in result.report.get("left_out", []):
        _warn(note)
    if out:
        _write(Path(out), b"".join(orjson.dumps(r) + b"\n" for r in result.records))
    if as_json:
        click.echo(orjson.dumps(result.report).decode())
    else:
        click.echo(format_report(result.report, f"replay of pipeline {pipeline} on {recorded}"), err=True)


@click.command("calibrate")
@click.option("--pipeline", "-p", help="Pipeline name (a file in pipelines/).")
@click.option("--recorded", "-r", type=click.Path(exists=True, dir_okay=False),
              help="Recorded responses (JSONL in the ../shared/datasets format).")
@split_option
@click.option("--from-ledger", "from_ledger", metavar="PIPELINE",
              help="Fit on the ledger's shadow pairs of this pipeline (no labels: agreement with the last tier).")
@click.option("--label-free", is_flag=True,
              help="Fit on agreement with the last tier's answer even where rows carry labels.")
@click.option("--target", default="drop=0.01", show_default=True,
              help="drop=X (accuracy at most X below the last tier's), accuracy=X or error=X.")
@click.option("--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=CONFIDENCE_DEFAULT,
              show_default=True,
              help="How sure the target must be on the training rows (one-sided normal bounds).")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Calibration file to write (default: the one the pipeline's verifiers name).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON line on stdout.")
@click.option("--progress/--no-progress", default=None,
              help="Show the steps on stderr while fitting (default: when stderr is a terminal).")
@config_option
def calibrate_command(pipeline: str | None, recorded: str | None, split: str | None, from_ledger: str | None,
                      label_free: bool, target: str, confidence: float, out: str | None, as_json: bool,
                      progress: bool | None, config_path: str | None) -> None:
    """Fit calibration maps and the cheapest sub-ladder and thresholds that meet a quality target.

    Rows without labels (no `correct`, no `gold`) are fitted on agreement with the last tier's answer.

    Example: cascade calibrate -p mmlu -r ../shared/datasets/mmlu-oai-train.jsonl --target drop=0.01 --config examples/recorded/config/cascade.toml
    """
    from cascade.recorded import load_recorded
    from cascade.tuning.calibrate import Target, calibrate, calibration_paths, write_placeholders
    from cascade.tuning.profile import scored_index
    from cascade.verifiers.calibration import dump_calibration

    if (recorded is None) == (from_ledger is None):
        raise click.UsageError("give --recorded FILE (with --pipeline) or --from-ledger PIPELINE")
    pipeline = pipeline or from_ledger
    if pipeline is None:
        raise click.UsageError("give --pipeline")
    try:
        goal = Target.parse(target, confidence)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--target") from None
    try:   # the chains are not built: this pipeline's calibration file (or another's) may not exist yet
        config_dir = find_config(config_path).parent
        settings = load_settings(config_path, overrides={"redis.url": ""}, check_verifiers=False)
        pipe = settings.pipeline(pipeline)
    except CascadeError as e:
        raise click.ClickException(str(e)) from None
    scored = [t for t in pipe.full_ladder if scored_index(pipe.verifier_specs(t)) is not None]
    if not scored:
        raise click.ClickException(f"pipeline {pipeline} has no logprob or self_consistency verifier to calibrate")
    pipeline_file = config_dir / "pipelines" / f"{pipeline}.toml"
    named = calibration_paths(pipeline_file)
    if out is None and len(named) != 1:
        raise click.UsageError(f"pipeline {pipeline}: its score verifiers name {len(named)} calibration files; "
                               "give --out")
    path = Path(out) if out else config_dir / next(iter(named))
    try:
        if from_ledger:
            report, data = _fit_from_ledger(settings, pipe, goal, path)
            _write(path, data)
            _show(report, as_json, f"calibration of {pipeline} from the ledger's shadow pairs -> {path}")
            return
        data = load_recorded(recorded, on_bad_row=_warn)
        bar = StepBar(sys.stderr.isatty() if progress is None else progress)
        try:
            result = calibrate(settings, pipe, data, goal, _rows(data, split), label_free=label_free, progress=bar)
        finally:
            bar.close()
    except CascadeError as e:
        raise click.ClickException(str(e)) from None
    for note in result.report.get("left_out", []):
        _warn(note)
    if not result.entries:
        raise click.ClickException(f"{recorded}: no row gives {', '.join(scored)} a score (a finite logprob, or "
                                   "samples to agree) that passed the checks before it: nothing to calibrate")
    meta = {"method": "isotonic", **{k: result.report[k] for k in ("pipeline", "target", "confidence", "rows")},
            "labels": result.report["labels"], "fitted_on": recorded, "split": split,
            **result.meta()}   # `cascade audit`, the alert baselines and `cascade estimate` read its "expected"
    _write(path, dump_calibration(result.entries, meta))
    write_placeholders(config_dir, pipeline_file)    # other files it names: loadable, escalating everything
    result.report["calibration"] = str(path)
    if result.report.get("warning") and as_json:
        click.echo(f"WARNING: {result.report['warning']}", err=True)
    _show(result.report, as_json, f"calibration of {pipeline} on {recorded} -> {path}")


def _show(report: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(orjson.dumps(report).decode())
    elif "cost_ratio" in report:
        click.echo(format_report(report, title), err=True)
    else:
        click.echo(title, err=True)
        for tier, pairs in report["pairs"].items():
            chosen = report["thresholds"][tier]
            click.echo(f"  {tier}: {pairs} shadow pairs, {report['agreement'][tier]:.1%} agree with the last tier; "
                       f"threshold {chosen['threshold']:g} keeps {chosen['accepted_share_of_pairs']:.1%} of them",
                       err=True)


def _fit_from_ledger(settings: Any, pipe: Any, goal: Any, path: Path) -> tuple[dict[str, Any], bytes]:
    """The report and calibration file text fitted on the ledger's shadow pairs (other entries kept)."""
    from cascade.ledger.database import LedgerError, open_ledger
    from cascade.tuning.label_free import fit_shadow_pairs
    from cascade.tuning.profile import scored_index
    from cascade.tuning.target import lower_bound
    from cascade.verifiers.calibration import dump_calibration, load_calibration

    scored = {}
    for tier in pipe.ladder[:-1]:
        specs = pipe.verifier_specs(tier)
        index = scored_index(specs)
        if index is not None:
            scored[tier] = (specs[index]["name"], specs[index].get("key") or tier)
    if not scored:
        raise click.ClickException(f"pipeline {pipe.name} has no logprob or self_consistency verifier below its "
                                   "last tier to calibrate")
    try:
        ledger = open_ledger(settings)
        ledger.migrate()          # a ledger never written to has no tables yet: it then holds no pairs
        pairs = ledger.shadow_pairs(pipe.name)
    except LedgerError as e:
        raise click.ClickException(f"ledger: {e}") from None
    wanted = 1 - goal.value if goal.kind == "drop" else goal.value
    entries, report = fit_shadow_pairs(pairs, pipe, scored, wanted, goal.confidence, lower_bound)
    existing, meta = {}, {}
    if path.exists():
        try:
            existing = load_calibration(path)
            meta = {k: v for k, v in orjson.loads(path.read_bytes()).items() if k not in ("format", "tiers")}
        except ValueError:
            existing = {}
    report.update({"pipeline": pipe.name, "target": f"{goal.kind}={goal.value:g}", "confidence": goal.confidence,
                   "labels": "agreement with the last tier (shadow pairs)", "calibration": str(path)})
    meta.update({"method": "isotonic", "pipeline": pipe.name, "labels": report["labels"], "fitted_on": "ledger"})
    return report, dump_calibration({**existing, **entries}, meta)
