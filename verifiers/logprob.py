"""Token-logprob confidence: the answer's probability, calibrated to P(correct), against a threshold."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from cascade.models import Attempt, Job, TokenLogprob, Verdict
from cascade.verifiers.base import OptionError, TierFacts, Verifier, VerifyContext
from cascade.verifiers.base import Options as BaseOptions
from cascade.verifiers.calibration import CalibratedDecision
from cascade.verifiers.parsing import normalize_label


class LogprobVerifier(Verifier):
    """Passes when the (calibrated) confidence of the answer reaches the threshold."""

    name = "logprob"
    cost_rank = 1

    class Options(BaseOptions):
        """`field` scores one JSON field's value; `aggregate` scores free text (mean or min token probability).

        `calibration` is a file from `cascade calibrate` (relative to the config dir), read under
        `key` (default: the attempt's tier); `threshold` overrides the threshold stored there.
        """

        field: str | None = Field(default=None, min_length=1)
        aggregate: Literal["mean", "min"] = "mean"
        calibration: str | None = None
        key: str | None = None
        threshold: float | None = Field(default=None, ge=0, le=1)

    options: Options

    def __init__(self, options: LogprobVerifier.Options, context_dir: Path = Path(".")):
        super().__init__(options, context_dir)
        try:
            self.decision = CalibratedDecision(options.calibration, options.key, options.threshold, context_dir)
        except ValueError as e:
            raise OptionError("calibration" if options.calibration else "threshold", str(e)) from None

    def check_tier(self, tier: TierFacts) -> str | None:
        """The tier must give logprobs, and a calibration file must cover it."""
        if not tier.logprobs:
            return (f"the logprob verifier needs token logprobs, which tier '{tier.name}' ({tier.provider}) "
                    "does not provide")
        return self.decision.problem(tier.name)

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Score the answer, calibrate, compare."""
        tokens = ctx.completion.logprobs if ctx.completion is not None else ()
        if not tokens:
            return self.verdict(False, "no logprobs: the provider returned none")
        passed, score, text = self.decision.decide(self.raw_score(attempt.text, tokens, ctx), attempt.tier)
        return self.verdict(passed, f"confidence {text}" if passed else f"low confidence: {text}", score=score)

    def raw_score(self, text: str, tokens: tuple[TokenLogprob, ...], ctx: VerifyContext) -> float:
        """The probability of the answer tokens (label or field), else the mean / min token probability."""
        span = self._answer_span(text, ctx)
        if span is not None:
            chosen = _overlapping(tokens, *span)
            if chosen:
                return math.exp(sum(t.logprob for t in chosen))
        values = [t.logprob for t in tokens]
        return math.exp(min(values) if self.options.aggregate == "min" else sum(values) / len(values))

    def _answer_span(self, text: str, ctx: VerifyContext) -> tuple[int, int] | None:
        """Where in `text` the answer is: the JSON field's value, or the label; None for free text."""
        if self.options.field is not None:
            key = re.escape(self.options.field.rsplit(".", 1)[-1])
            match = re.search(rf'"{key}"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|([^,}}\]\s]+))', text)
            if match is None:
                return None
            return match.span(1) if match.group(1) is not None else match.span(2)
        if ctx.output_format == "label" and ctx.labels:
            label = normalize_label(text, ctx.labels)
            if label is None:
                return None
            match = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE)
            return match.span() if match else None
        return None


def _overlapping(tokens: tuple[TokenLogprob, ...], start: int, end: int) -> list[TokenLogprob]:
    """The tokens whose characters overlap [start, end) of the text they spell."""
    out, pos = [], 0
    for token in tokens:
        stop = pos + len(token.token)
        if stop > start and pos < end:
            out.append(token)
        pos = stop
    return out
