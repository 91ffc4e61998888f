"""How fast the ledger takes records out of Redis, beside how fast two worker processes finalize jobs.

Phase 1: a private Redis (AOF everysec, as in docker-compose.yml), `--jobs` one-tier jobs pre-queued and
drained by two worker processes over a zero-latency provider (benchmarks/worker.py): the finalization
rate, steady state between 10% and 90% done. No ledger writer runs, so every record waits in the stream.
Phase 2: a ledger writer moves those records into SQLite (a file), then the same records (put back in a
fresh stream) into PostgreSQL (127.0.0.1:5432 if it answers, else a private server), in chunks of 1,000
per transaction, batch rows synced as they go. The writer's own rate is records / wall time of the drain.

    python -m benchmarks.ledger [--jobs 20000]

Prints one JSON line: sqlite_records_per_s, postgres_records_per_s, finalize_per_s, and each ratio to it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from benchmarks.harness import (ONE_TIER_PIPELINE, BenchConfig, Processes, cascade_cmd, emit, log, module_cmd,
                                redis_url, steady_rate)
from benchmarks.overhead import write_jobs
from benchmarks.worker import READY

TIER = {"cheap": {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": 128, "concurrency": 4}}


def finalize(config: BenchConfig, root: Path, jobs: int, client: redis.Redis) -> float:
    """Jobs finalized per second by two worker processes (one tier, every answer accepted)."""
    from cascade.worker.store import BatchStore

    write_jobs(root / "jobs.jsonl", jobs)
    batch = f"{config.ns}-ledger"
    submit = Processes(root).start("submit", cascade_cmd("cascade-submit", str(root / "jobs.jsonl"), "-p", "bench",
                                                         "--batch-id", batch, "--no-progress"), config.env(), ready=None)
    if submit.wait(timeout=900) != 0:
        raise RuntimeError((root / "submit.log").read_text()[-2000:])
    store = BatchStore(client, config.ns)
    procs = Processes(root)
    try:
        for i in range(2):
            procs.start(f"worker-{i}", module_cmd("benchmarks.worker", "--config", str(config.path), "--tier", "cheap",
                                                  "--concurrency", "4"), config.env(), ready=READY.encode())
        log("two workers up; draining")
        samples = []
        while (done := store.batch(batch).done) < jobs:
            samples.append((time.monotonic(), done))
            time.sleep(0.1)
        samples.append((time.monotonic(), done))
        return steady_rate(samples, jobs)
    finally:
        procs.close()


def drain_into(url: str, config: BenchConfig, client: redis.Redis, expected: int) -> float:
    """Records per second one ledger writer moves from the stream into the ledger at `url`."""
    from cascade.ledger.database import Ledger, ledger_url
    from cascade.ledger.writer import LedgerWriter
    from cascade.worker.config import load_settings

    settings = load_settings(config.path)
    ledger = Ledger(ledger_url(url, config.dir))
    writer = LedgerWriter(settings, client, ledger)
    writer.start()          # migrations happen here, before the clock starts
    started = time.monotonic()
    moved = writer.drain()
    elapsed = time.monotonic() - started
    if moved != expected:
        raise RuntimeError(f"the writer moved {moved} records, expected {expected}")
    ledger.close()
    return moved / elapsed


def postgres_database() -> tuple[str, object]:
    """A fresh database on 127.0.0.1:5432 (or a private server): its URL and the handle that drops it."""
    from tests.postgres_server import TestDatabase

    database = TestDatabase()
    return database.url, database


def main() -> None:
    """Run both phases; print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ledger", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    url = redis_url(appendonly=True)
    client = redis.Redis.from_url(url)
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp:
        root = Path(tmp)
        config = BenchConfig(root, url, TIER, {"bench": ONE_TIER_PIPELINE.format(tier="cheap")},
                             high_water=args.jobs + 1000)
        try:
            rate = finalize(config, root, args.jobs, client)
            log(f"finalized {rate:.0f} jobs/s with two workers")
            stream = f"{config.ns}:results"
            records = client.xrange(stream)
            sqlite = drain_into(f"sqlite:///{root / 'ledger.db'}", config, client, len(records))
            log(f"sqlite: {sqlite:.0f} records/s")
            client.delete(stream)
            pipe = client.pipeline(transaction=False)
            for _, fields in records:
                pipe.xadd(stream, fields)
            pipe.execute()
            client.sadd(f"{config.ns}:ledger:batches", f"{config.ns}-ledger")
            pg_url, database = postgres_database()
            try:
                postgres = drain_into(pg_url, config, client, len(records))
            finally:
                database.drop()
            log(f"postgres: {postgres:.0f} records/s")
        finally:
            config.cleanup()
    emit({
        "sqlite_records_per_s": round(sqlite, 1),
        "postgres_records_per_s": round(postgres, 1),
        "finalize_per_s": round(rate, 1),
        "sqlite_ratio": round(sqlite / rate, 2),
        "postgres_ratio": round(postgres / rate, 2),
        "target_ratio": 2.0,
        "jobs": args.jobs,
        "worker_processes": 2,
    })


if __name__ == "__main__":
    main()
