"""Fault matrix on real processes: a private Redis (AOF everysec), real `cascade worker` processes, the simulator
as its own process, `cascade-submit --wait`. Each scenario runs one batch through one kind of fault:

  worker_kills      SIGKILL of a random worker every ~2.5 s (restarted at once), 22 kills
  budget_kills      a binding budget, with kills
  producer_kill     SIGKILL of the producer mid-submit, then the same command again (resume)
  redis_restart     Redis shut down mid-batch, started again 3 s later
  redis_crash       Redis SIGKILLed mid-batch, the last second of its AOF cut (a host crash), started again
  redis_wipe        Redis stopped mid-batch and started again without its data (no AOF, a lost volume)
  provider_outage   30 s of 500s, then the provider process stopped for 30 s
  storm_429         20 s of 429s with retry-after 2 s
  wrong_key         the cheap tier's worker starts with a wrong key; restarted with the right one after 15 s
  poison            poison messages of five kinds pushed onto the cheap queue mid-batch

Per scenario and in total: submitted, records, duplicates, lost (missing), stuck, failed by a transient
cause, counters equal to records, spend equal to the sum of record costs, budget overshoot, the time until
a killed worker's jobs were running again, and whether every worker was alive at the end.

    python -m benchmarks.faults [--scale 1.0] [--only worker_kills,poison]
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2
import orjson
import redis

from benchmarks.harness import REPO, BenchConfig, cascade_cmd, emit, log, wait_until
from cascade.examples.make_tickets import tickets
from tests.redis_server import PrivateRedis, _free_port

TIERS = {
    "cheap": {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": 128, "timeout_s": 30, "concurrency": 8},
    "mid": {"provider": "anthropic", "model": "claude-haiku-4-5", "max_tokens": 128, "timeout_s": 30,
            "concurrency": 4},
    "frontier": {"provider": "anthropic", "model": "claude-sonnet-4-6", "max_tokens": 128, "timeout_s": 30,
                 "concurrency": 4},
}
PIPELINE = REPO / "config" / "pipelines" / "ticket-triage.toml"
SCENARIO = REPO / "examples" / "scenario.toml"
RIGHT_KEY = "sim-key"


class Simulator:
    """`cascade sim serve` as its own process on a fixed port, so it can be stopped and started again."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._earlier_calls = 0       # answered by processes stopped since (a restart starts its counters at 0)

    def start(self) -> None:
        with open(self.root / "sim.log", "ab") as out:
            self.proc = subprocess.Popen(cascade_cmd("cascade", "sim", "serve", "--scenario", str(SCENARIO),
                                                     "--port", str(self.port)), stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._up, 30, what="the simulator")

    def _up(self) -> bool:
        try:
            return httpx2.get(self.url + "/health", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._earlier_calls = self.calls()
            self.proc.kill()
            self.proc.wait()

    def control(self, **body) -> None:
        httpx2.post(self.url + "/control", json=body, timeout=5).raise_for_status()

    def calls(self) -> int:
        """Answered calls (200s), all models."""
        stats = httpx2.get(self.url + "/stats", timeout=5).json()
        return self._earlier_calls + sum(m["ok"] for m in stats["models"].values())


class Cluster:
    """One worker process per tier (more on demand), killed and restarted as a scenario says."""

    def __init__(self, config: BenchConfig, sim: Simulator, root: Path):
        self.config, self.sim, self.root = config, sim, root
        self.procs: dict[str, list[subprocess.Popen]] = {tier: [] for tier in TIERS}
        self.count = 0

    def env(self, key: str = RIGHT_KEY) -> dict[str, str]:
        env = self.config.env(self.sim.url)
        env["CASCADE_PROVIDER_API_KEY"] = key
        return env

    def start(self, tier: str, key: str = RIGHT_KEY) -> subprocess.Popen:
        self.count += 1
        path = self.root / f"worker-{tier}-{self.count}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(cascade_cmd("cascade", "worker", "--tier", tier, "--loglevel", "WARNING"),
                                    env=self.env(key), stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: b"cascade worker: tier" in path.read_bytes() or proc.poll() is not None, 60,
                   what=f"worker {tier}")
        time.sleep(1.0)           # Celery's consumer is up a moment after our banner
        self.procs[tier].append(proc)
        return proc

    def start_all(self) -> None:
        for tier in TIERS:
            self.start(tier)

    def alive(self) -> list[subprocess.Popen]:
        return [p for procs in self.procs.values() for p in procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for procs in self.procs.values():
            if proc in procs:
                procs.remove(proc)

    def stop(self) -> None:
        procs = [p for ps in self.procs.values() for p in ps]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for ps in self.procs.values():
            ps.clear()


class Run:
    """One scenario's batch: input, producer, and the figures read back at the end."""

    def __init__(self, name: str, rows: int, cluster: Cluster, client: redis.Redis, root: Path, budget: float = 0):
        self.name, self.n, self.cluster, self.client, self.root, self.budget = name, rows, cluster, client, root, budget
        self.batch = f"faults-{name}"
        self.source = root / f"{name}.jsonl"
        self.out = root / f"{name}.out.jsonl"
        rows_ = list(tickets(rows, seed=hash(name) % 1000))
        self.ids = [r["id"] for r in rows_]
        self.source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows_))
        self.producer: subprocess.Popen | None = None
        self.calls_before = cluster.sim.calls()

    def submit(self) -> subprocess.Popen:
        args = ["cascade-submit", str(self.source), "-p", "ticket-triage", "--batch-id", self.batch, "--wait",
                "--out", str(self.out), "--no-progress"]
        if self.budget:
            args += ["--budget", str(self.budget)]
        err = open(self.root / f"{self.name}.submit.log", "ab")
        self.producer = subprocess.Popen(cascade_cmd(*args), env=self.cluster.env(), stdout=subprocess.DEVNULL,
                                         stderr=err)
        return self.producer

    def key(self, suffix: str = "") -> str:
        return f"{self.cluster.config.ns}:batch:{self.batch}{suffix}"

    def done(self) -> int:
        try:
            return int(self.client.hget(self.key(), "done") or 0)
        except redis.RedisError:
            return 0

    def wait_done(self, share: float, timeout: float = 300) -> None:
        wait_until(lambda: self.done() >= share * self.n, timeout, what=f"{self.name}: {share:.0%} done")

    def finish(self, timeout: float = 600) -> dict:
        """Wait for the producer, then read the records and counters back."""
        finished = True
        try:
            self.producer.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            finished = False
            self.producer.kill()
        records = [orjson.loads(line) for line in self.out.read_bytes().splitlines() if line.strip()] \
            if self.out.exists() else []
        by_id: dict[str, dict] = {}
        for r in records:
            by_id.setdefault(r["id"], r)
        raw = {k.decode(): v.decode() for k, v in self.client.hgetall(self.key()).items()}
        counters = {k: int(v) for k, v in raw.items() if v.lstrip("-").isdigit()}
        statuses = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("status:")}
        attempts_counted = sum(v for k, v in counters.items() if k.startswith("attempts:"))
        attempts_recorded = sum(len(r["attempts"]) for r in by_id.values())
        spend = counters.get("cost", 0)
        recorded_spend = sum(round(a["cost_usd"] * 1e9) for r in by_id.values() for a in r["attempts"])
        transient = sum(1 for r in by_id.values() if r["status"] == "failed" and
                        r.get("reason", "").startswith(("transient:", "server_error", "connection", "timeout",
                                                         "rate_limited", "tier_unusable", "poison")))
        return {
            "submitted": self.n,
            "records": len(by_id),
            # a job kept twice in the results (the ledger stores one record per job id; a job run again after
            # Redis lost its last second shows in calls_beyond_records instead)
            "duplicates": len(records) - len(by_id),
            "lost": len(set(self.ids) - set(by_id)),
            "stuck": 0 if finished else max(0, counters.get("total", 0) - counters.get("done", 0)),
            "failed_transient": transient,
            "statuses": statuses,
            "counters_consistent": (sum(statuses.values()) == len(by_id) and attempts_counted == attempts_recorded
                                    and counters.get("done", 0) == counters.get("total", 0) == len(by_id)),
            "attempts_counted_minus_recorded": attempts_counted - attempts_recorded,
            "spend_equals_records": spend == recorded_spend,
            "spend_minus_records_usd": (spend - recorded_spend) / 1e9,
            "duplicate_spend_usd": counters.get("cost_duplicate", 0) / 1e9,
            "republished": counters.get("republished", 0),
            "provider_calls": (calls := self.cluster.sim.calls() - self.calls_before),
            # answered calls whose answer no record holds: in flight in a killed worker, or run again after
            # Redis lost its last second (paid twice)
            "calls_beyond_records": calls - attempts_recorded,
            "budget_overshoot_usd": max(0.0, spend / 1e9 - self.budget) if self.budget else 0.0,
            "producer_exit": self.producer.returncode,
        }


class RecoveryWatch:
    """After a kill: how long until every job the killed worker held is running again (or done)."""

    def __init__(self, client: redis.Redis, ns: str):
        self.client, self.ns = client, ns
        self.times: list[float] = []
        self._threads: list[threading.Thread] = []

    def held_by(self, pid: int) -> list[tuple[str, str, bytes]]:
        """(batch, job, token) of the leases a worker process holds."""
        workers = {k.decode(): orjson.loads(v) for k, v in self.client.hgetall(f"{self.ns}:workers").items()}
        ids = [w for w, info in workers.items() if info.get("pid") == pid]
        if not ids:
            return []
        held = []
        for member in self.client.zrange(f"{self.ns}:leased", 0, -1):
            batch, job = member.decode().split("\x1f", 1)
            state = self.client.hget(f"{self.ns}:batch:{batch}:live", job)
            if state is not None:
                token = state.split(b"|")[1]
                if any(token.endswith(f"@{w}".encode()) for w in ids):
                    held.append((batch, job, token))
        return held

    def watch(self, held: list[tuple[str, str, bytes]], killed_at: float) -> None:
        def run() -> None:
            pending = list(held)
            while pending and time.monotonic() - killed_at < 300:
                still = []
                for batch, job, token in pending:
                    state = self.client.hget(f"{self.ns}:batch:{batch}:live", job)
                    if state is not None and state.split(b"|")[1] in (token, b""):
                        still.append((batch, job, token))
                pending = still
                time.sleep(0.1)
            if held:
                self.times.append(time.monotonic() - killed_at)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=320)


def _poison(client: redis.Redis, queue: str) -> int:
    messages = [b"\x00\xffnot json", orjson.dumps({"foo": 1}),
                orjson.dumps({"body": "%%%", "properties": {"delivery_tag": "x", "body_encoding": "base64"},
                              "headers": {"task": "cascade.attempt"}, "content-type": "application/json"}),
                orjson.dumps({"body": "e30=", "properties": {"delivery_tag": "y", "body_encoding": "base64"},
                              "headers": {"task": "not.ours"}, "content-type": "application/json"})]
    for message in messages * 2:
        client.lpush(queue, message)
    return len(messages) * 2


def scenario(name: str, cluster: Cluster, server: PrivateRedis, root: Path, scale: float) -> dict:
    """Run one scenario; return its figures."""
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    n = lambda rows: max(200, int(rows * scale))
    ns = cluster.config.ns
    extra: dict = {}
    if name == "worker_kills" or name == "budget_kills":
        budget = 0.0 if name == "worker_kills" else 0.05 * scale
        run = Run(name, n(4000 if name == "worker_kills" else 1500), cluster, client, root, budget)
        watch = RecoveryWatch(client, ns)
        run.submit()
        run.wait_done(0.05)
        kills = 22 if name == "worker_kills" else 6
        rng = random.Random(7)
        for _ in range(kills):
            if run.producer.poll() is not None:
                break
            tier = rng.choices(list(TIERS), weights=[6, 2, 1])[0]
            if not cluster.procs[tier]:
                continue
            victim = rng.choice(cluster.procs[tier])
            held = watch.held_by(victim.pid)
            killed_at = time.monotonic()
            cluster.kill(victim)
            watch.watch(held, killed_at)
            cluster.start(tier)
            time.sleep(rng.uniform(1.5, 3.0))
        figures = run.finish()
        watch.join()
        extra = {"kills": kills, "recovery_s": round(max(watch.times), 2) if watch.times else None,
                 "recovery_median_s": round(sorted(watch.times)[len(watch.times) // 2], 2) if watch.times else None}
    elif name == "producer_kill":
        run = Run(name, n(3000), cluster, client, root)
        run.submit()
        wait_until(lambda: int(client.hget(run.key(), "total") or 0) >= run.n // 3, 120, what="a third registered")
        run.producer.send_signal(signal.SIGKILL)
        run.producer.wait()
        run.submit()          # the same command again: it resumes
        figures = run.finish()
    elif name in ("redis_restart", "redis_crash", "redis_wipe"):
        run = Run(name, n(3000), cluster, client, root)
        run.submit()
        run.wait_done(0.35)
        if name == "redis_restart":
            server.shutdown()
            time.sleep(3)
        elif name == "redis_crash":
            server.kill()
            extra["aof"] = server.cut_last_second().splitlines()[-1]
        else:
            server.kill()
            server.forget_data()
        server.start()
        figures = run.finish()
        if name == "redis_wipe":    # Redis counts only what was submitted again: its counters cannot equal records
            figures["counters_consistent"] = None
    elif name == "provider_outage":
        run = Run(name, n(2000), cluster, client, root)
        run.submit()
        run.wait_done(0.2)
        cluster.sim.control(mode="500")
        time.sleep(30)
        cluster.sim.control(mode="ok")
        cluster.sim.stop()
        time.sleep(30)
        cluster.sim.start()
        figures = run.finish()
    elif name == "storm_429":
        run = Run(name, n(1500), cluster, client, root)
        run.submit()
        run.wait_done(0.2)
        cluster.sim.control(mode="429", retry_after_s=2)
        time.sleep(20)
        cluster.sim.control(mode="ok")
        figures = run.finish()
    elif name == "wrong_key":
        for proc in list(cluster.procs["cheap"]):
            cluster.kill(proc)
        cluster.start("cheap", key="wrong")
        cluster.sim.control(api_key=RIGHT_KEY)
        run = Run(name, n(1000), cluster, client, root)
        run.submit()
        time.sleep(15)
        stopped = client.hget(f"{ns}:tier:cheap:status", "reason")
        extra["stopped_reason"] = stopped.decode() if stopped else None
        for proc in list(cluster.procs["cheap"]):
            proc.terminate()
            proc.wait(timeout=60)
            cluster.procs["cheap"].remove(proc)
        cluster.start("cheap")
        figures = run.finish()
        cluster.sim.control(api_key=None)
    elif name == "poison":
        run = Run(name, n(1000), cluster, client, root)
        before = client.llen(f"{ns}:deadletter")
        run.submit()
        run.wait_done(0.2)
        pushed = _poison(client, f"{ns}.tier.cheap")
        figures = run.finish()
        extra = {"poison_pushed": pushed, "dead_lettered": client.llen(f"{ns}:deadletter") - before}
    else:
        raise SystemExit(f"unknown scenario {name}")
    figures.update(extra)
    figures["workers_alive"] = all(p.poll() is None for ps in cluster.procs.values() for p in ps)
    return figures


ORDER = ("worker_kills", "budget_kills", "producer_kill", "redis_restart", "redis_crash", "redis_wipe",
         "provider_outage", "storm_429", "wrong_key", "poison")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every batch's size")
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    args = parser.parse_args(argv)
    names = [s for s in args.only.split(",") if s] or list(ORDER)
    root = Path(tempfile.mkdtemp(prefix="cascade-faults-"))
    log(f"faults: logs in {root}")
    server = PrivateRedis(root / "redis").start()
    sim = Simulator(root)
    sim.start()
    config = BenchConfig(root, server.url, TIERS, {"ticket-triage": PIPELINE.read_text()}, high_water=2000,
                         engine={"backoff_max_s": 5.0})
    cluster = Cluster(config, sim, root)
    scenarios: dict[str, dict] = {}
    started = time.monotonic()
    try:
        cluster.start_all()
        for name in names:
            t0 = time.monotonic()
            log(f"faults: {name}")
            scenarios[name] = scenario(name, cluster, server, root, args.scale)
            scenarios[name]["seconds"] = round(time.monotonic() - t0, 1)
            log(f"faults: {name}: {orjson.dumps(scenarios[name]).decode()}")
            if not cluster.alive() or any(not cluster.procs[t] for t in TIERS):
                cluster.stop()
                cluster.start_all()
    finally:
        cluster.stop()
        sim.stop()
        server.stop()
    recovery = [s["recovery_s"] for s in scenarios.values() if s.get("recovery_s") is not None]
    result = {
        "lost": sum(s["lost"] for s in scenarios.values()),
        "stuck": sum(s["stuck"] for s in scenarios.values()),
        "failed_transient": sum(s["failed_transient"] for s in scenarios.values()),
        "duplicates": sum(s["duplicates"] for s in scenarios.values()),
        "counters_consistent": all(s["counters_consistent"] is not False for s in scenarios.values()),
        "budget_overshoot_usd": max((s["budget_overshoot_usd"] for s in scenarios.values()), default=0.0),
        "recovery_s": max(recovery) if recovery else None,
        "recovery_target_s": 2 * TIERS["cheap"]["timeout_s"],
        "workers_alive": all(s["workers_alive"] for s in scenarios.values()),
        "submitted": sum(s["submitted"] for s in scenarios.values()),
        "seconds": round(time.monotonic() - started, 1),
        "scenarios": scenarios,
    }
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
