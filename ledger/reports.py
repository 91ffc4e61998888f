"""Figures computed from the ledger's history: counters summed over batches, and cost broken down by a tag."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson

from cascade.ledger.database import Ledger


def summed_counters(ledger: Ledger, pipeline: str, since: float) -> dict[str, int]:
    """A pipeline's counters summed over its batches submitted since `since` (epoch s)."""
    total: Counter[str] = Counter()
    for row in ledger.batches(pipeline, since, limit=1_000_000):
        total.update({k: v for k, v in row["counters"].items() if isinstance(v, int)})
    return dict(total)


def by_tag(ledger: Ledger, tag: str, since: float, pipelines: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Per value of `tag`: jobs, attempts, escalations, cost, the last-tier-alone cost, savings; costliest first."""
    groups: dict[str, dict[str, Any]] = {}
    for row in ledger.tagged(since, pipelines):
        tags = row["tags"] or {}
        value = tags.get(tag)
        key = "(none)" if value is None else str(value)
        group = groups.setdefault(key, {tag: key, "jobs": 0, "attempts": 0, "escalations": 0, "cost_nanos": 0,
                                        "counterfactual_nanos": 0, "statuses": Counter()})
        group["jobs"] += 1
        group["attempts"] += row["attempts"]
        group["escalations"] += max(0, _tiers_tried(row) - 1)
        group["cost_nanos"] += row["cost_nanos"]
        group["counterfactual_nanos"] += row["counterfactual_nanos"]
        group["statuses"][row["status"]] += 1
    out = []
    for group in groups.values():
        cost, counterfactual = group.pop("cost_nanos"), group.pop("counterfactual_nanos")
        out.append({**group, "statuses": dict(group["statuses"]),
                    "escalation_rate": group["escalations"] / group["attempts"] if group["attempts"] else 0.0,
                    "cost_usd": cost / 1e9, "last_tier_only_cost_usd": counterfactual / 1e9,
                    "savings_usd": (counterfactual - cost) / 1e9,
                    "savings_share": (counterfactual - cost) / counterfactual if counterfactual else 0.0})
    return sorted(out, key=lambda g: -g["cost_usd"])


def _tiers_tried(row: dict[str, Any]) -> int:
    """How many tiers a job went through (its attempts, a retry round's tier counted once)."""
    attempts = orjson.loads(row["record"]).get("attempts", ())
    return len({a.get("tier") for a in attempts}) or 1
