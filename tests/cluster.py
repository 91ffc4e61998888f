"""Integration harness: a test config on real Redis, real `cascade worker` processes, the simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import orjson
import redis

from cascade.examples.make_tickets import tickets
from cascade.simulator import load_scenario
from cascade.worker.config import load_settings
from cascade.worker.prompts import render
from tests.helpers import REPO, copy_config

BIN = Path(sys.executable).parent
SCENARIO = REPO / "examples" / "scenario.toml"
PASSES_STATIC_CHECKS = {"correct", "wrong"}   # malformed, hedge and truncated fail the ticket-triage chain


def fast_scenario(factor: int = 10):
    """The demo scenario with every latency divided by `factor`: the same answers, a shorter test."""
    import re

    from cascade.simulator import parse_scenario

    text = re.sub(r"latency_ms = \[(\d+), (\d+)\]",
                  lambda m: f"latency_ms = [{int(m.group(1)) // factor}, {int(m.group(2)) // factor}]",
                  SCENARIO.read_text())
    return parse_scenario(text, str(SCENARIO))


def cluster_config(tmp_path: Path, visibility_timeout_s: int = 3600) -> tuple[Path, str]:
    """A copy of config/ with its own namespace and queue names, so tests share a Redis safely."""
    ns = f"t{uuid.uuid4().hex[:10]}"

    def edit(text: str) -> str:
        text = text.replace('namespace = "cascade"', f'namespace = "{ns}"')
        text = text.replace("visibility_timeout_s = 3600", f"visibility_timeout_s = {visibility_timeout_s}")
        text = text.replace("backoff_base_s = 0.5", "backoff_base_s = 0.05")
        for tier in ("cheap", "mid", "frontier"):
            text = text.replace(f"[tiers.{tier}]\n", f'[tiers.{tier}]\nqueue = "{ns}.tier.{tier}"\n')
        return text

    return copy_config(tmp_path, edit), ns


def write_tickets(path: Path, n: int) -> list[dict]:
    """Write n demo tickets as JSONL; return them."""
    rows = list(tickets(n, seed=7))
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return rows


def predicted_decisions(config: Path, rows: Iterable[dict], pipeline: str = "ticket-triage") -> dict[str, tuple[str, str]]:
    """(status, final tier) per job id, worked out from the scenario without any HTTP."""
    settings = load_settings(config, environ={})
    pipe = settings.pipeline(pipeline)
    scenario = load_scenario(SCENARIO)
    out = {}
    for row in rows:
        _, user = render(pipe.prompt, {k: v for k, v in row.items() if k != "id"})
        for tier in pipe.ladder:
            if scenario.outcome(settings.tiers[tier].model, user) in PASSES_STATIC_CHECKS:
                out[row["id"]] = ("accepted", tier)
                break
        else:
            out[row["id"]] = ("accepted_unverified", pipe.ladder[-1])
    return out


def cascade_env(redis_url: str | None, sim_url: str) -> dict[str, str]:
    """The environment of a cascade process: Redis (or embedded when None) and every tier on the simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env["CASCADE_PROVIDER_BASE_URL"] = sim_url
    env["CASCADE_PROVIDER_API_KEY"] = "sim-key"
    if redis_url:
        env["CASCADE_REDIS_URL"] = redis_url
    return env


class Workers:
    """`cascade worker` subprocesses, one per tier, logging to files; stopped on close."""

    def __init__(self, config: Path, env: dict[str, str], log_dir: Path):
        self.config, self.env, self.log_dir = config, env, log_dir
        self.bin = BIN
        self.procs: dict[str, subprocess.Popen] = {}
        self._count = 0

    def start(self, tier: str, concurrency: int | None = None, env: dict[str, str] | None = None,
              extra: tuple[str, ...] = ()) -> subprocess.Popen:
        """Start a worker for a tier (with `env` instead of the cluster's, `extra` arguments such as --shadow) and
        wait until Celery reports it ready."""
        self._count += 1
        log = self.log_dir / f"worker-{tier}-{self._count}.log"
        cmd = [str(BIN / "cascade"), "worker", "--tier", tier, "--config", str(self.config), "--loglevel", "INFO"]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        cmd += list(extra)
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, env=env or self.env, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {tier} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        self.procs[f"{tier}-{self._count}"] = proc
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a worker: no warm shutdown, its unacked messages stay unacked."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        """Warm-stop every worker still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def delete_namespace(redis_url: str, ns: str) -> None:
    """Remove every key a test wrote under its namespace (and its queues)."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{ns}:*")) + list(client.scan_iter(f"{ns}.tier.*"))
    if keys:
        client.delete(*keys)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a console script of this venv; capture its output."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
