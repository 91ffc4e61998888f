"""Bounds on the answer's length in characters and words."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, StrictInt

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import OptionError, Verifier, VerifyContext
from cascade.verifiers.base import Options as BaseOptions


class LengthVerifier(Verifier):
    """Fails when the stripped answer is shorter or longer than configured."""

    name = "length"

    class Options(BaseOptions):
        """Every bound is optional; characters count the stripped text, words split on whitespace."""

        min_chars: StrictInt | None = Field(default=None, ge=0)
        max_chars: StrictInt | None = Field(default=None, ge=0)
        min_words: StrictInt | None = Field(default=None, ge=0)
        max_words: StrictInt | None = Field(default=None, ge=0)

    options: Options

    def __init__(self, options: LengthVerifier.Options, context_dir: Path = Path(".")):
        super().__init__(options, context_dir)
        for unit in ("chars", "words"):
            low, high = getattr(options, f"min_{unit}"), getattr(options, f"max_{unit}")
            if low is not None and high is not None and low > high:
                raise OptionError(f"max_{unit}", f"{high} is below min_{unit} {low}")

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Pass when both counts are within their bounds."""
        text = attempt.text.strip()
        o = self.options
        for unit, count, low, high in (("chars", len(text), o.min_chars, o.max_chars),
                                       ("words", len(text.split()), o.min_words, o.max_words)):
            if low is not None and count < low:
                return self.verdict(False, f"too short: {count} < {low} {unit}")
            if high is not None and count > high:
                return self.verdict(False, f"too long: {count} > {high} {unit}")
        return self.verdict(True)
