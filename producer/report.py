"""The savings report: per-tier figures and the cost had every job gone to the last tier."""

from __future__ import annotations

from typing import Any

from cascade.models import Status
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.counters import LATENCY_BOUNDS_MS
from cascade.worker.pricing import to_usd

STATUSES = tuple(str(s) for s in Status)


def summarize(counters: dict[str, Any], settings: Settings, pipeline: Pipeline) -> dict[str, Any]:
    """A JSON-safe summary from a batch's (or pipeline's) counters."""
    c = {k: v for k, v in counters.items() if isinstance(v, int)}
    done = c.get("done", sum(c.get(f"status:{s}", 0) for s in STATUSES))
    tiers = []
    for name in pipeline.ladder:
        attempts = c.get(f"attempts:{name}", 0)
        escalated = c.get(f"escalated:{name}", 0)
        tiers.append({
            "tier": name,
            "model": settings.tiers[name].model,
            "attempts": attempts,
            "accepted": c.get(f"accepted:{name}", 0),
            "escalated": escalated,
            "escalation_rate": escalated / attempts if attempts else 0.0,
            "final_jobs": c.get(f"final:{name}", 0),
            "input_tokens": c.get(f"in_tok:{name}", 0) + c.get(f"cached_tok:{name}", 0),
            "output_tokens": c.get(f"out_tok:{name}", 0),
            "retries": c.get(f"retries:{name}", 0),
            "cost_usd": to_usd(c.get(f"cost:{name}", 0)),
            "verify_cost_usd": to_usd(c.get(f"verify_cost:{name}", 0)),
            "verify_input_tokens": c.get(f"verify_in_tok:{name}", 0),
            "verify_output_tokens": c.get(f"verify_out_tok:{name}", 0),
            "latency_ms": _percentiles(c, name),
        })
    rejects = sorted(((k.split(":", 2)[1], k.split(":", 2)[2], v) for k, v in c.items() if k.startswith("reject:")),
                     key=lambda r: (pipeline.ladder.index(r[0]) if r[0] in pipeline.ladder else 99, -r[2]))
    errors = sorted((k.split(":", 2)[1], k.split(":", 2)[2], v) for k, v in c.items() if k.startswith("error:"))
    cost = c.get("cost", 0)
    counterfactual = c.get("counterfactual", 0)
    accepted = c.get("status:accepted", 0) + c.get("status:accepted_unverified", 0)
    return {
        "pipeline": pipeline.name,
        "jobs": c.get("total", done),
        "done": done,
        "rejected_rows": c.get("rejected", 0),
        "statuses": {s: c.get(f"status:{s}", 0) for s in STATUSES},
        "tiers": tiers,
        "reject_reasons": [{"tier": t, "reason": r, "count": n} for t, r, n in rejects],
        "errors": [{"tier": t, "kind": k, "count": n} for t, k, n in errors],
        "input_tokens": sum(t["input_tokens"] + t["verify_input_tokens"] for t in tiers),
        "output_tokens": sum(t["output_tokens"] + t["verify_output_tokens"] for t in tiers),
        "verify_cost_usd": sum(t["verify_cost_usd"] for t in tiers),
        "cost_usd": to_usd(cost),
        "cost_per_job_usd": to_usd(cost) / done if done else 0.0,
        "cost_per_accepted_job_usd": to_usd(cost) / accepted if accepted else 0.0,
        "last_tier": pipeline.ladder[-1],
        "last_tier_only_cost_usd": to_usd(counterfactual),
        "savings_usd": to_usd(counterfactual - cost),
        "savings_share": (counterfactual - cost) / counterfactual if counterfactual else 0.0,
        "duplicate_cost_usd": to_usd(c.get("cost_duplicate", 0)),
        "shadow": _shadow(c),
    }


def _shadow(c: dict[str, int]) -> dict[str, Any]:
    """Shadow quality sampling's own figures: apart from the batch's cost and budget."""
    jobs, agree = c.get("shadow_jobs", 0), c.get("shadow_agree", 0)
    return {"jobs": jobs, "agree": agree, "agreement": agree / jobs if jobs else None,
            "cost_usd": to_usd(c.get("shadow_cost", 0)), "skipped_budget": c.get("shadow_skipped", 0),
            "failed": c.get("shadow_failed", 0)}


def _percentiles(c: dict[str, int], tier: str) -> dict[str, float | None]:
    buckets = [c.get(f"lat:{tier}:{i}", 0) for i in range(len(LATENCY_BOUNDS_MS) + 1)]
    total = sum(buckets)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        if not total:
            out[name] = None
            continue
        seen = 0
        for i, n in enumerate(buckets):
            seen += n
            if seen >= q * total:
                out[name] = float(LATENCY_BOUNDS_MS[i]) if i < len(LATENCY_BOUNDS_MS) else None
                break
    return out


def format_summary(s: dict[str, Any], title: str) -> str:
    """The human summary printed to stderr at the end of a run."""
    lines = [title]
    statuses = ", ".join(f"{k} {v}" for k, v in s["statuses"].items() if v) or "none yet"
    lines.append(f"  jobs: {s['done']} of {s['jobs']} done ({statuses}); rejected rows: {s['rejected_rows']}")
    lines.append(f"  {'tier':<10} {'model':<20} {'attempts':>8} {'accepted':>8} {'escalated':>9} "
                 f"{'esc.rate':>8} {'final':>6} {'p50 ms':>7} {'cost $':>10}")
    for t in s["tiers"]:
        p50 = t["latency_ms"]["p50"]
        lines.append(f"  {t['tier']:<10} {t['model']:<20} {t['attempts']:>8} {t['accepted']:>8} {t['escalated']:>9} "
                     f"{t['escalation_rate']:>8.1%} {t['final_jobs']:>6} {'-' if p50 is None else f'<={p50:.0f}':>7} "
                     f"{t['cost_usd']:>10.6f}")
    if s["reject_reasons"]:
        lines.append("  reject reasons:")
        for r in s["reject_reasons"]:
            reason = r["reason"].replace(":", ": ", 1)   # "json:invalid JSON" -> "json: invalid JSON"
            lines.append(f"    {r['tier']:<10} {reason:<50} {r['count']:>6}")
    if s["errors"]:
        lines.append("  provider errors (after retries): " +
                     ", ".join(f"{e['tier']} {e['kind']} {e['count']}" for e in s["errors"]))
    retries = sum(t["retries"] for t in s["tiers"])
    lines.append(f"  tokens: {s['input_tokens']:,} in / {s['output_tokens']:,} out; retries: {retries}")
    verifying = [t for t in s["tiers"] if t["verify_cost_usd"] or t["verify_input_tokens"]]
    if verifying:
        lines.append("  spent by verifiers (judge, samples; inside the costs above): " + ", ".join(
            f"{t['tier']} ${t['verify_cost_usd']:.6f} ({t['verify_input_tokens']:,} in / "
            f"{t['verify_output_tokens']:,} out)" for t in verifying))
    lines.append(f"  cost: ${s['cost_usd']:.6f} total, ${s['cost_per_job_usd']:.8f} per job, "
                 f"${s['cost_per_accepted_job_usd']:.8f} per accepted job")
    lines.append(f"  every job on {s['last_tier']} alone: ${s['last_tier_only_cost_usd']:.6f}; "
                 f"savings ${s['savings_usd']:.6f} ({s['savings_share']:.1%})")
    shadow = s.get("shadow") or {}
    if shadow.get("jobs") or shadow.get("skipped_budget") or shadow.get("failed"):
        agreement = "-" if shadow["agreement"] is None else f"{shadow['agreement']:.1%}"
        lines.append(f"  shadow (on {s['last_tier']}, not in the cost above): {shadow['jobs']} jobs, "
                     f"agreement {agreement}, cost ${shadow['cost_usd']:.6f}"
                     + (f", {shadow['skipped_budget']} skipped by the shadow budget" if shadow["skipped_budget"] else "")
                     + (f", {shadow['failed']} failed" if shadow["failed"] else ""))
    if s["duplicate_cost_usd"]:
        lines.append(f"  spent on redelivered duplicates: ${s['duplicate_cost_usd']:.6f}")
    return "\n".join(lines)
