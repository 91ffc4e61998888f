"""The recorded sets of a datasets folder, and a pipeline for a set no example pipeline was written for.

A set is `NAME-train.jsonl` + `NAME-test.jsonl`, or one `NAME.jsonl` whose rows carry `split`.
The four sets of ../shared/datasets run the pipelines in examples/recorded/config; any other set
gets one derived from its training rows alone, by the same rules a person would follow:

- ladder: the cost/accuracy frontier on the training rows, cheapest first, the most accurate last
  (a model is skipped when one at most 5% dearer is more accurate, or a cheaper one is as accurate);
  without labels every model, cheapest first; without a signal, the cheapest sub-ladder whose static
  checks alone meet the target on the training rows (at worst the last tier alone);
- output: `label` when the answers are short labels (multiple choice; the gold answers name them,
  else the short answers common enough to be labels), else `text`;
- checks: truncation and the label set (for text, refusal markers only where the answers they
  match are wrong more often than the rest on the training rows); then the signal the cheaper
  tiers recorded: `logprob` where they have answer logprobs, `self_consistency` over the recorded
  samples (the answer is a sample's last line) where they have samples; calibrated by `cascade
  calibrate` on the training rows.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cascade.recorded import RecordedSet

LABEL_MAX_CHARS = 3         # "A", "B)", "yes": longer answers are free text
LABEL_MAX_DISTINCT = 26
LABEL_SHARE = 0.9           # this share of all recorded answers must be labels for a label pipeline
LABEL_MIN_SHARE = 0.02      # without gold, an answer is a label when this share of the short answers give it
COST_TIE = 0.05             # a model at most 5% dearer and more accurate dominates a cheaper one
SIGNAL_SHARE = 0.9          # a tier uses a signal that this share of its training rows recorded
DEFAULT_TARGET = "drop=0.01"
LAST_LINE = r"(?m)^[^\S\n]*(\S[^\n]*?)\s*\Z"   # a sample's answer: its last non-empty line (linear time)


@dataclass(frozen=True)
class RecordedBenchmark:
    """One recorded set: its files, the pipeline that runs it, and the quality target to fit for."""

    name: str
    pipeline: str | None           # None: derive one from the training rows
    train: str                     # file name; with `split_field`, the same file as test
    test: str
    target: str | None = DEFAULT_TARGET   # None: nothing to fit (static checks only)
    split_field: bool = False      # rows carry "split": train | test


#: the sets with a pipeline in examples/recorded/config, and the targets the issue set for them
KNOWN = {
    "mmlu-oai": ("mmlu", "drop=0.01"),
    "medmcqa-oai": ("medmcqa", "drop=0.01"),
    "date-mot": ("date-mot", "drop=0.02"),
    "gsm8k-routellm": ("gsm8k", None),
}


def discover(datasets: Path) -> list[RecordedBenchmark]:
    """Every set in `datasets`, sorted by name: train/test file pairs, then single files with a split field."""
    files = {p.name for p in datasets.glob("*.jsonl")}
    sets = []
    for name in sorted(files):
        stem = name[: -len(".jsonl")]
        if stem.endswith("-train") and f"{stem[:-6]}-test.jsonl" in files:
            sets.append(_bench(stem[:-6], name, f"{stem[:-6]}-test.jsonl", split_field=False))
        elif not stem.endswith(("-train", "-test")):
            sets.append(_bench(stem, name, name, split_field=True))
    return sets


def _bench(name: str, train: str, test: str, split_field: bool) -> RecordedBenchmark:
    pipeline, target = KNOWN.get(name, (None, DEFAULT_TARGET))
    return RecordedBenchmark(name, pipeline, train, test, target, split_field)


def derive_pipeline(name: str, train: RecordedSet, config_dir: Path,
                    ladder: Sequence[str] | None = None) -> tuple[str, bool]:
    """Write tiers, prices and a pipeline for `train`'s models into `config_dir` (the ladder of these models
    when given, else the frontier's); (pipeline name, has a signal)."""
    models = train.models
    cost = {m: _mean(r.responses[m].cost_usd for r in train.rows if m in r.responses) for m in models}
    labelled = any(r.gold is not None or any(a.correct is not None for a in r.responses.values())
                   for r in train.rows)
    accuracy = {m: _mean(float(bool(r.responses[m].answer_correct(r.responses[m].text, r.gold)))
                         for r in train.rows if m in r.responses) for m in models}
    if ladder is None:   # without labels the dearest model is taken as the strongest (label-free tuning's view)
        ladder = frontier(models, cost, accuracy) if labelled else sorted(models, key=lambda m: cost[m])
    ladder = list(ladder)
    tiers = _ensure_tiers(config_dir / "cascade.toml", ladder, train)
    labels = _labels(train, ladder)
    static = ['{ name = "truncation" }']
    if labels:
        static.append('{ name = "choices" }')
    elif _refusals_mark_errors(train, ladder[:-1]):
        static.append('{ name = "refusal" }')
    calibration = f"calibration/{name}.json"
    chains, scored = {}, False
    for model in ladder[:-1]:
        signal = _signal(train, model, calibration)
        scored = scored or signal is not None
        chains[tiers[model]] = static + ([signal] if signal else [])
    chains[tiers[ladder[-1]]] = static
    lines = [f"# Derived from the training rows of {train.source} by benchmarks/recorded_sets.py",
             f'output = "{"label" if labels else "text"}"']
    if labels:
        lines.append("labels = [" + ", ".join(_toml_str(label) for label in labels) + "]")
    lines += ["ladder = [" + ", ".join(_toml_str(tiers[m]) for m in ladder) + "]",
              'on_last_failure = "accept_flagged"', "", "[prompt]", 'system = "{system}"', 'user = "{user}"', "",
              "[verifiers]"]
    lines += [f"{_toml_str(tier)} = [{', '.join(chain)}]" for tier, chain in chains.items()]
    pipeline = f"auto-{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}"
    (config_dir / "pipelines" / f"{pipeline}.toml").write_text("\n".join(lines) + "\n")
    return pipeline, scored


def static_ladder(config_dir: Path, pipeline: str, train: RecordedSet, target: str) -> list[str]:
    """The models of the cheapest sub-ladder of a pipeline without a signal that meets `target` on the training
    rows with its static checks alone (calibrate's sub-ladder search: a tier whose checks pass wrong answers is
    dropped; at worst the last tier alone)."""
    from cascade.tuning.calibrate import Target, calibrate
    from cascade.worker.config import load_settings

    settings = load_settings(config_dir / "cascade.toml", environ={}, check_verifiers=False)
    fitted = calibrate(settings, settings.pipeline(pipeline), train, Target.parse(target), route=False)
    return [settings.tiers[tier].model for tier in fitted.report["ladder"]]


def frontier(models: Sequence[str], cost: dict[str, float], accuracy: dict[str, float]) -> list[str]:
    """The cost/accuracy frontier, cheapest first: a model stays unless another costs at most COST_TIE
    more and is more accurate (a 0.03% cheaper model 24 points worse is not a first tier, it is
    dominated), or a cheaper kept one is at least as accurate. The last is the most accurate model."""
    kept = [m for m in models
            if not any(accuracy[o] > accuracy[m] and cost[o] <= cost[m] * (1 + COST_TIE) for o in models if o != m)]
    ladder: list[str] = []
    for model in sorted(kept, key=lambda m: (cost[m], -accuracy[m])):
        if not ladder or accuracy[model] > max(accuracy[m] for m in ladder):
            ladder.append(model)
    return ladder


def _refusals_mark_errors(train: RecordedSet, models: Sequence[str]) -> bool:
    """Whether the refusal markers flag wrong answers on these rows: the answers they match are right less
    often than the rest. Where "I don't know" is usually the right answer, they would escalate good ones."""
    from cascade.verifiers.refusal import RefusalVerifier

    regex = RefusalVerifier(RefusalVerifier.Options()).regex
    from cascade.verifiers.refusal import normalize

    flagged, rest = [], []
    for row in train.rows:
        for model in models:
            response = row.responses.get(model)
            if response is None:
                continue
            right = float(bool(response.answer_correct(response.text, row.gold)))
            (flagged if regex.search(normalize(response.text)) else rest).append(right)
    return bool(flagged) and bool(rest) and _mean(flagged) < _mean(rest)


def _ensure_tiers(cascade_toml: Path, ladder: list[str], train: RecordedSet) -> dict[str, str]:
    """The tier of each model: an existing one with that model, else a new tier (and price) appended."""
    import tomllib

    config = tomllib.loads(cascade_toml.read_text())
    existing = {t["model"]: name for name, t in config.get("tiers", {}).items()}
    prices = config.get("prices", {})
    out, extra = {}, []
    for model in ladder:
        if model in existing:
            out[model] = existing[model]
            continue
        tier = "m-" + re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
        out[model] = tier
        extra += ["", f"[tiers.{_toml_str(tier)}]", 'provider = "openai"', f"model = {_toml_str(model)}",
                  "max_tokens = 1024"]
        if model not in prices:
            per_in, per_out = _fit_prices(train, model)
            extra += ["", f"[prices.{_toml_str(model)}]", f"input = {per_in!r}", f"output = {per_out!r}",
                      'source = "fitted to the recorded cost_usd"']
    if extra:
        cascade_toml.write_text(cascade_toml.read_text() + "\n".join(extra) + "\n")
    return out


def _fit_prices(train: RecordedSet, model: str) -> tuple[float, float]:
    """USD per million input and output tokens that best explain the recorded costs (least squares, >= 0)."""
    points = [(r.responses[model].input_tokens, r.responses[model].output_tokens, r.responses[model].cost_usd)
              for r in train.rows if model in r.responses]
    sxx = sum(i * i for i, _, _ in points)
    syy = sum(o * o for _, o, _ in points)
    sxy = sum(i * o for i, o, _ in points)
    sxc = sum(i * c for i, _, c in points)
    syc = sum(o * c for _, o, c in points)
    det = sxx * syy - sxy * sxy
    if det > 0:
        a, b = (sxc * syy - syc * sxy) / det, (syc * sxx - sxc * sxy) / det
        if a >= 0 and b >= 0:
            return a * 1e6, b * 1e6
    total = sum(i + o for i, o, _ in points)     # one price for every token
    per = sum(c for _, _, c in points) / total if total else 0.0
    return per * 1e6, per * 1e6


def _labels(train: RecordedSet, ladder: list[str]) -> list[str]:
    """The label set when the recorded answers are short labels, else [].

    The gold answers name the labels where the rows carry them; else the short answers common enough
    to be labels (LABEL_MIN_SHARE of them each): a stray "I" or "To" starting a sentence is not one.
    """
    answers = [r.responses[m].text.strip() for r in train.rows for m in ladder if m in r.responses]
    short = [a for a in answers if 0 < len(a) <= LABEL_MAX_CHARS]
    if not answers or len(short) < LABEL_SHARE * len(answers):
        return []
    golds = {r.gold.strip() for r in train.rows if r.gold is not None}
    if golds and all(0 < len(g) <= LABEL_MAX_CHARS for g in golds):
        distinct = sorted(golds)
    else:
        counts = Counter(short)
        distinct = sorted(a for a, c in counts.items() if c >= max(2, LABEL_MIN_SHARE * len(short)))
    return distinct if 0 < len(distinct) <= LABEL_MAX_DISTINCT else []


def _signal(train: RecordedSet, model: str, calibration: str) -> str | None:
    """The score verifier a tier's recorded responses support, as TOML, or None."""
    responses = [r.responses[model] for r in train.rows if model in r.responses]
    if sum(r.logprob is not None for r in responses) >= SIGNAL_SHARE * len(responses):
        return f'{{ name = "logprob", calibration = "{calibration}" }}'
    counts = [len(r.samples) for r in responses if len(r.samples) >= 2]
    if len(counts) >= SIGNAL_SHARE * len(responses):
        return (f'{{ name = "self_consistency", samples = {min(counts)}, pattern = {_toml_str(LAST_LINE)}, '
                f'calibration = "{calibration}" }}')
    return None


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else 0.0


def _toml_str(text: str) -> str:
    """A TOML literal string when it can be one (no quote inside), else a basic string."""
    if "'" not in text and "\n" not in text:
        return f"'{text}'"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
