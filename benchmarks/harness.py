"""What every benchmark needs: a Redis, a private config and namespace, worker subprocesses, cleanup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import redis

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: a pipeline of one tier whose answers only need to be JSON: each job is exactly one call
ONE_TIER_PIPELINE = """
description = "benchmark: one call per job"
output = "json"
ladder = ["{tier}"]
[prompt]
system = "Answer with one JSON object."
user = "Subject: {{subject}}\\n\\n{{body}}"
[verifiers]
default = [{{ name = "truncation" }}, {{ name = "json" }}]
"""


def log(message: str) -> None:
    """Progress on stderr, with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """The benchmark's one JSON line on stdout."""
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


def redis_url(appendonly: bool = False) -> str:
    """CASCADE_TEST_REDIS_URL, else a private redis-server of this run (stopped when the benchmark exits), so a
    benchmark never shares a Redis with anything else; `appendonly` gives it AOF everysec, as in production."""
    url = os.environ.get("CASCADE_TEST_REDIS_URL", "").strip()
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        except (redis.RedisError, OSError) as e:
            sys.exit(f"benchmark: no Redis at {url} ({e})")
        return url
    import atexit
    import tempfile

    from tests.redis_server import PrivateRedis

    folder = Path(tempfile.mkdtemp(prefix="cascade-bench-redis-"))
    server = PrivateRedis(folder, appendonly=appendonly).start()

    def stop() -> None:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return server.url


class BenchConfig:
    """A config directory of its own: unique namespace and queue names, the repo's prices and schemas."""

    def __init__(self, root: Path, url: str, tiers: dict[str, dict], pipelines: dict[str, str],
                 high_water: int = 2000, chunk_size: int = 500, engine: dict | None = None):
        self.ns = f"bench{uuid.uuid4().hex[:8]}"
        self.url = url
        self.dir = root / "config"
        (self.dir / "pipelines").mkdir(parents=True)
        shutil.copytree(REPO / "config" / "schemas", self.dir / "schemas")
        engine = {"backoff_base_s": 0.05, **(engine or {})}
        lines = ["[redis]", f'url = "{url}"', f'namespace = "{self.ns}"', "", "[engine]",
                 *(f"{key} = {orjson.dumps(value).decode()}" for key, value in engine.items()), "",
                 "[producer]", f"high_water = {high_water}", f"chunk_size = {chunk_size}", ""]
        self.queues = []
        for name, options in tiers.items():
            queue = f"{self.ns}.tier.{name}"
            self.queues.append(queue)
            lines += [f"[tiers.{name}]", f'queue = "{queue}"']
            lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in options.items()]
            lines.append("")
        prices = (REPO / "config" / "cascade.toml").read_text()
        lines.append(prices[prices.index("[prices."):])
        self.path = self.dir / "cascade.toml"
        self.path.write_text("\n".join(lines))
        for name, text in pipelines.items():
            (self.dir / "pipelines" / f"{name}.toml").write_text(text)

    def env(self, sim_url: str = "") -> dict[str, str]:
        """Environment of a cascade subprocess: this config, and every tier on the simulator when given."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        env["CASCADE_CONFIG"] = str(self.path)
        if sim_url:
            env["CASCADE_PROVIDER_BASE_URL"] = sim_url
            env["CASCADE_PROVIDER_API_KEY"] = "sim-key"
        return env

    def cleanup(self) -> None:
        """Delete every key of this namespace, its queues and kombu's bindings for them."""
        client = redis.Redis.from_url(self.url)
        patterns = [f"{self.ns}:*", f"{self.ns}.*", f"_kombu.binding.{self.ns}.*",
                    f"_kombu.binding_permanent.{self.ns}.*"]
        keys = [k for p in patterns for k in client.scan_iter(p, count=1000)]
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
        client.close()


class Processes:
    """Subprocesses logging to files; `start` waits for a readiness line; all stopped on close."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str], ready: bytes | None = b" ready.",
              timeout_s: float = 60) -> subprocess.Popen:
        """Start `cmd`; with `ready`, wait until its log shows that line."""
        path = self.log_dir / f"{name}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while ready is not None and ready not in path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{path.read_text()[-3000:]}")
            time.sleep(0.1)
        return proc

    def close(self) -> None:
        """Warm-stop every process, killing what does not stop within 30 s."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.1, what: str = "") -> None:
    """Poll `condition` until it holds; RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what or condition}")
        time.sleep(poll_s)


def steady_rate(samples: Sequence[tuple[float, int]], total: int, low: float = 0.1, high: float = 0.9) -> float:
    """Units per second between the samples where progress first reached `low` and `high` of `total`."""
    first = next(s for s in samples if s[1] >= low * total)
    last = next(s for s in samples if s[1] >= high * total)
    return (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("nan")


def cascade_cmd(*args: str) -> list[str]:
    """A console script of this environment."""
    return [str(BIN / args[0]), *args[1:]]


def module_cmd(module: str, *args: str) -> list[str]:
    """`python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]
