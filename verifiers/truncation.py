"""Reject answers cut off at max_tokens: a truncated answer is incomplete even when it parses."""

from __future__ import annotations

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import Verifier, VerifyContext

_TRUNCATED = ("length", "max_tokens")


class TruncationVerifier(Verifier):
    """Fails when generation stopped at the token limit."""

    name = "truncation"

    def check(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """Pass unless the completion or the attempt says it was cut at max_tokens."""
        truncated = (ctx.completion is not None and ctx.completion.truncated) or attempt.finish_reason in _TRUNCATED
        return self.verdict(False, "truncated at max_tokens") if truncated else self.verdict(True)
