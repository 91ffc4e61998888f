"""The verifier interface: options declared as a pydantic model, one `check` method."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from worker.models import Attempt, Completion, Job, Verdict


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


@dataclass(frozen=True)
class VerifyContext:
    """What a verifier may use besides the job and the attempt.

    `completion` is the raw provider answer (logprobs, samples, finish_reason);
    `call_tier(name, request)` calls another tier's model (judge) and returns a Completion;
    `output_format` and `labels` come from the pipeline; `config_dir` resolves relative paths.
    """

    completion: Completion | None = None
    output_format: str = "text"
    labels: tuple[str, ...] = ()
    config_dir: Path = Path(".")
    call_tier: Callable[..., Completion] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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

    def verdict(self, passed: bool, reason: str = "", score: float | None = None, **kw: Any) -> Verdict:
        """A verdict signed with this verifier's name."""
        return Verdict(self.name, passed, reason, score, **kw)
