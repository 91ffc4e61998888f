"""Batch records over Redis: open, register jobs, counters, results, and control (cancel, budget, retry)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from redis.exceptions import ResponseError

from cascade.errors import BatchGone, ConfigError
from cascade.worker.store.keys import Keys, check_batch_id
from cascade.worker.store.scripts import load_script

#: the states a batch record goes through
SUBMITTING, SUBMITTED, CANCELLED = "submitting", "submitted", "cancelled"


@dataclass(frozen=True)
class BatchRecord:
    """One batch as the store keeps it: what it is, how far it got, and every counter."""

    id: str
    pipeline: str
    state: str                      # submitting while the producer reads input, then submitted (or cancelled)
    mode: str                       # "embedded" | "distributed"
    created: float                  # epoch seconds of the first submission
    counters: Mapping[str, int]     # every integer field: total, done, cost, attempts:<tier>, ...
    source: str = ""                # the input it was submitted from (a file name)

    @classmethod
    def from_hash(cls, batch: str, raw: Mapping[bytes, bytes]) -> BatchRecord:
        """Parse the batch hash: integer fields become counters, the rest are the record's words."""
        words: dict[str, str] = {}
        counters: dict[str, int] = {}
        for k, v in raw.items():
            text = v.decode()
            if text.lstrip("-").isdigit():
                counters[k.decode()] = int(text)
            else:
                words[k.decode()] = text
        return cls(batch, words.get("pipeline", ""), words.get("state", ""), words.get("mode", ""),
                   float(words.get("created", 0) or 0), MappingProxyType(counters), words.get("source", ""))

    @property
    def total(self) -> int:
        """Jobs registered so far."""
        return self.counters.get("total", 0)

    @property
    def done(self) -> int:
        """Jobs with their final result."""
        return self.counters.get("done", 0)

    @property
    def budget_nanos(self) -> int:
        """The batch's budget in nano-USD (0: none)."""
        return self.counters.get("budget", 0)

    @property
    def finished(self) -> bool:
        """The whole input was submitted (or the batch cancelled) and every job has its result."""
        return self.state in (SUBMITTED, CANCELLED) and self.done >= self.total


@dataclass(frozen=True, slots=True)
class Registration:
    """One job as the producer registers it."""

    job_id: str
    line: int
    prompt_tokens: int      # estimate for budget reservations (0 when the batch has no budget)
    payload: bytes          # JobPayload JSON


@dataclass(frozen=True, slots=True)
class KeptJob:
    """A job that ended without an accepted answer, as `cascade retry` finds it."""

    job_id: str
    status: str
    step: int               # the ladder position it stopped at (where a retry starts)
    raw: bytes              # the kept value (a retry only takes it while it is unchanged)
    payload: bytes


class BatchStore:
    """Batch records, job registration, counters and result streams of one namespace."""

    def __init__(self, redis: Any, namespace: str = "cascade", retention_s: float = 0.0):
        """`retention_s`: how long a finished batch's keys stay in Redis (0: until deleted)."""
        self.redis = redis
        self.keys = Keys(namespace)
        self.retention_ms = round(retention_s * 1000)
        self._register = load_script(redis, "register_jobs")
        self._submitted = load_script(redis, "mark_submitted")
        self._retry = load_script(redis, "retry_jobs")

    # -- batches -------------------------------------------------------------------------

    def open_batch(self, batch: str, pipeline: str, budget_nanos: int = 0, mode: str = "", source: str = "") -> int:
        """Create the batch (or reopen it for the same pipeline); return this submission's run number.
        `source` names the input (a file name) in the batch's ledger row."""
        check_batch_id(batch)
        key = self.keys.batch(batch)
        existing = self.redis.hmget(key, "pipeline", "state")
        if existing[0] is not None and existing[0].decode() != pipeline:
            raise ConfigError(f"batch '{batch}' already exists for pipeline '{existing[0].decode()}'")
        if existing[1] == CANCELLED.encode():
            raise ConfigError(f"batch '{batch}' was cancelled; submit under another --batch-id")
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "pipeline", pipeline)
        pipe.hsetnx(key, "created", f"{time.time():.3f}")
        pipe.hset(key, mapping={"state": SUBMITTING, "mode": mode})
        if source:
            pipe.hset(key, "source", source)
        pipe.sadd(self.keys.ledger_batches, batch)       # the ledger writers keep its row up to date
        if budget_nanos:
            pipe.hset(key, "budget", budget_nanos)
        runs_at = len(pipe)
        pipe.hincrby(key, "runs", 1)
        for batch_key in self.keys.batch_keys(batch):     # resubmitted: live again until it finishes again
            pipe.persist(batch_key)
        return int(pipe.execute()[runs_at])

    def register_jobs(self, batch: str, run: int, first_tier: str, jobs: Sequence[Registration]) -> list[int]:
        """Register jobs of one run on the first tier: each one's message sequence number when new (publish it),
        0 when an earlier run registered it, -L when it repeats the id of line L of this run."""
        args: list[Any] = [run, batch]
        for job in jobs:
            args += (job.job_id, job.line, job.prompt_tokens, job.payload)
        keys = [self.keys.jobs(batch), self.keys.batch(batch), self.keys.live(batch), self.keys.payload(batch),
                self.keys.queued(first_tier), self.keys.tier_seq(first_tier)]
        with _gone_as(batch):
            return [int(code) for code in self._register(keys=keys, args=args)]

    def mark_submitted(self, batch: str, rejected: int) -> None:
        """The producer has read the whole input: the batch is complete once `done == total`."""
        with _gone_as(batch):
            self._submitted(keys=self.keys.batch_keys(batch), args=[rejected, self.retention_ms])

    def server_id(self) -> str | None:
        """The Redis server's run id: another one means it restarted, and may have forgotten writes; None where
        the server cannot say (the in-process store of embedded mode has no INFO, and cannot restart)."""
        try:
            return self.redis.info("server").get("run_id")
        except ResponseError:
            return None

    def batch(self, batch: str) -> BatchRecord | None:
        """The batch record with its counters, or None when there is no such batch."""
        raw = self.redis.hgetall(self.keys.batch(check_batch_id(batch)))
        return BatchRecord.from_hash(batch, raw) if raw else None

    def pipeline_counters(self, pipeline: str) -> dict[str, int]:
        """Counters of a pipeline over all its batches."""
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.keys.pipeline(pipeline)).items()}

    # -- control ---------------------------------------------------------------------------

    def cancel(self, batch: str) -> BatchRecord | None:
        """Stop the batch: queued jobs end `cancelled` as workers take them; calls in flight finish. A finished
        batch is left as it is (its record is returned, `finished`)."""
        record = self.batch(batch)
        if record is not None and not record.finished:
            self.redis.hset(self.keys.batch(batch), mapping={"state": CANCELLED, "cancelled_at": f"{time.time():.3f}"})
        return record

    def set_budget(self, batch: str, budget_nanos: int) -> None:
        """Give the batch a new budget (nano-USD); calls already refused stay refused until retried."""
        self.redis.hset(self.keys.batch(batch), "budget", budget_nanos)

    def kept_jobs(self, batch: str, statuses: Sequence[str]) -> Iterator[KeptJob]:
        """Jobs that ended with one of `statuses` and can be run again."""
        for job_id, raw in self.redis.hscan_iter(self.keys.kept(batch), count=500):
            head, _, payload = raw.partition(b"\n")
            status, step = head.decode().split("|")[:2]
            if status in statuses:
                yield KeptJob(job_id.decode(), status, int(step), raw, payload)

    def retry_jobs(self, batch: str, pipeline: str, ladder: Sequence[str], jobs: Sequence[tuple[KeptJob, bytes]]
                   ) -> list[tuple[str, int, int]]:
        """Put kept jobs back at the tier they stopped at, each with its new payload; (job id, step, seq) each."""
        args: list[Any] = [len(ladder), batch, 0]
        for kept, payload in jobs:
            args += (kept.job_id, kept.raw, payload)
        others = [self.keys.live(batch), self.keys.payload(batch)]
        args[2] = len(others)
        keys = [self.keys.jobs(batch), self.keys.batch(batch), self.keys.live(batch), self.keys.payload(batch),
                self.keys.kept(batch), self.keys.pipeline(pipeline), *map(self.keys.queued, ladder),
                *map(self.keys.tier_seq, ladder), *others]
        out = self._retry(keys=keys, args=args)
        if out:
            self.redis.sadd(self.keys.ledger_batches, batch)      # not finished any more: its ledger row follows
        return [(out[i].decode(), int(out[i + 1]), int(out[i + 2])) for i in range(0, len(out), 3)]

    def queue_depth(self, queue_name: str) -> int:
        """Messages waiting on a tier's queue, at every priority."""
        pipe = self.redis.pipeline(transaction=False)
        for name in Keys.queue_lists(queue_name):
            pipe.llen(name)
        return sum(pipe.execute())

    def queued_jobs(self, tier: str) -> int:
        """Jobs waiting for a worker of `tier` (their messages on its queue, or about to be published)."""
        return int(self.redis.zcard(self.keys.queued(tier)))


@contextmanager
def _gone_as(batch: str) -> Iterator[None]:
    """A script's refusal of a batch that is not in Redis (its NOBATCH error reply) as BatchGone."""
    try:
        yield
    except ResponseError as e:
        if str(e).startswith("NOBATCH"):
            raise BatchGone(batch) from None
        raise
