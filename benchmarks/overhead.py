"""Cascade's own cost per job next to raw Celery: a 3-tier pipeline over a zero-latency provider.

Phase 1: `--jobs` tickets go through cheap -> mid -> frontier (static verifiers: truncation, refusal,
JSON schema; ~20% escalate from cheap, ~15% of those again from mid) on one worker process per tier,
each answered in-process by `InstantProvider` (benchmarks/worker.py), so the provider costs nothing.
Phase 2: the same number of no-op tasks drained by one worker process with the same Celery settings.
Both are pre-queued, and rates are taken between 10% and 90% done (steady state, no start-up).
The phases alternate for `--rounds` rounds (cascade first, then raw first, ...), because this
machine's speed drifts by a third from minute to minute; the figures are medians, and `ratio` is
the median of each round's cascade / raw.

    python -m benchmarks.overhead [--jobs 20000] [--concurrency 4] [--rounds 3]

Prints one JSON line: {"cascade_jobs_per_s", "raw_celery_tasks_per_s", "ratio", "redis_roundtrips_per_job", ...}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import redis

from benchmarks.harness import (
    REPO,
    BenchConfig,
    Processes,
    cascade_cmd,
    emit,
    log,
    module_cmd,
    redis_url,
    steady_rate,
    wait_until,
)
from benchmarks.worker import NOOP_TASK, READY, noop

TIERS = {   # name -> (model, share of its answers that pass the verifiers)
    "cheap": ("gpt-4o-mini", 0.80),
    "mid": ("claude-haiku-4-5", 0.85),
    "frontier": ("claude-sonnet-4-6", 1.0),
}


def write_jobs(path: Path, n: int) -> None:
    """n support tickets of ~200 bytes as JSONL."""
    with open(path, "wb") as out:
        for i in range(n):
            out.write(orjson.dumps({"id": f"j{i}", "subject": f"Ticket {i}: cannot log in",
                                    "body": f"Since this morning I cannot log in to my account #{i}. The reset "
                                            "email never arrives and I need access today. Please help."}) + b"\n")


def read_counter(path: Path) -> int:
    """A worker's running count of Redis round trips (0 before its first write)."""
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:
        return 0


def commands_processed(client: redis.Redis) -> int:
    """Commands Redis has executed, those run inside Lua scripts included."""
    return int(client.info("stats")["total_commands_processed"])


def drain(progress, total: int, counters: list[Path], client: redis.Redis, timeout_s: float) -> dict:
    """Sample (time, done, round trips, commands) until done == total; steady-state figures between 10% and 90%."""
    samples: list[tuple[float, int, int, int]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        done = progress()
        samples.append((time.monotonic(), done, sum(read_counter(c) for c in counters), commands_processed(client)))
        if done >= total:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done}/{total} done after {timeout_s:.0f}s")
        time.sleep(0.1)
    first = next(s for s in samples if s[1] >= 0.1 * total)
    last = next(s for s in samples if s[1] >= 0.9 * total)
    jobs = last[1] - first[1]
    return {"per_s": steady_rate([(s[0], s[1]) for s in samples], total),
            "roundtrips_per_unit": (last[2] - first[2]) / jobs, "commands_per_unit": (last[3] - first[3]) / jobs,
            "wall_s": samples[-1][0] - samples[0][0]}


def run_cascade(config: BenchConfig, root: Path, jobs: int, concurrency: int, client: redis.Redis) -> dict:
    """Phase 1: pre-queue the batch, start one worker per tier, time the drain."""
    from cascade.worker.store import BatchStore

    write_jobs(root / "jobs.jsonl", jobs)
    env = config.env()
    batch = f"{config.ns}-overhead"
    log(f"queueing {jobs} jobs with cascade-submit (no workers yet)")
    out = Processes(root).start("submit", cascade_cmd("cascade-submit", str(root / "jobs.jsonl"), "-p", "bench-3tier",
                                                      "--batch-id", batch, "--no-progress"), env, ready=None)
    if out.wait(timeout=600) != 0:
        raise RuntimeError(f"cascade-submit failed: {(root / 'submit.log').read_text()[-2000:]}")
    store = BatchStore(client, config.ns)
    procs = Processes(root)
    counters = [root / f"rt-{tier}.txt" for tier in TIERS]
    try:
        for (tier, (_, pass_rate)), counter in zip(TIERS.items(), counters):
            procs.start(f"worker-{tier}", module_cmd("benchmarks.worker", "--config", str(config.path), "--tier", tier,
                                                     "--pass-rate", str(pass_rate), "--concurrency", str(concurrency),
                                                     "--counter-file", str(counter)), env, ready=READY.encode())
        log("3 tier workers up; draining")
        figures = drain(lambda: store.batch(batch).done, jobs, counters, client, 1800)
        info = store.batch(batch).counters
        figures["attempts_per_job"] = sum(int(info.get(f"attempts:{t}", 0)) for t in TIERS) / jobs
        figures["statuses"] = {k.split(":", 1)[1]: v for k, v in info.items() if k.startswith("status:")}
        return figures
    finally:
        procs.close()


def run_raw(config: BenchConfig, root: Path, tasks: int, concurrency: int, client: redis.Redis) -> dict:
    """Phase 2: pre-queue no-op tasks with kombu's batch publish; one worker with the same settings drains them."""
    from cascade.worker.celery_app import create_app
    from cascade.worker.config import load_settings

    queue = f"{config.ns}.noop"
    app = create_app(load_settings(config.path))
    task = app.task(name=NOOP_TASK, ignore_result=True)(noop)
    log(f"queueing {tasks} no-op tasks")
    with app.producer_or_acquire() as producer:
        for start in range(0, tasks, 1000):
            with producer.batch(max_size=1000):
                for i in range(start, min(tasks, start + 1000)):
                    task.apply_async(args=(f"j{i}",), queue=queue, producer=producer, argsrepr="j", kwargsrepr="{}")
    wait_until(lambda: client.llen(queue) >= tasks, 60, what="the no-op queue to fill")
    app.close()
    procs = Processes(root)
    counter = root / "rt-noop.txt"
    try:
        procs.start("worker-noop", module_cmd("benchmarks.worker", "--config", str(config.path), "--noop-queue", queue,
                                              "--concurrency", str(concurrency), "--counter-file", str(counter)),
                    config.env(), ready=READY.encode())
        log("no-op worker up; draining")
        return drain(lambda: tasks - int(client.llen(queue)), tasks, [counter], client, 900)
    finally:
        procs.close()


def main() -> None:
    """Parse flags, run both phases, print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker process (both phases)")
    parser.add_argument("--rounds", type=int, default=3, help="cascade and raw phases, alternating")
    args = parser.parse_args()
    url = redis_url()
    client = redis.Redis.from_url(url)
    pipeline = (REPO / "config" / "pipelines" / "ticket-triage.toml").read_text()
    tiers = {name: {"provider": "openai", "model": model, "max_tokens": 128, "concurrency": args.concurrency}
             for name, (model, _) in TIERS.items()}
    cascades, raws = [], []
    for round_no in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp:
            root = Path(tmp)
            config = BenchConfig(root, url, tiers, {"bench-3tier": pipeline}, high_water=args.jobs + 1000)
            try:
                phases = [("cascade", run_cascade, cascades), ("raw celery", run_raw, raws)]
                for name, phase, into in phases if round_no % 2 == 0 else reversed(phases):
                    into.append(phase(config, root, args.jobs, args.concurrency, client))
                    log(f"round {round_no + 1} {name}: {into[-1]}")
            finally:
                config.cleanup()
    cascade = {key: statistics.median(c[key] for c in cascades)
               for key in ("per_s", "roundtrips_per_unit", "attempts_per_job", "commands_per_unit")}
    raw = {key: statistics.median(r[key] for r in raws) for key in ("per_s", "roundtrips_per_unit")}
    emit({
        "cascade_jobs_per_s": round(cascade["per_s"], 1),
        "raw_celery_tasks_per_s": round(raw["per_s"], 1),
        "ratio": round(statistics.median(c["per_s"] / r["per_s"] for c, r in zip(cascades, raws)), 3),
        "redis_roundtrips_per_job": round(cascade["roundtrips_per_unit"], 2),
        "jobs": args.jobs,
        "rounds": args.rounds,
        "round_ratios": [round(c["per_s"] / r["per_s"], 3) for c, r in zip(cascades, raws)],
        "attempts_per_job": round(cascade["attempts_per_job"], 3),
        "redis_commands_per_job": round(cascade["commands_per_unit"], 2),
        "raw_roundtrips_per_task": round(raw["roundtrips_per_unit"], 2),
        "worker_processes": {"cascade": len(TIERS), "raw": 1},
        "threads_per_process": args.concurrency,
    })


if __name__ == "__main__":
    main()
