"""Throughput at the provider's rate limit: two `cascade worker` processes share one tier's rpm / tpm.

The simulator enforces `--rpm` and `--tpm` on one model over a rolling minute, with 300-800 ms of
latency, and counts tokens as OpenAI does (prompt + max_tokens at admission, never given back). Two
real worker processes of that tier take jobs submitted with `cascade-submit`; the shared limiter in
Redis must keep them just under the limit: achieved / limit close to 1, and no 429.

Two runs: the headline, where requests per minute bind (`--tpm` leaves room), then one where tokens
per minute bind (`--tpm-bound`, 0 to skip it).

    python -m benchmarks.ratelimit [--jobs 3000] [--rpm 1200] [--tpm 200000] [--tpm-bound 100000]

Prints one JSON line: {"limit_rpm", "achieved_rpm", "ratio", "provider_429", "jobs", "lost", ...,
"tpm_bound": {"limit_tpm", "achieved_tpm", "ratio", "provider_429", "jobs", "lost"}}.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from pathlib import Path

import orjson

from benchmarks.harness import (
    ONE_TIER_PIPELINE,
    BenchConfig,
    Processes,
    cascade_cmd,
    emit,
    log,
    redis_url,
    steady_rate,
)
from cascade.simulator import SimServer, load_scenario

MODEL = "gpt-4o-mini"
LATENCY_MS = (300, 800)
SCENARIO = """
seed = 3
[[rules]]
match = '.*'
answer = '{{"category": "other", "priority": "low"}}'
[models."{model}"]
outcome = {{ correct = 1.0 }}
latency_ms = [{low}, {high}]
rpm = {rpm}
tpm = {tpm}
"""


def threads_per_worker(rpm: int, workers: int) -> int:
    """Little's law: calls in flight = rate x time per call (slowest answer + bookkeeping), with 50% headroom."""
    in_flight = rpm / 60 * (LATENCY_MS[1] / 1000 + 0.1)
    return math.ceil(in_flight * 1.5 / workers)


def write_jobs(path: Path, n: int) -> None:
    """n short support tickets as JSONL."""
    with open(path, "wb") as out:
        for i in range(n):
            out.write(orjson.dumps({"id": f"r{i}", "subject": f"Order {i} question",
                                    "body": f"Hello, where is my order number {i}? It has not arrived yet."}) + b"\n")


def sample_progress(server: SimServer, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    """Record (time, answered calls) four times a second."""
    while not stop.is_set():
        record = server.stats()["models"].get(MODEL, {})
        samples.append((time.monotonic(), int(record.get("ok", 0))))
        stop.wait(0.25)


def run(jobs: int, rpm: int, tpm: int, workers: int, root: Path) -> dict:
    """Run the benchmark in `root`; return the result document."""
    url = redis_url()
    scenario = root / "scenario.toml"
    scenario.write_text(SCENARIO.format(model=MODEL, low=LATENCY_MS[0], high=LATENCY_MS[1], rpm=rpm, tpm=tpm))
    threads = threads_per_worker(rpm, workers)
    tier = {"provider": "openai", "model": MODEL, "max_tokens": 64, "timeout_s": 30, "concurrency": threads,
            "rpm": rpm, "tpm": tpm}
    config = BenchConfig(root, url, {"cheap": tier}, {"bench-rl": ONE_TIER_PIPELINE.format(tier="cheap")},
                         high_water=max(2000, jobs))
    server = SimServer(load_scenario(scenario)).start()
    procs = Processes(root)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        env = config.env(server.url)
        log(f"simulator {server.url}: {MODEL} limited to {rpm} rpm / {tpm} tpm, latency {LATENCY_MS} ms")
        for i in range(workers):
            procs.start(f"worker-{i}", cascade_cmd("cascade", "worker", "--tier", "cheap"), env)
        log(f"{workers} workers x {threads} threads (Little's law); submitting {jobs} jobs")
        write_jobs(root / "jobs.jsonl", jobs)
        poller = threading.Thread(target=sample_progress, args=(server, samples, stop), daemon=True)
        poller.start()
        started = time.monotonic()
        results = root / "results.jsonl"
        submit = procs.start("submit", cascade_cmd("cascade-submit", str(root / "jobs.jsonl"), "--pipeline", "bench-rl",
                                                   "--wait", "--out", str(results), "--json", "--no-progress"),
                             env, ready=None)
        deadline = started + jobs / (rpm / 60) * 2 + 120
        while submit.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("cascade-submit --wait did not finish in time")
            time.sleep(1)
            done = samples[-1][1] if samples else 0
            if int(time.monotonic() - started) % 15 == 0:
                log(f"{done}/{jobs} calls answered")
        elapsed = time.monotonic() - started
        stop.set()
        poller.join()
        stats = server.stats()["models"].get(MODEL, {})
        records = [orjson.loads(line) for line in results.read_bytes().splitlines() if line.strip()]
        statuses: dict[str, int] = {}
        for record in records:
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        achieved = steady_rate(samples, jobs, 0.02, 0.98) * 60
        # what the simulator charged each call against tpm: its prompt and the whole max_tokens
        charged = stats.get("prompt_tokens", 0) / max(1, stats.get("ok", 0)) + tier["max_tokens"]
        log(f"submit exit {submit.returncode}; {elapsed:.1f}s wall; statuses {statuses}")
        return {
            "limit_rpm": rpm,
            "achieved_rpm": round(achieved, 1),
            "ratio": round(achieved / rpm, 4),
            "achieved_tpm": round(achieved * charged),
            "provider_429": stats.get("rate_limited_429", 0) + stats.get("errors", {}).get("429", 0),
            "jobs": jobs,
            "lost": jobs - len({r["id"] for r in records}),
            "workers": workers,
            "threads_per_worker": threads,
            "limit_tpm": tpm,
            "provider_calls": stats.get("requests", 0),
            "wall_s": round(elapsed, 1),
        }
    finally:
        stop.set()
        procs.close()
        server.stop()
        config.cleanup()


def main() -> None:
    """Parse flags, run, print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ratelimit", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=200_000, help="tokens/min of the headline run (not binding)")
    parser.add_argument("--tpm-bound", type=int, default=100_000, help="tokens/min of the second run (binding)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp:
        result = run(args.jobs, args.rpm, args.tpm, args.workers, Path(tmp))
    if args.tpm_bound:
        log(f"second run: {args.tpm_bound} tokens/min binds")
        with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp:
            tokens = run(args.jobs, args.rpm, args.tpm_bound, args.workers, Path(tmp))
        result["tpm_bound"] = {
            "limit_tpm": args.tpm_bound, "achieved_tpm": tokens["achieved_tpm"],
            "ratio": round(tokens["achieved_tpm"] / args.tpm_bound, 4), "achieved_rpm": tokens["achieved_rpm"],
            "provider_429": tokens["provider_429"], "jobs": tokens["jobs"], "lost": tokens["lost"],
        }
    emit(result)


if __name__ == "__main__":
    main()
