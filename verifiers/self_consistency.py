"""Self-consistency: sample the tier n more times; pass when enough samples agree; the majority wins."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from pydantic import Field

from cascade.models import Attempt, Completion, Job, Usage, Verdict
from cascade.verifiers.base import OptionError, TierFacts, Verifier, VerifyContext
from cascade.verifiers.base import Options as BaseOptions
from cascade.verifiers.calibration import CalibratedDecision
from cascade.verifiers.parsing import MISSING, clip, extract_json, lookup_field, normalize_label

DEFAULT_THRESHOLD = 0.6     # without calibration: a clear majority of the samples must agree
SAMPLES_DEFAULT = 5         # enough for a majority to mean something, few enough to stay cheap
TEMPERATURE_DEFAULT = 0.7   # samples must differ for agreement to say anything


class SelfConsistencyVerifier(Verifier):
    """Samples `samples` answers in one call (parallel calls where the provider has no `n`) and votes.

    Answers are compared after extraction: `pattern` (a regex whose first group is the answer),
    `field` (a JSON field), the pipeline's labels, else the whitespace-normalised text. The share
    of samples that give the majority answer is the score; the majority's text becomes the output.
    """

    name = "self_consistency"
    cost_rank = 2

    class Options(BaseOptions):
        """How many samples, how hot, how much agreement passes, and how to read an answer."""

        samples: int = Field(default=SAMPLES_DEFAULT, ge=2, le=128)
        temperature: float = Field(default=TEMPERATURE_DEFAULT, ge=0, le=2)
        threshold: float | None = Field(default=None, ge=0, le=1)   # None: the calibration file's, else 0.6
        calibration: str | None = None      # maps agreement to P(correct), fitted by `cascade calibrate`
        key: str | None = None              # the calibration entry (default: the attempt's tier)
        pattern: str | None = None
        field: str | None = Field(default=None, min_length=1)
        include_answer: bool = False        # count the attempt's own answer as one more vote
        max_tokens: int | None = Field(default=None, ge=1)

    options: Options

    def __init__(self, options: SelfConsistencyVerifier.Options, context_dir: Path = Path(".")):
        super().__init__(options, context_dir)
        self.pattern: re.Pattern[str] | None = None
        if options.pattern is not None:
            try:
                self.pattern = re.compile(options.pattern)
            except re.error as e:
                raise OptionError("pattern", f"bad regex: {e}") from None
            if self.pattern.groups < 1:
                raise OptionError("pattern", "needs a group around the answer, e.g. 'A: (\\S+)'")
        if options.pattern is not None and options.field is not None:
            raise OptionError("field", "give `pattern` or `field`, not both")
        threshold = options.threshold if options.threshold is not None or options.calibration else DEFAULT_THRESHOLD
        try:
            self.decision = CalibratedDecision(options.calibration, options.key, threshold, context_dir)
        except ValueError as e:
            raise OptionError("calibration", str(e)) from None

    def check_tier(self, tier: TierFacts) -> str | None:
        """A calibration file must cover the tier."""
        return self.decision.problem(tier.name)

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Sample, extract, vote."""
        completion, cost, own = self._samples(ctx)
        if completion is None:
            return self.verdict(False, "misconfigured: no model handle in the verify context")
        texts = list(completion.samples or (completion.text,))
        finishes = [completion.finish_of(i) for i in range(len(texts))]
        if self.options.include_answer and not own:     # the attempt's own samples already hold its answer
            texts.insert(0, attempt.text)
            finishes.insert(0, attempt.finish_reason)
        # a sample the static checks reject (truncated, not a label...) votes for nothing and is never returned
        admissible = ctx.extra.get("admissible") or (lambda text, finish: True)
        answers = [self.extract(text, ctx) if admissible(text, finish) else None
                   for text, finish in zip(texts, finishes)]
        spent = {"cost_usd": cost, "usage": completion.usage}
        votes = Counter(a for a in answers if a is not None)
        if not votes:
            return self.verdict(False, f"no answer: none of {len(texts)} samples gave one", score=0.0, **spent)
        majority, count = votes.most_common(1)[0]     # ties: the answer seen first
        agreement = count / len(texts)
        own = self.extract(attempt.text, ctx)
        output = None if own == majority else texts[answers.index(majority)]
        passed, score, text = self.decision.decide(agreement, attempt.tier)
        what = f"{count}/{len(texts)} on {clip(majority, 40)!r}, {text}"
        return self.verdict(passed, f"agreement {what}" if passed else f"low agreement: {what}", score=score,
                            output=output, **spent)

    def _samples(self, ctx: VerifyContext) -> tuple[Completion | None, float, bool]:
        """(samples, their cost, whether they are the attempt's own): the attempt's when it has enough
        (the engine asks the tier for them; their cost is the attempt's), else a sampling call."""
        if ctx.completion is not None and len(ctx.completion.samples) >= self.options.samples:
            samples = ctx.completion.samples[: self.options.samples]
            return replace(ctx.completion, samples=samples, usage=Usage()), 0.0, True
        if ctx.call is None or ctx.request is None:
            return None, 0.0, False
        request = replace(ctx.request, n=self.options.samples, temperature=self.options.temperature, logprobs=False,
                          max_tokens=self.options.max_tokens or ctx.request.max_tokens)
        return (*ctx.call(None, request), False)

    def extract(self, text: str, ctx: VerifyContext) -> str | None:
        """The answer a sample gives, in the form votes compare; None when it gives none."""
        if self.pattern is not None:
            match = self.pattern.search(text)
            return match.group(1).strip() if match else None
        if self.options.field is not None:
            try:
                value = lookup_field(extract_json(text), self.options.field)
            except ValueError:
                return None
            return None if value is MISSING else str(value).strip().casefold()
        if ctx.output_format == "label" and ctx.labels:
            return normalize_label(text, ctx.labels)
        normalised = " ".join(text.split()).casefold()
        return normalised or None
