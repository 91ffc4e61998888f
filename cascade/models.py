"""Value objects that travel between producer, engine, providers and verifiers.

All are frozen and JSON-safe through `to_dict` / `from_dict`, so a Celery message or a
result record carries plain values, never live objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """How a job ended: the `status` of its result record."""

    ACCEPTED = "accepted"                        # a tier's answer passed its checks
    ACCEPTED_UNVERIFIED = "accepted_unverified"  # the last tier failed its checks; the pipeline keeps it, flagged
    FAILED = "failed"                            # no usable answer (the reason says why)
    BUDGET_EXHAUSTED = "budget_exhausted"        # the next call did not fit the batch budget
    CANCELLED = "cancelled"                      # `cascade cancel` stopped the batch before this job's next call


@dataclass(frozen=True, slots=True)
class Job:
    """One input row: its id and the fields that fill the prompt templates."""

    id: str
    fields: dict[str, Any]
    line: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call consumed, as the provider reported them."""

    input_tokens: int = 0       # billed at the full input price (cached tokens excluded)
    output_tokens: int = 0
    cached_tokens: int = 0      # billed at the cached-input price

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
        )

    @property
    def prompt_tokens(self) -> int:
        """All tokens of the prompt, cached or not."""
        return self.input_tokens + self.cached_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token and its log-probability."""

    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """What the engine asks of a provider: one prompt, the tier's generation parameters."""

    model: str
    system: str
    user: str
    max_tokens: int
    temperature: float = 0.0
    n: int = 1
    logprobs: bool = False
    timeout: float = 60.0
    job_id: str = ""            # which job asks (a replay answers by it when the prompt is not recorded)


@dataclass(frozen=True, slots=True)
class Completion:
    """One provider answer: the text of the first choice, usage, and what verifiers read."""

    text: str
    usage: Usage
    finish_reason: str                      # "stop" | "length" | "refusal" | provider's own word
    model: str
    latency_ms: float
    logprobs: tuple[TokenLogprob, ...] = ()  # empty unless asked for and supported
    samples: tuple[str, ...] = ()            # texts of every choice when n > 1 (first is `text`)
    sample_finish: tuple[str, ...] = ()      # each sample's finish_reason, where the provider gives them
    rate_limit: dict[str, float] = field(default_factory=dict)  # remaining-requests/tokens hints

    @property
    def truncated(self) -> bool:
        """True when generation stopped at max_tokens."""
        return self.finish_reason in ("length", "max_tokens")

    def finish_of(self, index: int) -> str:
        """Why sample `index` ended: as recorded, else the first choice's reason for it and "stop" for others."""
        if index < len(self.sample_finish):
            return self.sample_finish[index]
        return self.finish_reason if index == 0 else "stop"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (a paid answer kept while its recording is retried)."""
        return {"text": self.text, "usage": [self.usage.input_tokens, self.usage.output_tokens, self.usage.cached_tokens],
                "finish_reason": self.finish_reason, "model": self.model, "latency_ms": self.latency_ms,
                "logprobs": [[t.token, t.logprob] for t in self.logprobs], "samples": list(self.samples),
                "sample_finish": list(self.sample_finish)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        """Inverse of `to_dict`."""
        return cls(d["text"], Usage(*d["usage"]), d["finish_reason"], d["model"], d["latency_ms"],
                   tuple(TokenLogprob(t, lp) for t, lp in d.get("logprobs", ())), tuple(d.get("samples", ())),
                   tuple(d.get("sample_finish", ())))


@dataclass(frozen=True, slots=True)
class Verdict:
    """One verifier's judgement of one attempt."""

    verifier: str
    passed: bool
    reason: str = ""
    score: float | None = None
    cost_usd: float = 0.0                    # what the check itself spent (judge, samples)
    usage: Usage = Usage()
    output: str | None = None                # a replacement answer (self-consistency's majority)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for traces and messages."""
        out: dict[str, Any] = {"verifier": self.verifier, "passed": self.passed, "reason": self.reason}
        if self.score is not None:
            out["score"] = self.score
        if self.cost_usd:
            out["cost_usd"] = self.cost_usd
        return out


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call of one tier for one job, with its cost and verdicts."""

    tier: str
    model: str
    text: str
    finish_reason: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    verdicts: tuple[Verdict, ...] = ()
    parsed: Any = None
    error: str | None = None                  # set when the call failed for good

    @property
    def passed(self) -> bool:
        """True when the call succeeded and every verdict passed."""
        return self.error is None and all(v.passed for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: the trace entry and what the next tier's message carries."""
        out: dict[str, Any] = {
            "tier": self.tier,
            "model": self.model,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": round(self.latency_ms, 1),
            "verdicts": [v.to_dict() for v in self.verdicts],
        }
        if self.parsed is not None:
            out["parsed"] = self.parsed
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attempt:
        """Inverse of `to_dict` (verdict scores and reasons kept, verdict usage dropped)."""
        return cls(
            tier=d["tier"],
            model=d["model"],
            text=d.get("text", ""),
            finish_reason=d.get("finish_reason", ""),
            usage=Usage(d.get("input_tokens", 0), d.get("output_tokens", 0), d.get("cached_tokens", 0)),
            cost_usd=d.get("cost_usd", 0.0),
            latency_ms=d.get("latency_ms", 0.0),
            verdicts=tuple(
                Verdict(v["verifier"], v["passed"], v.get("reason", ""), v.get("score"), v.get("cost_usd", 0.0))
                for v in d.get("verdicts", ())
            ),
            parsed=d.get("parsed"),
            error=d.get("error"),
        )
