"""Write the tuning study's five-tier synthetic set as recorded rows, for `benchmarks.recorded` to derive.

    python -m benchmarks.synthetic_set DIR      # DIR/family-train.jsonl (300 rows), DIR/family-test.jsonl (1,700)

benchmarks/tuning_study.py fits its synthetic profiles directly. Written as recorded rows (four-choice
answers, the answer token's logprob, a cost per call), the same set runs the whole path a held-out set
runs: `python -m benchmarks.recorded --datasets DIR` derives its pipeline from the training rows,
calibrates and replays it. Ends with one JSON line: the files written and their rows.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import orjson

from benchmarks.tuning_study import synthetic_profiles

MODELS = ("synth-1b", "synth-3b", "synth-8b", "synth-70b", "synth-405b")
COSTS = (3, 5, 7, 30, 100)               # micro-dollars per call, as the study's five-tier case
SKILLS = (-1.2, -0.5, 0.3, 1.3, 1.6)
CHOICES = "ABCD"


def family_rows(n: int = 2000, train: int = 300, seed: int = 5) -> list[dict]:
    """The rows, in the recorded format of ../shared/datasets/README.md: the first `train` are the train split."""
    profiles = synthetic_profiles(n=n, seed=seed, costs=COSTS, skills=SKILLS)
    rng = random.Random(seed + 1)
    rows = []
    for i in range(n):
        gold = rng.choice(CHOICES)
        responses = {}
        for model, p in zip(MODELS, profiles):
            text = gold if p.correct[i] else rng.choice([c for c in CHOICES if c != gold])
            responses[model] = {"text": text, "input_tokens": 100, "output_tokens": 1,
                                "cost_usd": p.cost_full[i] * 1e-6, "logprob": math.log(max(p.raw[i], 1e-12)),
                                "correct": bool(p.correct[i])}
        rows.append({"id": f"family-{i:05d}", "split": "train" if i < train else "test",
                     "messages": [{"role": "system", "content": "Answer with A, B, C or D."},
                                  {"role": "user", "content": f"Question {i}?"}],
                     "gold": gold, "responses": responses})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    rows = family_rows()
    written = {}
    for split in ("train", "test"):
        path = args.folder / f"family-{split}.jsonl"
        chosen = [r for r in rows if r["split"] == split]
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in chosen))
        written[str(path)] = len(chosen)
    print(orjson.dumps({"benchmark": "synthetic_set", "written": written}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
