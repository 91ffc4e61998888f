"""Pre-routing: skip a tier, before any call, for a job its prompt says that tier would not accept.

`cascade calibrate` fits one logistic model per non-last tier on the recorded prompts (tuning/router.py)
and writes the weights and a cut into the calibration file's `"router": {pipeline: {...}}` block. Here
the block is read back and applied: the prompt's hashed word unigrams and bigrams give P(the tier
accepts the job); below the tier's cut the engine escalates the job without calling the tier. Applying
it needs only this module: a hash per n-gram, a sum of weights and one exponential.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cascade.errors import ConfigError
from cascade.models import Attempt, Usage, Verdict

#: the "format" field of a router block
FORMAT = "cascade-router/1"
#: the finish_reason of the attempt that stands for a tier the router skipped (no call was made)
ROUTED = "routed"
_WORD = re.compile(r"[^\W_]+")


def prompt_text(system: str, user: str) -> str:
    """The text a router reads: the rendered system and user prompts."""
    return f"{system}\n{user}"


def features(text: str, buckets: int) -> list[int]:
    """The distinct hashed buckets of the text's lowercased word unigrams and bigrams, ascending.

    crc32, never Python's `hash()`: the buckets must be the same in every process and every run.
    """
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    return sorted({zlib.crc32(g.encode()) % buckets for g in grams})


def sigmoid(z: float) -> float:
    """The logistic function, safe for any margin."""
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


@dataclass(frozen=True)
class TierRouter:
    """One tier's model: P(accepts) = sigmoid(bias + sum of the weights of the prompt's buckets); skip below `cut`."""

    cut: float
    bias: float
    weights: Mapping[int, float]

    def probability(self, buckets: Iterable[int]) -> float:
        """P(this tier accepts the job) for the prompt's buckets."""
        return sigmoid(self.bias + sum(self.weights.get(b, 0.0) for b in buckets))


@dataclass(frozen=True)
class Router:
    """A pipeline's router: the ladder it was fitted for and a model for each tier it may skip."""

    ladder: tuple[str, ...]
    buckets: int
    tiers: Mapping[str, TierRouter]

    def skips(self, tier: str, text: str) -> tuple[float, float] | None:
        """(P(accepts), cut) when the router skips `tier` for this prompt, else None. The last tier is never skipped."""
        model = self.tiers.get(tier)
        if model is None or tier == self.ladder[-1]:
            return None
        p = model.probability(features(text, self.buckets))
        return (p, model.cut) if p < model.cut else None

    def start_index(self, text: str) -> int:
        """The position in the ladder of the first tier the router lets this prompt call."""
        return next((i for i, tier in enumerate(self.ladder[:-1]) if self.skips(tier, text) is None),
                    len(self.ladder) - 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON block a calibration file holds (weights sparse: only non-zero buckets)."""
        return {"format": FORMAT, "enabled": True, "ladder": list(self.ladder), "buckets": self.buckets,
                "features": "word unigrams+bigrams, lowercased, crc32",
                "tiers": {name: {"cut": m.cut, "bias": m.bias, "weights": {str(b): w for b, w in sorted(m.weights.items())}}
                          for name, m in self.tiers.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Router:
        """Inverse of `to_dict`; ValueError says what is wrong."""
        if data.get("format") != FORMAT:
            raise ValueError(f"expected format {FORMAT!r}, got {data.get('format')!r}")
        try:
            ladder = tuple(str(t) for t in data["ladder"])
            buckets = int(data["buckets"])
            tiers = {str(name): TierRouter(float(t["cut"]), float(t["bias"]),
                                           {int(b): float(w) for b, w in t["weights"].items()})
                     for name, t in data["tiers"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"bad router ({type(e).__name__}: {e})") from None
        if not ladder or buckets < 1:
            raise ValueError("bad router (an empty ladder or no buckets)")
        return cls(ladder, buckets, tiers)


def router_block(path: Path, pipeline: str) -> dict[str, Any] | None:
    """The router block a calibration file holds for `pipeline` (`"router": {pipeline: {...}}`), else None.

    A file written before routers existed has none: no router. An unreadable file has none here either:
    the verifier that reads it reports the problem.
    """
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    block = data.get("router") if isinstance(data, dict) else None
    entry = block.get(pipeline) if isinstance(block, dict) else None
    return entry if isinstance(entry, dict) else None


def load_router(config_dir: Path, pipeline: Any) -> Router | None:
    """The enabled router of a pipeline from the calibration files its verifiers name, or None."""
    files = sorted({spec["calibration"] for specs in pipeline.verifiers.values() for spec in specs
                    if isinstance(spec.get("calibration"), str)})
    for name in files:
        block = router_block(config_dir / name, pipeline.name)
        if block is None or not block.get("enabled"):
            continue
        try:
            router = Router.from_dict(block)
        except ValueError as e:
            raise ConfigError(f"{config_dir / name}: router.{pipeline.name}: {e}") from None
        if router.ladder[-1] != pipeline.ladder[-1]:
            raise ConfigError(f"{config_dir / name}: router.{pipeline.name}: fitted for the ladder "
                              f"{' -> '.join(router.ladder)}, the pipeline runs {' -> '.join(pipeline.ladder)}; "
                              "run `cascade calibrate` again")
        return router
    return None


def load_routers(config_dir: Path, pipelines: Iterable[Any]) -> dict[str, Router]:
    """The enabled router of every pipeline that has one, by pipeline name."""
    return {p.name: r for p in pipelines if (r := load_router(config_dir, p)) is not None}


def routed_attempt(tier: str, model: str, probability: float, cut: float) -> Attempt:
    """The trace entry of a tier the router skipped: no call, no cost, the reason in its verdict."""
    reason = f"skipped by the router: P(accepts) {probability:.3f} < cut {cut:.3f} (no call made)"
    return Attempt(tier, model, "", ROUTED, Usage(), 0.0, 0.0, verdicts=(Verdict("router", False, reason, probability),),
                   error="routed: skipped by the router, no call made")


def routed_counters(tier: str) -> list[tuple[str, int]]:
    """Batch counters of a routed skip: counted as routed past the tier, never as an attempt or a call."""
    return [(f"routed:{tier}", 1)]


def is_routed(attempt: Attempt | Mapping[str, Any]) -> bool:
    """Whether an attempt (or its dict form) stands for a tier the router skipped."""
    reason = attempt.get("finish_reason") if isinstance(attempt, Mapping) else attempt.finish_reason
    return reason == ROUTED


def routed_share(records: Sequence[Mapping[str, Any]], tiers: Sequence[str]) -> dict[str, float]:
    """Per tier: the share of jobs the router sent past it without a call."""
    n = len(records) or 1
    return {t: sum(1 for r in records if any(a["tier"] == t and is_routed(a) for a in r["attempts"])) / n
            for t in tiers}
