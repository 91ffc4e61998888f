"""The scenario file's parts as frozen dataclasses, and their validation from parsed TOML."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cascade.errors import ConfigError
from cascade.simulator.outcomes import OUTCOMES

#: injected error kinds, in the order their probabilities are stacked
ERROR_KINDS = ("429", "500", "timeout")
_PROFILE_KEYS = ("latency_ms", "error_rate", "retry_after_s", "timeout_s", "rpm", "tpm", "context_window")
_MODEL_KEYS = ("outcome", *_PROFILE_KEYS)
_TOP_KEYS = ("seed", "description", "rules", "defaults", "models", "recorded", "drift", "batch")
_BATCH_KEYS = ("delay_s", "error_rate", "expire_next")
_RULE_KEYS = ("match", "answer", "wrong")
_DRIFT_KEYS = ("model", "index", "from", "outcome")
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Rule:
    """How a prompt's correct answer is derived: the first rule whose regex finds a match wins."""

    match: str
    answer: str
    wrong: tuple[str, ...] = ()
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(self.match))

    def matches(self, text: str) -> bool:
        """Whether this rule applies to a user message."""
        return self.pattern.search(text) is not None


@dataclass(frozen=True)
class Drift:
    """A model whose outcome mix changes from a known job on: the job's index is read from its prompt
    (the first group of `index`), so the change point is exact whatever the order calls arrive in."""

    model: str
    index: str                  # a regex whose first group is the job's index, e.g. 'Ticket #(\\d+)'
    start: int                  # jobs whose index is at least this get `outcome`
    outcome: tuple[tuple[str, float], ...]
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(self.index))

    def applies(self, model: str, text: str) -> bool:
        """Whether this drift changes `model`'s answer to this user message."""
        if model != self.model:
            return False
        found = self.pattern.search(text)
        return found is not None and int(found.group(1)) >= self.start


@dataclass(frozen=True)
class ModelProfile:
    """How one model behaves: outcome mix, latency, injected errors, limits and context window."""

    outcome: tuple[tuple[str, float], ...] = (("correct", 1.0),)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    error_rate: tuple[tuple[str, float], ...] = tuple((kind, 0.0) for kind in ERROR_KINDS)
    retry_after_s: float = 1.0
    timeout_s: float = 30.0
    rpm: int = 0               # requests per rolling minute; 0 = unlimited
    tpm: int = 0               # prompt + max_tokens per rolling minute; 0 = unlimited
    context_window: int = 0    # prompt tokens; 0 = unlimited


@dataclass(frozen=True)
class BatchProfile:
    """How the Batch APIs behave ([batch]); POST /control changes the live copy at run time."""

    delay_s: float = 1.0      # a batch stays in progress this long: short enough for tests, long enough to poll
    error_rate: float = 0.0   # share of lines answered with a server error; 0 so batches match live calls
    expire_next: int = 0      # the next this many batches created expire half done; 0 = none do


class _Reader:
    """Validation helpers whose errors name the file and the dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {message}")

    def table(self, value: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, "must be a table")
        for key in value:
            if key not in allowed:
                raise self.fail(f"{path}.{key}" if path else key, "unknown key")
        return value

    def number(self, value: Any, path: str, low: float = 0.0, high: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(path, "must be a number")
        if not low <= value <= high:
            raise self.fail(path, f"must be between {low:g} and {high:g}")
        return float(value)

    def integer(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(path, "must be a non-negative integer")
        return value

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, "must be a string")
        return value

    def probabilities(self, value: Any, path: str, names: tuple[str, ...]) -> dict[str, float]:
        table = self.table(value, path, names)
        return {name: self.number(p, f"{path}.{name}", 0.0, 1.0) for name, p in table.items()}


def parse_rules(reader: _Reader, value: Any) -> tuple[Rule, ...]:
    """The [[rules]] array."""
    if not isinstance(value, list):
        raise reader.fail("rules", "must be an array of tables ([[rules]])")
    rules = []
    for index, item in enumerate(value):
        path = f"rules[{index}]"
        table = reader.table(item, path, _RULE_KEYS)
        for required in ("match", "answer"):
            if required not in table:
                raise reader.fail(f"{path}.{required}", "missing")
        match = reader.text(table["match"], f"{path}.match")
        try:
            re.compile(match)
        except re.error as e:
            raise reader.fail(f"{path}.match", f"bad regex: {e}") from None
        wrong = table.get("wrong", [])
        if not isinstance(wrong, list):
            raise reader.fail(f"{path}.wrong", "must be an array of strings")
        wrong_texts = tuple(reader.text(w, f"{path}.wrong[{i}]") for i, w in enumerate(wrong))
        rules.append(Rule(match, reader.text(table["answer"], f"{path}.answer"), wrong_texts))
    return tuple(rules)


def _outcome_mix(reader: _Reader, value: Any, path: str) -> tuple[tuple[str, float], ...]:
    weights = reader.probabilities(value, path, OUTCOMES)
    total = sum(weights.values())
    if abs(total - 1.0) > _TOLERANCE:
        raise reader.fail(path, f"probabilities sum to {total:g}, not 1")
    return tuple((name, weights[name]) for name in OUTCOMES if name in weights)


def parse_drift(reader: _Reader, value: Any) -> tuple[Drift, ...]:
    """The [[drift]] array: outcome mixes that replace a model's from a job index on."""
    if not isinstance(value, list):
        raise reader.fail("drift", "must be an array of tables ([[drift]])")
    drifts = []
    for i, item in enumerate(value):
        path = f"drift[{i}]"
        table = reader.table(item, path, _DRIFT_KEYS)
        for required in _DRIFT_KEYS:
            if required not in table:
                raise reader.fail(f"{path}.{required}", "missing")
        index = reader.text(table["index"], f"{path}.index")
        try:
            if re.compile(index).groups < 1:
                raise reader.fail(f"{path}.index", "needs a group that captures the job's index")
        except re.error as e:
            raise reader.fail(f"{path}.index", f"bad regex: {e}") from None
        drifts.append(Drift(reader.text(table["model"], f"{path}.model"), index,
                            reader.integer(table["from"], f"{path}.from"),
                            _outcome_mix(reader, table["outcome"], f"{path}.outcome")))
    return tuple(drifts)


def parse_profile(reader: _Reader, value: Any, path: str, base: ModelProfile, *, model: bool) -> ModelProfile:
    """A [defaults] table (model=False) or a [models."name"] table layered over `base`."""
    table = reader.table(value, path, _MODEL_KEYS if model else _PROFILE_KEYS)
    changes: dict[str, Any] = {}
    if "outcome" in table:
        changes["outcome"] = _outcome_mix(reader, table["outcome"], f"{path}.outcome")
    if "latency_ms" in table:
        span = table["latency_ms"]
        if not isinstance(span, list) or len(span) != 2:
            raise reader.fail(f"{path}.latency_ms", "must be [min, max] in milliseconds")
        low, high = (reader.number(v, f"{path}.latency_ms[{i}]") for i, v in enumerate(span))
        if low > high:
            raise reader.fail(f"{path}.latency_ms", "min is above max")
        changes["latency_ms"] = (low, high)
    if "error_rate" in table:
        rates = dict(base.error_rate)
        rates.update(reader.probabilities(table["error_rate"], f"{path}.error_rate", ERROR_KINDS))
        total = sum(rates.values())
        if total > 1.0 + _TOLERANCE:
            raise reader.fail(f"{path}.error_rate", f"probabilities sum to {total:g}, more than 1")
        changes["error_rate"] = tuple((kind, rates[kind]) for kind in ERROR_KINDS)
    for key in ("retry_after_s", "timeout_s"):
        if key in table:
            changes[key] = reader.number(table[key], f"{path}.{key}")
    for key in ("rpm", "tpm", "context_window"):
        if key in table:
            changes[key] = reader.integer(table[key], f"{path}.{key}")
    return replace(base, **changes)


def parse_batch(reader: _Reader, value: Any) -> BatchProfile:
    """The [batch] table."""
    table = reader.table(value, "batch", _BATCH_KEYS)
    changes: dict[str, Any] = {}
    if "delay_s" in table:
        changes["delay_s"] = reader.number(table["delay_s"], "batch.delay_s")
    if "error_rate" in table:
        changes["error_rate"] = reader.number(table["error_rate"], "batch.error_rate", 0.0, 1.0)
    if "expire_next" in table:
        changes["expire_next"] = reader.integer(table["expire_next"], "batch.expire_next")
    return replace(BatchProfile(), **changes)


def parse_document(source: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validated fields of a Scenario (seed, rules, defaults, models, batch, ...) from a parsed TOML document."""
    reader = _Reader(source)
    reader.table(data, "", _TOP_KEYS)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise reader.fail("seed", "must be an integer")
    if "description" in data:
        reader.text(data["description"], "description")
    recorded = reader.text(data["recorded"], "recorded") if "recorded" in data else None
    rules = parse_rules(reader, data.get("rules", []))
    defaults = parse_profile(reader, data.get("defaults", {}), "defaults", ModelProfile(), model=False)
    models_table = data.get("models", {})
    if not isinstance(models_table, Mapping):
        raise reader.fail("models", "must be a table")
    models = {
        name: parse_profile(reader, value, f"models.{name}", defaults, model=True)
        for name, value in models_table.items()
    }
    drift = parse_drift(reader, data.get("drift", []))
    batch = parse_batch(reader, data.get("batch", {}))
    return {"seed": seed, "rules": rules, "defaults": defaults, "models": models, "recorded": recorded,
            "drift": drift, "batch": batch}
