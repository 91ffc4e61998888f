"""One job's life on a worker, over Redis: take the lease, record the attempt once, or give the job back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cascade.worker.store.keys import Keys, member
from cascade.worker.store.scripts import load_script


class LeaseCode(IntEnum):
    """What `take_lease` decided (the codes of take_lease.lua)."""

    GO = 0              # leased: make the call
    DONE = 1            # the job is already final: a redelivered message, nothing to do
    STALE = 2           # this tier's step is already recorded, or the job is at another tier
    HELD = 3            # another worker holds the job: this message is a duplicate
    NO_BUDGET = 4       # leased, but the call does not fit the batch budget
    CANCELLED = 5       # leased, and the batch is cancelled
    POISON = 6          # leased, and delivered more often than allowed without being recorded
    UNKNOWN = 7         # no such job in the batch: the message is not one of ours


@dataclass(frozen=True, slots=True)
class Lease:
    """The outcome of taking a job: its code, and for a leased job its payload and reservation."""

    code: LeaseCode
    token: str = ""
    payload: bytes = b""
    paid: bytes = b""           # a completion paid by an earlier delivery whose recording failed
    reserved_nanos: int = 0
    deliveries: int = 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording an attempt did: counted once (`seq` of the next tier's message when it escalated),
    repeated (this very write already ran: a retry after a lost reply), or a duplicate (the lease was lost)."""

    counted: bool
    repeated: bool = False
    seq: int = 0


class JobStore:
    """The lease-and-record side of the store; a worker's threads share one."""

    def __init__(self, redis: Any, namespace: str = "cascade", retention_s: float = 0.0):
        self.redis = redis
        self.keys = Keys(namespace)
        self.retention_ms = round(retention_s * 1000)
        self._take = load_script(redis, "take_lease")
        self._record = load_script(redis, "record")
        self._release = load_script(redis, "release_lease")

    def take_lease(self, batch: str, job_id: str, tier_index: int, tier: str, seq: int, token: str, *,
                   lease_ms: int, reserve_per_token: float, reserve_per_call: int, max_deliveries: int) -> Lease:
        """Lease a job whose message a worker of `tier` (ladder position `tier_index`) took."""
        k = self.keys
        keys = [k.jobs(batch), k.batch(batch), k.live(batch), k.payload(batch), k.paid(batch), k.leased,
                k.queued(tier), k.tier_taken(tier)]
        args = [job_id, tier_index, seq, token, lease_ms, repr(reserve_per_token), reserve_per_call, max_deliveries,
                member(batch, job_id)]
        out = self._take(keys=keys, args=args)
        code = LeaseCode(int(out[0]))
        if len(out) == 1:
            return Lease(code)
        return Lease(code, token, out[1] or b"", out[2] or b"", int(out[3]), int(out[4]))

    def record_final(self, batch: str, pipeline: str, job_id: str, token: str, *, tier_index: int, cost_nanos: int,
                     record: bytes, counters: str, keep: str = "") -> Recorded:
        """Count the attempt (tier_index -1: no call was made) and finalize the job with its result record.
        `keep` ("status|step|final tier|counterfactual") keeps a job that can be retried."""
        k = self.keys
        keys = [k.jobs(batch), k.batch(batch), k.results, k.pipeline(pipeline), k.live(batch),
                k.payload(batch), k.paid(batch), k.kept(batch), k.leased, k.leased, k.leased]
        args = [job_id, tier_index, token, cost_nanos, "final", record, counters, self.retention_ms,
                member(batch, job_id), keep]
        return _recorded(self._record(keys=keys, args=args))

    def record_escalation(self, batch: str, pipeline: str, job_id: str, token: str, *, tier_index: int,
                          next_tier: str, cost_nanos: int, payload: bytes, counters: str) -> Recorded:
        """Count the attempt and move the job to `next_tier` with its new payload; `seq` is its message's number."""
        k = self.keys
        keys = [k.jobs(batch), k.batch(batch), k.results, k.pipeline(pipeline), k.live(batch),
                k.payload(batch), k.paid(batch), k.kept(batch), k.leased, k.queued(next_tier), k.tier_seq(next_tier)]
        args = [job_id, tier_index, token, cost_nanos, "escalate", payload, counters, self.retention_ms,
                member(batch, job_id), ""]
        return _recorded(self._record(keys=keys, args=args))

    def release(self, batch: str, job_id: str, tier: str, token: str, seq: int) -> bool:
        """Give a leased job back unrecorded (its message goes back on the queue with number `seq`)."""
        keys = [self.keys.live(batch), self.keys.batch(batch), self.keys.leased, self.keys.queued(tier)]
        return bool(self._release(keys=keys, args=[job_id, token, member(batch, job_id), seq]))

    def keep_paid(self, batch: str, job_id: str, completion: bytes) -> None:
        """Keep a paid completion whose recording failed, so the next delivery does not pay for it again."""
        self.redis.hset(self.keys.paid(batch), job_id, completion)

    def renew(self, leases: Iterable[tuple[str, str]], lease_ms: int) -> None:
        """Push back the expiry of leases this process holds ((batch, job id) pairs): the heartbeat."""
        members = [member(batch, job_id) for batch, job_id in leases]
        if not members:
            return
        now_ms = _server_ms(self.redis)
        self.redis.zadd(self.keys.leased, {m: now_ms + lease_ms for m in members}, xx=True)


def pack_counters(counters: Iterable[tuple[str, int]]) -> str:
    """Counters as record.lua reads them: one "name<TAB>n" per line, zeros left out."""
    return "\n".join(f"{_counter_name(name)}\t{n}" for name, n in counters if n)


def _counter_name(field: str) -> str:
    """A counter name that cannot break the packed list (reasons are free text)."""
    return field if field.isprintable() else "".join(c if c.isprintable() else " " for c in field)


def _recorded(out: list) -> Recorded:
    code = int(out[0])
    return Recorded(code == 1 or code == 2, code == 2, int(out[1]) if len(out) > 1 else 0)


def _server_ms(redis: Any) -> int:
    seconds, micros = redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
