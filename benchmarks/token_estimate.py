"""How close the limiter's network-free token estimate comes to the tokens providers counted.

    python -m benchmarks.token_estimate [--datasets ../shared/datasets]

Every recorded prompt of ../shared/datasets, against the input tokens recorded for each OpenAI
model that answered it (exact counts). Beside it, the common "characters / 4" rule. An estimate
below the real count lets the limiter admit more than the provider will: `under_share` says how
often that happens, `p5` by how much at worst for 19 prompts in 20.

Prints one JSON line: {"prompts", "median", "p5", "p95", "under_share", "chars4": {...}}.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import orjson

from benchmarks.harness import REPO, emit
from cascade.worker.pricing import estimate_tokens


def ratios(datasets: Path, estimate) -> list[float]:
    """estimate / recorded input tokens, for every prompt and every OpenAI model that answered it."""
    out = []
    for path in sorted(datasets.glob("*.jsonl")):
        with path.open("rb") as f:
            for line in f:
                row = orjson.loads(line)
                guess = sum(estimate(m["content"]) for m in row["messages"])
                out += [guess / r["input_tokens"] for model, r in row["responses"].items()
                        if model.startswith("gpt-") and r.get("input_tokens")]
    return out


def summary(values: list[float]) -> dict:
    """Median, 5th and 95th percentile, and the share below 1."""
    cuts = statistics.quantiles(values, n=20)
    return {"median": round(statistics.median(values), 3), "p5": round(cuts[0], 3), "p95": round(cuts[-1], 3),
            "under_share": round(sum(v < 1 for v in values) / len(values), 4)}


def main() -> None:
    """Compare both estimates on every recorded prompt; print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.token_estimate", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    args = parser.parse_args()
    ours = ratios(args.datasets, estimate_tokens)
    chars4 = ratios(args.datasets, lambda text: (len(text) + 3) // 4)
    emit({"prompts": len(ours), **summary(ours), "chars4": summary(chars4)})


if __name__ == "__main__":
    main()
