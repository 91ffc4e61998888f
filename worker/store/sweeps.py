"""What the reconciler and the worker heartbeat keep in Redis: live workers, due jobs, stopped tiers, dead letters."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from cascade.worker.store.keys import Keys, split_member
from cascade.worker.store.scripts import load_script

DEADLETTER_MAX = 10_000     # entries kept in the dead-letter list (the oldest are trimmed)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A registered worker process."""

    worker_id: str
    tier: str
    concurrency: int
    host: str = ""
    pid: int = 0
    started: float = 0.0


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job the reconciler took over: publish it again at ladder position `step` with number `seq`."""

    batch: str
    job_id: str
    step: int
    seq: int


class SweepStore:
    """The Redis side of heartbeats and reconciliation for one namespace."""

    def __init__(self, redis: Any, namespace: str = "cascade"):
        self.redis = redis
        self.keys = Keys(namespace)
        self._claim = load_script(redis, "claim_jobs")
        self._pipelines: dict[str, str] = {}

    # -- workers ---------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo, liveness_ms: int) -> None:
        """Announce a worker (and clear its tier's stop: a restarted worker may carry a fixed key)."""
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.workers, info.worker_id, orjson.dumps(asdict(info)))
        pipe.set(self.keys.worker(info.worker_id), b"1", px=liveness_ms)
        pipe.delete(self.keys.tier_status(info.tier))
        pipe.execute()

    def heartbeat(self, info: WorkerInfo, liveness_ms: int, leases: Sequence[tuple[str, str]], lease_ms: int) -> None:
        """This worker is alive and still holds `leases` ((batch, job id) pairs). Its registry entry is written
        again each time: one that a reader dropped while Redis was restarting comes back."""
        seconds, micros = self.redis.time()
        expiry = int(seconds) * 1000 + int(micros) // 1000 + lease_ms
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.workers, info.worker_id, orjson.dumps(asdict(info)))
        pipe.set(self.keys.worker(info.worker_id), b"1", px=liveness_ms)
        if leases:
            pipe.zadd(self.keys.leased, {f"{b}\x1f{j}": expiry for b, j in leases}, xx=True)
        pipe.execute()

    def unregister_worker(self, worker_id: str) -> None:
        """A worker stopped cleanly."""
        pipe = self.redis.pipeline()
        pipe.hdel(self.keys.workers, worker_id)
        pipe.delete(self.keys.worker(worker_id))
        pipe.execute()

    def live_workers(self) -> list[WorkerInfo]:
        """Registered workers whose heartbeat is current (the registry entries of dead ones are dropped)."""
        entries = self.redis.hgetall(self.keys.workers)
        if not entries:
            return []
        ids = [k.decode() for k in entries]
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.exists(self.keys.worker(worker_id))
        alive = pipe.execute()
        out, dead = [], []
        for worker_id, is_alive in zip(ids, alive):
            if not is_alive:
                dead.append(worker_id)
                continue
            d = orjson.loads(entries[worker_id.encode()])
            out.append(WorkerInfo(worker_id, d["tier"], int(d["concurrency"]), d.get("host", ""), d.get("pid", 0),
                                  d.get("started", 0.0)))
        if dead:
            self.redis.hdel(self.keys.workers, *dead)
        return out

    # -- stopped tiers ---------------------------------------------------------------------

    def stop_tier(self, tier: str, reason: str) -> bool:
        """Mark a tier stopped (every call would fail: a bad key); True when this call stopped it."""
        if not self.redis.hsetnx(self.keys.tier_status(tier), "reason", reason):
            return False
        self.redis.hset(self.keys.tier_status(tier), "since", f"{time.time():.3f}")
        return True

    def tier_stopped(self, tier: str) -> str | None:
        """Why the tier is stopped, or None when it runs."""
        reason = self.redis.hget(self.keys.tier_status(tier), "reason")
        return reason.decode() if reason is not None else None

    def stopped_tiers(self, tiers: Sequence[str]) -> dict[str, str]:
        """tier -> reason, for the stopped ones among `tiers`."""
        pipe = self.redis.pipeline(transaction=False)
        for tier in tiers:
            pipe.hget(self.keys.tier_status(tier), "reason")
        return {tier: r.decode() for tier, r in zip(tiers, pipe.execute()) if r is not None}

    # -- reconciliation --------------------------------------------------------------------

    def server_state(self) -> tuple[int, float]:
        """(Redis server time in ms, seconds since the server started)."""
        seconds, micros = self.redis.time()
        try:
            uptime = float(self.redis.info("server").get("uptime_in_seconds", 1e9))
        except ResponseError:
            uptime = 1e9        # fakeredis (embedded mode) has no INFO, and never restarts
        return int(seconds) * 1000 + int(micros) // 1000, uptime

    def expired_leases(self, now_ms: int, limit: int = 500) -> list[tuple[str, str, float]]:
        """(batch, job id, expiry) of leases nobody renewed."""
        rows = self.redis.zrangebyscore(self.keys.leased, "-inf", now_ms, start=0, num=limit, withscores=True)
        return [(*split_member(m), score) for m, score in rows]

    def overtaken(self, tier: str, limit: int = 500) -> list[tuple[str, str, float]]:
        """(batch, job id, seq) of queued jobs on `tier` with the `limit` lowest numbers."""
        rows = self.redis.zrange(self.keys.queued(tier), 0, limit - 1, withscores=True)
        return [(*split_member(m), score) for m, score in rows]

    def taken(self, tier: str) -> int:
        """The highest sequence number taken from the tier's queue."""
        return int(self.redis.get(self.keys.tier_taken(tier)) or 0)

    def pipeline_of(self, batch: str) -> str | None:
        """The pipeline a batch runs (cached: it never changes)."""
        name = self._pipelines.get(batch)
        if name is None:
            raw = self.redis.hget(self.keys.batch(batch), "pipeline")
            if raw is None:
                return None
            name = self._pipelines[batch] = raw.decode()
        return name

    def claim(self, ladder: Sequence[str], jobs: Sequence[tuple[str, str, str]]) -> list[Claimed]:
        """Take over jobs ((batch, job id, expectation) with 'L<expiry>' or 'Q<seq>') of one pipeline."""
        by_batch: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for batch, job_id, expect in jobs:
            by_batch[batch].append((job_id, expect))
        claimed = []
        k = self.keys
        for batch, items in by_batch.items():
            args: list[Any] = [len(ladder), batch]
            for job_id, expect in items:
                args += (job_id, expect)
            keys = [k.live(batch), k.batch(batch), k.leased, *map(k.queued, ladder), *map(k.tier_seq, ladder)]
            out = self._claim(keys=keys, args=args)
            claimed += [Claimed(batch, out[i].decode(), int(out[i + 1]), int(out[i + 2])) for i in range(0, len(out), 3)]
        return claimed

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter(self, entry: dict[str, Any]) -> None:
        """Take a message or job out of circulation, with its reason (the newest first)."""
        pipe = self.redis.pipeline()
        pipe.lpush(self.keys.deadletter, orjson.dumps({"at": round(time.time(), 3), **entry}))
        pipe.ltrim(self.keys.deadletter, 0, DEADLETTER_MAX - 1)
        pipe.execute()

    def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest dead-letter entries."""
        return [orjson.loads(raw) for raw in self.redis.lrange(self.keys.deadletter, 0, count - 1)]
