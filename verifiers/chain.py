"""An ordered list of verifiers run cheapest first, stopping at the first failure."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import Verifier, VerifyContext

log = logging.getLogger("cascade.verifiers")


class VerifierChain:
    """Runs its verifiers by cost rank (stable: config order among equals) until one fails."""

    def __init__(self, verifiers: Iterable[Verifier]):
        self.verifiers: tuple[Verifier, ...] = tuple(sorted(verifiers, key=lambda v: v.cost_rank))

    def __len__(self) -> int:
        """How many verifiers the chain holds."""
        return len(self.verifiers)

    @property
    def wants_logprobs(self) -> bool:
        """Whether a check reads token logprobs, so the tier must be asked for them."""
        return any(v.name == "logprob" for v in self.verifiers)

    @property
    def sampling(self) -> tuple[int, float] | None:
        """(n, temperature) when a check votes over samples of the tier's answer (the tier answers with
        them in the same call), else None."""
        sampler = next((v for v in self.verifiers if v.name == "self_consistency"), None)
        return (sampler.options.samples, sampler.options.temperature) if sampler is not None else None

    def run(self, job: Job, attempt: Attempt, ctx: VerifyContext) -> tuple[Verdict, ...]:
        """The verdicts up to and including the first failure (all of them when every one passes)."""
        verdicts: list[Verdict] = []
        for verifier in self.verifiers:
            verdict = self._check(verifier, job, attempt, ctx)
            verdicts.append(verdict)
            if not verdict.passed:
                break
        return tuple(verdicts)

    @staticmethod
    def _check(verifier: Verifier, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """One verifier's verdict; a crash becomes a failed verdict carrying the exception, and is logged."""
        try:
            return verifier.check(job, attempt, ctx)
        except Exception as e:  # a buggy check must reject this attempt, not kill the job or the worker
            log.warning("verifier %s crashed on job %s", verifier.name, job.id, exc_info=True)
            return Verdict(verifier.name, False, f"error: {type(e).__name__}: {e}")
