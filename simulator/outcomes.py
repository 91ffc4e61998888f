"""How one sampled answer comes out: the outcome draw and the text, finish and logprobs it yields."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cascade.simulator.tokens import token_spans

#: the outcomes a scenario may weight, in the fixed order their probabilities are stacked
OUTCOMES = ("correct", "wrong", "malformed", "hedge", "truncated")
#: what a hedging answer starts with (the refusal verifier's marker)
HEDGE_PREFIX = "I'm not sure, but it might be: "
#: prose a malformed answer trails after its broken JSON
MALFORMED_TAIL = "\nHope this helps! Let me know if you need anything else."

#: logprob ranges (low, high) per kind of token
_SURE = (-0.05, -0.001)
_UNSURE = (-2.5, -1.2)
_CHATTY = (-0.9, -0.2)
_HEDGING = (-1.0, -0.3)
_HEDGED = (-0.6, -0.1)


def unit(*parts: object) -> float:
    """A number in [0, 1) that is a pure function of `parts` (sha256, never `random`)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def text_digest(text: str) -> str:
    """Hex sha256 of a text: how a prompt enters every draw."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pick(u: float, weights: tuple[tuple[str, float], ...]) -> str | None:
    """The name whose cumulative-probability slot holds `u`; None when `u` falls past them all."""
    cumulative = 0.0
    for name, probability in weights:
        if probability <= 0.0:
            continue
        cumulative += probability
        if u < cumulative:
            return name
    return None


@dataclass(frozen=True)
class SimAnswer:
    """One simulated answer: text, finish ("stop" | "length"), outcome, per-token logprobs."""

    text: str
    finish: str
    outcome: str
    logprobs: tuple[tuple[str, float], ...]
    output_tokens: int


def _segments(outcome: str, answer: str, wrong_answer: str) -> list[tuple[str, tuple[float, float]]]:
    """The answer's text as pieces, each with the logprob range of its tokens."""
    if outcome == "wrong":
        return [(wrong_answer, _UNSURE)]
    if outcome == "hedge":
        return [(HEDGE_PREFIX, _HEDGING), (answer, _HEDGED)]
    if outcome == "malformed":
        body = answer.rstrip()
        if body[:1] in "{[" and body[-1:] in "}]":
            body = body[:-1]  # the closing brace is what a sloppy model forgets
        return [(body, _SURE), (MALFORMED_TAIL, _CHATTY)]
    return [(answer, _SURE)]  # correct, truncated


def render_answer(
    outcome: str,
    answer: str,
    wrong: tuple[str, ...],
    key: tuple[object, ...],
    max_tokens: int | None = None,
) -> SimAnswer:
    """The answer an `outcome` yields; `key` seeds its choices, `max_tokens` caps its length."""
    wrong_answer = wrong[int(unit("wrong", *key) * len(wrong))] if wrong else answer
    segments = _segments(outcome, answer, wrong_answer)
    text = "".join(piece for piece, _ in segments)
    bounds: list[tuple[int, tuple[float, float]]] = []
    end = 0
    for piece, span in segments:
        end += len(piece)
        bounds.append((end, span))
    tokens: list[tuple[str, float]] = []
    for index, (start, stop) in enumerate(token_spans(text)):
        low, high = next(span for limit, span in bounds if start < limit)
        logprob = low + (high - low) * unit("logprob", index, *key)
        tokens.append((text[start:stop], round(logprob, 4)))

    keep = len(tokens)
    finish = "stop"
    if outcome == "truncated":
        keep = len(tokens) // 2 if len(tokens) > 1 else 0
        finish = "length"
    if max_tokens is not None and keep > max_tokens:
        keep = max(0, max_tokens)
        finish = "length"
    if finish == "length":
        tokens = tokens[:keep]
        text = "".join(token for token, _ in tokens)
        output_tokens = keep if max_tokens is None else max(keep, max_tokens)
    else:
        output_tokens = keep
    return SimAnswer(text, finish, outcome, tuple(tokens), output_tokens)
