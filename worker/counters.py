"""The names of the batch and pipeline counters, written by the engine and read by reports."""

from __future__ import annotations

from bisect import bisect_left

from cascade.models import Attempt, Usage

#: latency histogram bucket upper bounds (ms); percentiles are read back from these
LATENCY_BOUNDS_MS = (10, 20, 50, 100, 200, 300, 500, 800, 1000, 2000, 5000, 10000, 30000, 60000, 120000)


def latency_bucket(ms: float) -> int:
    """Index of the histogram bucket for a latency (the last index means above every bound)."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)


def reason_head(reason: str) -> str:
    """The stable part of a verdict reason (before the first colon): what stats group by."""
    return reason.split(":", 1)[0].strip()[:60] or "rejected"


def attempt_counters(attempt: Attempt, cost: int, retries: int, outcome: str) -> list[tuple[str, int]]:
    """Counters for one attempt at a tier; outcome is accepted | escalated | flagged | failed."""
    t = attempt.tier
    out = [
        (f"attempts:{t}", 1),
        (f"{outcome}:{t}", 1),
        (f"in_tok:{t}", attempt.usage.input_tokens),
        (f"cached_tok:{t}", attempt.usage.cached_tokens),
        (f"out_tok:{t}", attempt.usage.output_tokens),
        (f"cost:{t}", cost),
        ("cost", cost),
    ]
    if attempt.verdicts:
        # What the checks themselves spent (judge, samples); already inside cost:{t}, shown on its own too.
        verify_usage = sum((v.usage for v in attempt.verdicts), Usage())
        out += [
            (f"verify_cost:{t}", sum(round(v.cost_usd * 1e9) for v in attempt.verdicts)),
            (f"verify_in_tok:{t}", verify_usage.prompt_tokens),
            (f"verify_out_tok:{t}", verify_usage.output_tokens),
        ]
    if attempt.error is None:
        out += [(f"lat_ms:{t}", round(attempt.latency_ms)), (f"lat:{t}:{latency_bucket(attempt.latency_ms)}", 1)]
    if retries:
        out.append((f"retries:{t}", retries))
    if attempt.error is not None:
        out.append((f"error:{t}:{attempt.error.split(':', 1)[0]}", 1))
    failed = next((v for v in attempt.verdicts if not v.passed), None)
    if failed is not None:
        out.append((f"reject:{t}:{failed.verifier}:{reason_head(failed.reason)}", 1))
    return out


def final_counters(status: str, tier: str, counterfactual: int) -> list[tuple[str, int]]:
    """Counters for a finished job: its status, the tier that answered, its last-tier-only cost."""
    return [(f"status:{status}", 1), (f"final:{tier}", 1), ("counterfactual", counterfactual)]
