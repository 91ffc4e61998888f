"""Benchmark: the recorded mmlu-oai and medmcqa-oai test sets through their calibrated pipelines with
every tier in batch mode, real workers and Redis, the official SDKs' Batch APIs against the simulator.

    python -m benchmarks.batch_api [--datasets ../shared/datasets] [--delay-s 5] [--set mmlu-oai]

Per set: calibrate on the train split (as `benchmarks.recorded` does), replay the test split live
(the reference: the same engine, the recorded answers), then run the test split as a batch on one
`cascade worker` per tier with `mode = "batch"`, the simulator serving the same recorded answers
after `--delay-s` of processing per provider batch. Reports accuracy (batch and live), cost against
the live cascade and against the last tier alone (live), jobs lost, requests the simulator saw
submitted twice, and the wall time. Progress on stderr, one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import httpx2
import orjson

from benchmarks.harness import REPO, Processes, cascade_cmd, emit, log, redis_url
from cascade.recorded import load_recorded
from cascade.simulator import SimServer, load_scenario
from cascade.tuning.calibrate import Target, calibrate, calibration_paths
from cascade.tuning.replay import evaluate, replay
from cascade.verifiers.calibration import dump_calibration
from cascade.worker.config import load_settings

SETS = {"mmlu-oai": "mmlu", "medmcqa-oai": "medmcqa"}
TARGET = "drop=0.01"
DISCOUNT = 0.5              # both providers' Batch APIs: half the live price


def prepare_config(root: Path, url: str, ns: str) -> Path:
    """examples/recorded/config with this run's Redis, namespace and queues, and the batch discount priced."""
    target = root / "config"
    shutil.copytree(REPO / "examples" / "recorded" / "config", target)
    path = target / "cascade.toml"
    text = path.read_text().replace('url = ""', f'url = "{url}"').replace('namespace = "recorded"',
                                                                          f'namespace = "{ns}"')
    text = re.sub(r"\[tiers\.(\w+)\]\n", lambda m: f'[tiers.{m.group(1)}]\nqueue = "{ns}.tier.{m.group(1)}"\n', text)
    text = re.sub(r'(\[prices\."[^"]+"\]\n)', rf"\1batch_discount = {DISCOUNT}\n", text)
    path.write_text(text)
    return path


def run_set(name: str, datasets: Path, root: Path, url: str, delay_s: float) -> dict:
    pipeline_name = SETS[name]
    ns = f"bbatch{name.split('-')[0]}{int(time.time()) % 100000}"
    config = prepare_config(root, url, ns)
    train = load_recorded(datasets / f"{name}-train.jsonl")
    test_file = datasets / f"{name}-test.jsonl"
    test = load_recorded(test_file)
    settings = load_settings(config, environ={}, check_verifiers=False)
    pipeline = settings.pipeline(pipeline_name)
    fitted = calibrate(settings, pipeline, train, Target.parse(TARGET))
    for calibration in calibration_paths(Path(pipeline.source)):
        (config.parent / calibration).write_bytes(dump_calibration(fitted.entries, {"pipeline": pipeline_name,
                                                                                   **fitted.meta()}))
    settings = load_settings(config, environ={})
    pipeline = settings.pipeline(pipeline_name)
    log(f"{name}: calibrated on {len(train.rows)} train rows; ladder {' -> '.join(pipeline.ladder)}")
    live = replay(settings, pipeline, test).report
    log(f"{name}: live replay of {live['jobs']} test rows: accuracy {live['accuracy']:.4f}, "
        f"cost ratio {live['cost_ratio']:.4f}")

    scenario = root / f"{name}-scenario.toml"
    scenario.write_text(f'seed = 1\nrecorded = "{test_file}"\n\n[batch]\ndelay_s = {delay_s}\n')
    jobs = root / f"{name}-jobs.jsonl"
    jobs.write_bytes(b"".join(orjson.dumps({"id": r.id, "system": r.system, "user": r.user}) + b"\n"
                              for r in test.rows))
    out = root / f"{name}-results.jsonl"
    procs = Processes(root)
    started = time.monotonic()
    with SimServer(load_scenario(scenario)) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        env |= {"CASCADE_CONFIG": str(config), "CASCADE_PROVIDER_BASE_URL": sim.url,
                "CASCADE_PROVIDER_API_KEY": "sim-key"}
        for tier in pipeline.ladder:
            t = tier.upper()
            env |= {f"CASCADE_TIER_{t}_MODE": "batch", f"CASCADE_TIER_{t}_BATCH_MAX_AGE_S": "2",
                    f"CASCADE_TIER_{t}_BATCH_POLL_S": "1"}
        try:
            for tier in pipeline.ladder:
                procs.start(f"{name}-worker-{tier}", cascade_cmd("cascade", "worker", "--tier", tier, "--concurrency",
                                                                 "8", "--loglevel", "INFO"), env)
            started = time.monotonic()
            submit = procs.start(f"{name}-submit", cascade_cmd("cascade-submit", str(jobs), "--pipeline",
                                                               pipeline_name, "--batch-id", f"{ns}-b", "--wait",
                                                               "--out", str(out), "--no-progress"), env, ready=None)
            submit.wait(timeout=3600)
            wall = time.monotonic() - started
            if submit.returncode != 0:
                raise RuntimeError(f"cascade-submit exited {submit.returncode}: "
                                   f"{(root / f'{name}-submit.log').read_text()[-3000:]}")
            batches = httpx2.get(f"{sim.url}/stats").json()["batches"]
        finally:
            procs.close()
            _cleanup(url, ns)
    records = [orjson.loads(line) for line in out.read_bytes().splitlines() if line.strip()]
    by_id = {r["id"]: r for r in records}
    rows = [r for r in test.rows if r.id in by_id]
    report = evaluate(settings, pipeline, test, rows, [by_id[r.id] for r in rows]) if rows else {}
    cost = sum(r["cost_usd"] for r in records)
    result = {
        "set": name, "ladder": list(pipeline.ladder), "jobs": len(test.rows),
        "accuracy": _round(report.get("accuracy")), "live_accuracy": _round(live["accuracy"]),
        "cost_ratio_vs_live": _round(cost / live["cost_usd"]) if live["cost_usd"] else None,
        "cost_ratio_vs_last_tier": _round(report.get("cost_ratio")),
        "live_cost_ratio_vs_last_tier": _round(live["cost_ratio"]),
        "lost": len(test.rows) - len(by_id), "duplicate_records": len(records) - len(by_id),
        "duplicate_submissions": batches["duplicate_submissions"], "provider_batches": batches["created"],
        "requests": batches["requests"], "wall_s": round(wall, 1), "delay_s": delay_s,
        "cost_usd": round(cost, 6), "live_cost_usd": round(live["cost_usd"], 6),
        "last_tier_cost_usd": round(live["last_tier_cost_usd"], 6),
    }
    log(f"{name}: {orjson.dumps(result).decode()}")
    return result


def _cleanup(url: str, ns: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = [k for p in (f"{ns}:*", f"{ns}.*", f"_kombu.binding.{ns}.*") for k in client.scan_iter(p, count=1000)]
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--delay-s", type=float, default=5.0, help="the simulator's processing time per batch")
    parser.add_argument("--set", dest="sets", action="append", choices=sorted(SETS), help="only this set")
    args = parser.parse_args(argv)
    url = redis_url()
    sets = []
    with tempfile.TemporaryDirectory(prefix="cascade-batch-api-") as tmp:
        for name in args.sets or list(SETS):
            folder = Path(tmp) / name
            folder.mkdir()
            sets.append(run_set(name, args.datasets, folder, url, args.delay_s))
    emit(_totals(sets))
    return 0


def _totals(sets: list[dict]) -> dict:
    """Every set together: accuracy over all jobs, costs summed before they are divided."""
    jobs = sum(s["jobs"] for s in sets)
    cost, live, last = (sum(s[k] for s in sets) for k in ("cost_usd", "live_cost_usd", "last_tier_cost_usd"))
    accuracy = lambda key: _round(sum((s[key] or 0) * s["jobs"] for s in sets) / jobs) if jobs else None
    return {"benchmark": "batch_api", "jobs": jobs, "accuracy": accuracy("accuracy"),
            "live_accuracy": accuracy("live_accuracy"), "cost_ratio_vs_live": _round(cost / live) if live else None,
            "cost_ratio_vs_last_tier": _round(cost / last) if last else None, "lost": sum(s["lost"] for s in sets),
            "duplicate_submissions": sum(s["duplicate_submissions"] for s in sets),
            "wall_s": round(sum(s["wall_s"] for s in sets), 1), "sets": sets}


if __name__ == "__main__":
    raise SystemExit(main())
