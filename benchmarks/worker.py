"""A Celery worker for benchmarks, started like `cascade worker` with the same settings and arguments.

Either a tier's engine over `InstantProvider` (answers in-process, no I/O, so what is measured is
Cascade's own overhead), or plain no-op tasks on a queue (the raw Celery baseline). With
`--counter-file`, the process counts its Redis round trips (one per command or pipeline sent) and
writes the running total there every 0.2 s.

    python -m benchmarks.worker --config C --tier cheap [--pass-rate 0.8] [--concurrency 4]
    python -m benchmarks.worker --config C --noop-queue Q [--concurrency 4]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import zlib
from pathlib import Path

from cascade.models import Completion, CompletionRequest, Usage

NOOP_TASK = "bench.noop"
READY = "benchmark worker ready."
GOOD = '{"category": "other", "priority": "low"}'
MALFORMED = '{"category": "other", "priority": '


class InstantProvider:
    """Answers at once: valid JSON for `pass_rate` of prompts (chosen by a hash of the prompt), else malformed."""

    supports_logprobs = False
    supports_n = False

    def __init__(self, model: str, pass_rate: float):
        self.salt = zlib.crc32(model.encode())
        self.threshold = int(pass_rate * 2**32)

    def complete(self, request: CompletionRequest) -> Completion:
        """One answer with plausible usage and no latency."""
        passes = zlib.crc32(request.user.encode(), self.salt) < self.threshold
        usage = Usage(input_tokens=len(request.user) // 4 + 20, output_tokens=12)
        return Completion(GOOD if passes else MALFORMED, usage, "stop", request.model, 0.0)


def count_round_trips(path: Path) -> None:
    """Count every command or pipeline redis-py sends from this process; keep `path` up to date."""
    import redis.connection

    count = [0]
    lock = threading.Lock()
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        with lock:
            count[0] += 1
        return original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counted

    def flush() -> None:
        while True:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(str(count[0]))
            os.replace(tmp, path)
            time.sleep(0.2)

    threading.Thread(target=flush, daemon=True, name="roundtrip-counter").start()


def main() -> None:
    """Parse flags and run the worker until it is stopped."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--tier")
    parser.add_argument("--noop-queue")
    parser.add_argument("--pass-rate", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--counter-file", type=Path)
    args = parser.parse_args()

    from cascade.worker.backends import worker_runtime
    from cascade.worker.celery_app import create_app
    from cascade.worker.config import load_settings
    from cascade.worker.runtime import ProviderPool

    settings = load_settings(args.config)
    if args.counter_file:
        count_round_trips(args.counter_file)
    if args.noop_queue:
        app = create_app(settings)
        app.task(name=NOOP_TASK, ignore_result=True)(noop)
        queue, name = args.noop_queue, "noop"
    else:
        tier = settings.tiers[args.tier]
        providers = ProviderPool(settings, {tier.name: InstantProvider(tier.model, args.pass_rate)})
        box: dict[str, object] = {}
        app = create_app(settings, lambda: box["runtime"].engine)
        runtime = box["runtime"] = worker_runtime(settings, app, tier.name, args.concurrency, providers)
        runtime.start()         # heartbeat and reconciler, as `cascade worker` runs them
        queue, name = tier.queue_name, tier.name
    from celery.signals import worker_ready

    # Task logs at WARNING, so per-task INFO lines cost neither run; announce readiness ourselves.
    worker_ready.connect(lambda **_: print(READY, flush=True), weak=False)
    # the arguments `cascade worker` passes (cli/services.py)
    app.worker_main([
        "worker", "--queues", queue, "--pool", "threads", "--concurrency", str(args.concurrency),
        "--prefetch-multiplier", "1", "--loglevel", "WARNING", "--hostname", f"{name}@%h-{os.getpid()}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])


def noop(*args: object) -> None:
    """The raw Celery baseline's task: nothing."""


if __name__ == "__main__":
    main()
