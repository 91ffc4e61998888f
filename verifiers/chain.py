"""An ordered list of verifiers run cheapest first, stopping at the first failure."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from cascade.models import Attempt, Job, Verdict
from cascade.verifiers.base import Verifier, VerifyContext

log = logging.getLogger("cascade.verifiers")


def _finish_of(ctx: VerifyContext, text: str) -> str:
    """The finish reason of the sample with this text (the first choice's when it is not a sample)."""
    completion = ctx.completion
    if completion is None:
        return "stop"
    samples = completion.samples or (completion.text,)
    return completion.finish_of(samples.index(text)) if text in samples else completion.finish_reason


def _as_answer(attempt: Attempt, ctx: VerifyContext, text: str, finish: str) -> tuple[Attempt, VerifyContext]:
    """The attempt and context as if `text` (ended by `finish`) were the answer: what later checks judge.
    Its token logprobs are unknown (they belong to the first choice)."""
    completion = ctx.completion
    if completion is not None and text != completion.text:
        completion = replace(completion, text=text, finish_reason=finish, logprobs=())
    return (replace(attempt, text=text, finish_reason=finish),
            replace(ctx, completion=completion, extra=ctx.extra))


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
        """The verdicts up to and including the first failure (all of them when every one passes).

        A verifier that replaces the answer (self-consistency's majority) may only pick a sample that
        the static checks before it pass (`ctx.extra["admissible"](text, finish_reason)`), and every
        check after it judges the answer it returns, not the first choice.
        """
        verdicts: list[Verdict] = []
        for position, verifier in enumerate(self.verifiers):
            static = [v for v in self.verifiers[:position] if v.cost_rank == 0]
            ctx.extra["admissible"] = lambda text, finish, static=static, attempt=attempt, ctx=ctx: all(
                self._check(v, job, *_as_answer(attempt, ctx, text, finish)).passed for v in static)
            verdict = self._check(verifier, job, attempt, ctx)
            verdicts.append(verdict)
            if not verdict.passed:
                break
            if verdict.output is not None and verdict.output != attempt.text:
                finish = _finish_of(ctx, verdict.output)
                attempt, ctx = _as_answer(attempt, ctx, verdict.output, finish)
        ctx.extra.pop("admissible", None)
        return tuple(verdicts)

    @staticmethod
    def _check(verifier: Verifier, job: Job, attempt: Attempt, ctx: VerifyContext) -> Verdict:
        """One verifier's verdict; a crash becomes a failed verdict carrying the exception, and is logged."""
        try:
            return verifier.check(job, attempt, ctx)
        except Exception as e:  # a buggy check must reject this attempt, not kill the job or the worker
            log.warning("verifier %s crashed on job %s", verifier.name, job.id, exc_info=True)
            return Verdict(verifier.name, False, f"error: {type(e).__name__}: {e}")
