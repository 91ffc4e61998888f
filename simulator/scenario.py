"""A simulation scenario: which answer each prompt deserves and how each model gets it right or wrong.

Every draw is a pure function of the seed, the model, the sample or occurrence index and the
sha256 of the last user message, so tests can predict the simulator without talking to it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cascade.errors import ConfigError
from cascade.recorded import RecordedSet, load_recorded
from cascade.simulator.outcomes import SimAnswer, pick, render_answer, text_digest, unit
from cascade.simulator.schema import BatchProfile, Drift, ModelProfile, Rule, parse_document

#: the answer to a prompt no rule matches (a scenario without a catch-all rule)
FALLBACK_RULE = Rule(".*", "ok")


#: the logprob the OpenAI API sends for a token of probability ~0 (a recorded -Infinity is sent as this)
FLOOR_LOGPROB = -9999.0


@dataclass(frozen=True)
class Scenario:
    """Rules, per-model profiles and the seed; see the module docstring for determinism."""

    seed: int = 0
    rules: tuple[Rule, ...] = ()
    defaults: ModelProfile = ModelProfile()
    models: Mapping[str, ModelProfile] = field(default_factory=dict)
    source: str = "<scenario>"
    recorded: RecordedSet | None = None    # recorded answers served before any rule (`recorded = "x.jsonl"`)
    drift: tuple[Drift, ...] = ()          # outcome mixes that change from a job index on ([[drift]])
    batch: BatchProfile = field(default_factory=BatchProfile)   # how the Batch APIs behave ([batch])

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def profile(self, model: str) -> ModelProfile:
        """The model's profile; a model the scenario does not list gets [defaults], always correct."""
        return self.models.get(model, self.defaults)

    def rule_for(self, user_text: str) -> Rule:
        """The first rule matching the last user message (FALLBACK_RULE when none does)."""
        return next((rule for rule in self.rules if rule.matches(user_text)), FALLBACK_RULE)

    def outcome(self, model: str, user_text: str, sample: int = 0) -> str:
        """How `model`'s `sample`-th answer to `user_text` comes out: correct, wrong, malformed, ..."""
        drifted = next((d for d in self.drift if d.applies(model, user_text)), None)
        weights = drifted.outcome if drifted is not None else self.profile(model).outcome
        u = unit("outcome", self.seed, model, sample, text_digest(user_text))
        drawn = pick(u, weights)
        if drawn is None:  # rounding left u just past the last slot
            drawn = [name for name, p in weights if p > 0][-1]
        return drawn

    def answer(self, model: str, user_text: str, sample: int = 0, *, max_tokens: int | None = None) -> SimAnswer:
        """The exact answer the simulator gives (text, finish, outcome, logprobs, output tokens)."""
        rule = self.rule_for(user_text)
        outcome = self.outcome(model, user_text, sample)
        key = (self.seed, model, sample, text_digest(user_text))
        return render_answer(outcome, rule.answer, rule.wrong, key, max_tokens)

    def recorded_answers(self, model: str, message_texts: tuple[str, ...], n: int = 1,
                         logprobs: bool = True) -> tuple[list[SimAnswer], int] | None:
        """The recorded answers (and prompt tokens) of `model` to this exact prompt, or None to use the rules."""
        row = self.recorded.find(message_texts) if self.recorded is not None else None
        response = row.responses.get(model) if row is not None else None
        if response is None:
            return None
        completion = response.completion(n, logprobs)
        outcome = "wrong" if response.correct is False else "correct"
        texts = completion.samples or (completion.text,)
        # JSON has no -Infinity: a recorded log(0) goes over the wire as the APIs send it, -9999.0
        tokens = tuple((t.token, max(t.logprob, FLOOR_LOGPROB)) for t in completion.logprobs)
        # the recorded output tokens shared out over the samples, so the usage adds up to what was recorded
        each, extra = divmod(completion.usage.output_tokens, len(texts))
        answers = [SimAnswer(text, "stop", outcome, tokens if i == 0 else (), each + (i < extra))
                   for i, text in enumerate(texts)]
        return answers, completion.usage.input_tokens

    def injected_error(self, model: str, user_text: str, occurrence: int) -> str | None:
        """The injected error ("429", "500", "timeout") or None for the `occurrence`-th (0-based) sight."""
        u = unit("error", self.seed, model, text_digest(user_text), occurrence)
        return pick(u, self.profile(model).error_rate)

    def latency_s(self, model: str, user_text: str, occurrence: int) -> float:
        """Seconds the `occurrence`-th answer to this request takes, uniform in the model's range."""
        low, high = self.profile(model).latency_ms
        return (low + (high - low) * unit("latency", self.seed, model, text_digest(user_text), occurrence)) / 1000


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """A Scenario from TOML text; errors name `source` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: {e}") from None
    fields = parse_document(source, data)
    if fields["recorded"] is not None:
        recorded_path = Path(source).parent / fields["recorded"] if source != "<string>" else Path(fields["recorded"])
        fields["recorded"] = load_recorded(recorded_path)
    return Scenario(**fields, source=source)


def load_scenario(path: str | Path) -> Scenario:
    """A Scenario from a TOML file; unknown keys and bad values raise ConfigError naming file and key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read scenario: {e.strerror or e}") from None
    return parse_scenario(text, str(path))
