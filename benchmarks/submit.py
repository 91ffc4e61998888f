"""Submission speed and memory: ingestion against raw Celery / Redis, then a long stream with bounded memory.

Phase 1 (ingestion): `--rows` ~1 KB rows go into the first queue with no workers running (high_water
above the row count): `cascade-submit` end to end (read, validate, register, publish), beside a plain
`apply_async` loop and redis-py pipelined LPUSH of the same row bytes.
Phase 2 (memory): `--stream-rows` generated rows are piped into `cascade-submit - --wait` while
worker processes drain them through an in-process zero-latency provider; the producer's peak RSS and
Redis's peak used_memory are sampled throughout.

    python -m benchmarks.submit [--rows 200000] [--raw-rows 50000] [--stream-rows 1000000] [--workers 2]

Prints one JSON line: {"rows_per_s", "raw_celery_publish_per_s", "raw_redis_pipeline_rows_per_s", "rows",
"producer_peak_rss_mb", "redis_peak_used_memory_mb", ...}.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from benchmarks.harness import (
    ONE_TIER_PIPELINE,
    REPO,
    BenchConfig,
    Processes,
    cascade_cmd,
    emit,
    log,
    module_cmd,
    redis_url,
)
from benchmarks.rows import make_row
from benchmarks.worker import READY, noop

TIER = {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": 64, "concurrency": 4}


def ingest(config: BenchConfig, root: Path, rows: int) -> float:
    """`cascade-submit` of `rows` rows with no workers; rows per second, wall clock of the command."""
    source = root / "rows.jsonl"
    with open(source, "wb") as out:
        for start in range(0, rows, 1000):
            out.write(b"".join(make_row(i) for i in range(start, min(rows, start + 1000))))
    log(f"cascade-submit of {rows} rows ({source.stat().st_size / 1e6:.0f} MB), no workers")
    started = time.perf_counter()
    done = subprocess.run(cascade_cmd("cascade-submit", str(source), "-p", "bench-1tier", "--no-progress"),
                          env=config.env(), capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cascade-submit failed: {done.stderr.decode()[-2000:]}")
    source.unlink()
    return rows / elapsed


def raw_celery(config: BenchConfig, rows: int) -> float:
    """A plain `apply_async` loop, one message per row (the row as the task's argument); messages per second."""
    import orjson

    from cascade.worker.celery_app import create_app
    from cascade.worker.config import load_settings

    app = create_app(load_settings(config.path))
    task = app.task(name="bench.row", ignore_result=True)(noop)
    payloads = [orjson.loads(make_row(i)) for i in range(rows)]
    queue = f"{config.ns}.raw-celery"
    started = time.perf_counter()
    for row in payloads:
        task.apply_async(args=(row,), queue=queue)
    elapsed = time.perf_counter() - started
    app.close()
    return rows / elapsed


def raw_redis(client: redis.Redis, ns: str, rows: int) -> float:
    """redis-py pipelined LPUSH of the same row bytes, 500 a round trip; rows per second."""
    key = f"{ns}.raw-redis"
    started = time.perf_counter()
    for start in range(0, rows, 500):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(rows, start + 500)):
            pipe.lpush(key, make_row(i))
        pipe.execute()
    return rows / (time.perf_counter() - started)


class Peaks:
    """Samples a process's peak RSS (VmHWM) and Redis used_memory twice a second, in a thread."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.pid = 0
        self.rss_kb = 0
        self.redis_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.redis_bytes = max(self.redis_bytes, int(self.client.info("memory")["used_memory"]))
            if self.pid:
                try:
                    status = Path(f"/proc/{self.pid}/status").read_text()
                    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
                    self.rss_kb = max(self.rss_kb, int(hwm.split()[1]))
                except (FileNotFoundError, ProcessLookupError, StopIteration):
                    pass    # the process has exited: its last sample stands
            self._stop.wait(0.5)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stream(config: BenchConfig, root: Path, rows: int, workers: int, client: redis.Redis) -> dict:
    """Phase 2: generated rows piped into `cascade-submit - --wait` while workers drain them."""
    procs = Processes(root)
    baseline = int(client.info("memory")["used_memory"])
    try:
        for i in range(workers):
            procs.start(f"worker-{i}", module_cmd("benchmarks.worker", "--config", str(config.path), "--tier", "cheap",
                                                  "--concurrency", str(TIER["concurrency"])),
                        config.env(), ready=READY.encode())
        log(f"{workers} workers up; streaming {rows} rows through cascade-submit --wait")
        with Peaks(client) as peaks:
            generator = subprocess.Popen(module_cmd("benchmarks.rows", str(rows)), stdout=subprocess.PIPE, cwd=REPO)
            started = time.perf_counter()
            submit = subprocess.Popen(
                cascade_cmd("cascade-submit", "-", "-p", "bench-1tier", "--wait", "--out", "/dev/null", "--json",
                            "--no-progress"),
                stdin=generator.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=config.env())
            generator.stdout.close()
            peaks.pid = submit.pid
            summary, _ = submit.communicate(timeout=3600)
            elapsed = time.perf_counter() - started
            generator.wait()
        if submit.returncode != 0:
            raise RuntimeError(f"cascade-submit exited {submit.returncode}")
        log(f"streamed {rows} rows in {elapsed:.0f}s: {summary.decode().strip()[:300]}")
        return {"rss_mb": peaks.rss_kb / 1024, "redis_mb": peaks.redis_bytes / 2**20,
                "redis_baseline_mb": baseline / 2**20, "seconds": elapsed}
    finally:
        procs.close()


def main() -> None:
    """Parse flags, run both phases, print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.submit", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="phase 1: rows ingested with no workers")
    parser.add_argument("--raw-rows", type=int, default=50_000, help="phase 1: messages of the apply_async loop")
    parser.add_argument("--stream-rows", type=int, default=1_000_000, help="phase 2: rows streamed (0 skips it)")
    parser.add_argument("--workers", type=int, default=2, help="phase 2: worker processes")
    args = parser.parse_args()
    url = redis_url()
    client = redis.Redis.from_url(url)
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp:
        root = Path(tmp)
        config = BenchConfig(root, url, {"cheap": TIER}, {"bench-1tier": ONE_TIER_PIPELINE.format(tier="cheap")},
                             high_water=args.rows + 1000)
        try:
            rows_per_s = ingest(config, root, args.rows)
            log(f"cascade-submit: {rows_per_s:.0f} rows/s; Redis now {client.info('memory')['used_memory_human']}")
            config.cleanup()
            celery_per_s = raw_celery(config, args.raw_rows)
            log(f"apply_async loop: {celery_per_s:.0f} messages/s")
            config.cleanup()
            redis_per_s = raw_redis(client, config.ns, args.rows)
            log(f"pipelined LPUSH: {redis_per_s:.0f} rows/s")
            config.cleanup()
        finally:
            config.cleanup()
        # phase 2 runs with the default backpressure: at most 2,000 messages ahead of the workers
        config = BenchConfig(root / "stream", url, {"cheap": TIER},
                             {"bench-1tier": ONE_TIER_PIPELINE.format(tier="cheap")})
        try:
            memory = stream(config, root, args.stream_rows, args.workers, client) if args.stream_rows else {}
        finally:
            config.cleanup()
    emit({
        "rows_per_s": round(rows_per_s, 1),
        "raw_celery_publish_per_s": round(celery_per_s, 1),
        "raw_redis_pipeline_rows_per_s": round(redis_per_s, 1),
        "rows": args.rows,
        "producer_peak_rss_mb": round(memory.get("rss_mb", 0), 1),
        "redis_peak_used_memory_mb": round(memory.get("redis_mb", 0), 1),
        "stream_rows": args.stream_rows,
        "stream_seconds": round(memory.get("seconds", 0), 1),
        "redis_baseline_used_memory_mb": round(memory.get("redis_baseline_mb", 0), 1),
    })


if __name__ == "__main__":
    main()
