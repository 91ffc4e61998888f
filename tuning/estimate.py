"""What a batch will cost before it is submitted, with no model call: `cascade estimate FILE -p P`.

Prompt tokens come from the network-free estimate the limiter uses; output tokens from the
tier's `max_tokens` (worst case) and an assumed answer length (expected: a label's couple of
tokens, else `output_tokens`). How far jobs climb and how accurate they end up come from the
figures `cascade calibrate` stored in the pipeline's calibration file (its training rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from cascade.models import Job, Usage
from cascade.tuning.calibrate import calibration_paths
from cascade.tuning.replay import tier_samples
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.pricing import cost_nanos, estimate_tokens, reserve_nanos, to_usd
from cascade.worker.prompts import render

LABEL_TOKENS = 2       # a label answer: the label and an end token


def projection(settings: Settings, pipeline: Pipeline) -> dict[str, Any] | None:
    """The training figures the pipeline's calibration file holds (`expected`), or None."""
    for name in calibration_paths(pipeline.source):
        try:
            data = orjson.loads((settings.config_dir / name).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("expected"), dict):
            return data["expected"]
    return None


def estimate(settings: Settings, pipeline: Pipeline, jobs: Iterable[Job], output_tokens: int) -> dict[str, Any]:
    """Rows, expected and worst-case cost, escalation and accuracy projected, and the last tier alone."""
    ladder = pipeline.ladder
    samples = tier_samples(settings, pipeline)
    expected_out = {name: min(LABEL_TOKENS if pipeline.output == "label" else output_tokens,
                              settings.tiers[name].max_tokens) for name in pipeline.full_ladder}
    projected = projection(settings, pipeline)
    escalation = (projected or {}).get("escalation", {})
    reach, share = {}, 1.0
    for name in ladder:
        reach[name] = share
        share = float(escalation.get(name, 1.0 if projected is None else 0.0))
    rows = expected = worst = last_alone = first_only = 0
    for job in jobs:
        rows += 1
        system, user = render(pipeline.prompt, job.fields)
        prompt = estimate_tokens(user) + (estimate_tokens(system) if system else 0)
        for name in ladder:
            tier, n = settings.tiers[name], samples[name]
            price = settings.price(tier)
            call = cost_nanos(price, Usage(prompt, expected_out[name] * n), tier.batched)
            expected += round(reach[name] * call) if projected is not None else 0
            first_only += call if name == ladder[0] else 0
            worst += reserve_nanos(price, tier, prompt, n)
        last = settings.tiers[ladder[-1]]
        last_alone += cost_nanos(settings.price(last), Usage(prompt, expected_out[last.name] * samples[last.name]))
    return {
        "pipeline": pipeline.name, "rows": rows, "ladder": list(ladder),
        "expected_cost_usd": to_usd(expected) if projected is not None else None,
        "cheapest_cost_usd": to_usd(first_only),
        "worst_case_cost_usd": to_usd(worst),
        "last_tier_alone_cost_usd": to_usd(last_alone),
        "projected_escalation": {name: escalation.get(name) for name in ladder[:-1]} if projected else None,
        "projected_accuracy": projected.get("accuracy") if projected else None,
        "projected_last_tier_accuracy": projected.get("last_tier_accuracy") if projected else None,
        "calibrated_on_rows": projected.get("rows") if projected else None,
        "assumed_output_tokens": expected_out,
    }


