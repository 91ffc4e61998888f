"""The verifier interface: options declared as a pydantic model, one `check` method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from cascade.models import Attempt, Completion, CompletionRequest, Job, Verdict


class OptionError(ValueError):
    """An option value that validates as a type but cannot be used (bad regex, missing file).

    Raised by a verifier's constructor; the registry turns it into a ConfigError naming the key.
    """

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class Options(BaseModel):
    """Base of every verifier's options: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: how a verifier calls a model: (tier name or None for the attempt's own tier, request) -> (completion, cost USD)
ModelCall = Callable[[str | None, CompletionRequest], tuple[Completion, float]]


@dataclass(frozen=True)
class VerifyContext:
    """What a verifier may use besides the job and the attempt.

    `completion` is the raw provider answer (logprobs, samples, finish_reason) and `request` the
    request that produced it; `call(tier, request)` calls a model through the engine (limiter,
    retries, the tier's model and timeout) and returns the completion with its cost in USD: None
    is the attempt's own tier. It raises a `worker.errors.ProviderError` when the call fails.
    `output_format` and `labels` come from the pipeline; `config_dir` resolves relative paths.
    """

    completion: Completion | None = None
    output_format: str = "text"
    labels: tuple[str, ...] = ()
    config_dir: Path = Path(".")
    request: CompletionRequest | None = None
    call: ModelCall | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TierFacts:
    """What config loading tells a verifier about one tier it will run on."""

    name: str
    provider: str                       # "openai" | "anthropic" | ...
    logprobs: bool                      # the provider can return token logprobs
    tiers: tuple[str, ...] = ()         # every configured tier (a judge names one)


class Verifier:
    """Base class: subclasses set `name`, `Options`, and implement `check`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    #: relative cost rank; chains run cheapest first (free checks 0, logprob 1, samples 2, judge 3)
    cost_rank: ClassVar[int] = 0

    def __init__(self, options: Options, context_dir: Path = Path(".")):
        self.options = options
        self.context_dir = context_dir

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Judge one attempt of one job."""
        raise NotImplementedError

    def check_tier(self, tier: TierFacts) -> str | None:
        """The problem running on `tier` would have, checked when config loads; None when it fits."""
        return None

    def verdict(self, passed: bool, reason: str = "", score: float | None = None, **kw: Any) -> Verdict:
        """A verdict signed with this verifier's name."""
        return Verdict(self.name, passed, reason, score, **kw)
