"""Batch bookkeeping over Redis: a few round trips per job, each a Lua script where it must be atomic."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from types import MappingProxyType
from typing import Any

from cascade.errors import ConfigError
from cascade.worker.store.keys import Keys, check_batch_id


class Begin(IntEnum):
    """What `begin_attempt` decided."""

    GO = 0
    DONE = 1            # the job is already final: a redelivered message, nothing to do
    COUNTED = 2         # this tier already ran for the job (redelivered after it escalated)
    NO_BUDGET = 3       # the call does not fit the batch budget


def _script(name: str) -> str:
    return resources.files("cascade.worker.store").joinpath(f"lua/{name}.lua").read_text()


def _counter_name(field: str) -> str:
    """A counter name that cannot break the packed "name<TAB>n<NEWLINE>" list (reasons are free text)."""
    return field if field.isprintable() else "".join(c if c.isprintable() else " " for c in field)


@dataclass(frozen=True)
class BatchRecord:
    """One batch as the store keeps it: what it is, how far it got, and every counter."""

    id: str
    pipeline: str
    state: str                      # "submitting" while the producer reads input, then "submitted"
    mode: str                       # "embedded" | "distributed"
    created: float                  # epoch seconds of the first submission
    counters: Mapping[str, int]     # every integer field: total, done, cost, attempts:<tier>, ...

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
                   float(words.get("created", 0) or 0), MappingProxyType(counters))

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
        """The whole input was submitted and every job has its result."""
        return self.state == "submitted" and self.done >= self.total


class BatchStore:
    """Batch records, per-job state, counters and result streams of one namespace."""

    def __init__(self, redis: Any, namespace: str = "cascade", retention_s: float = 0.0):
        """`retention_s`: how long a finished batch's keys stay in Redis (0: until deleted)."""
        self.redis = redis
        self.keys = Keys(namespace)
        self.retention_ms = round(retention_s * 1000)
        self._register = redis.register_script(_script("register_jobs"))
        self._begin = redis.register_script(_script("begin_attempt"))
        self._finish = redis.register_script(_script("finish_attempt"))
        self._submitted = redis.register_script(_script("mark_submitted"))

    # -- batches -------------------------------------------------------------------------

    def open_batch(self, batch: str, pipeline: str, budget_nanos: int = 0, mode: str = "") -> int:
        """Create the batch (or reopen it for the same pipeline); return this submission's run number."""
        check_batch_id(batch)
        key = self.keys.batch(batch)
        existing = self.redis.hget(key, "pipeline")
        if existing is not None and existing.decode() != pipeline:
            raise ConfigError(f"batch '{batch}' already exists for pipeline '{existing.decode()}'")
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "pipeline", pipeline)
        pipe.hsetnx(key, "created", f"{time.time():.3f}")
        pipe.hset(key, mapping={"state": "submitting", "mode": mode})
        if budget_nanos:
            pipe.hset(key, "budget", budget_nanos)
        runs_at = len(pipe)
        pipe.hincrby(key, "runs", 1)
        for batch_key in self._expiring(batch):     # resubmitted: live again until it finishes again
            pipe.persist(batch_key)
        return int(pipe.execute()[runs_at])

    def register_jobs(self, batch: str, run: int, jobs: Sequence[tuple[str, int]]) -> list[int]:
        """Register (job id, line) pairs of one run: 1 publish, 0 already submitted, -L duplicate of line L."""
        args: list[Any] = [run]
        for job_id, line in jobs:
            args += (job_id, line)
        return self._register(keys=[self.keys.jobs(batch), self.keys.batch(batch)], args=args)

    def mark_published(self, batch: str, run: int, line: int) -> None:
        """Confirm that every registered row up to `line` of this run is on the queue."""
        self.redis.hset(self.keys.batch(batch), f"published:{run}", line)

    def mark_submitted(self, batch: str, rejected: int) -> None:
        """The producer has read the whole input: the batch is complete once `done == total`."""
        self._submitted(keys=self._expiring(batch), args=[rejected, self.retention_ms])

    def _expiring(self, batch: str) -> list[str]:
        """The keys of a batch that expire `retention_s` after it finishes: record, job states, results."""
        return [self.keys.batch(batch), self.keys.jobs(batch), self.keys.results(batch)]

    def batch(self, batch: str) -> BatchRecord | None:
        """The batch record with its counters, or None when there is no such batch."""
        raw = self.redis.hgetall(self.keys.batch(check_batch_id(batch)))
        return BatchRecord.from_hash(batch, raw) if raw else None

    def pipeline_counters(self, pipeline: str) -> dict[str, int]:
        """Counters of a pipeline over all its batches."""
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.keys.pipeline(pipeline)).items()}

    # -- attempts --------------------------------------------------------------------------

    def begin_attempt(self, batch: str, job_id: str, tier_index: int, reserve_nanos: int) -> Begin:
        """Check the job is still to do at this tier and reserve the call's expected cost."""
        code = self._begin(
            keys=[self.keys.jobs(batch), self.keys.batch(batch)], args=[job_id, tier_index, reserve_nanos]
        )
        return Begin(int(code))

    def finish_attempt(
        self,
        batch: str,
        pipeline: str,
        job_id: str,
        *,
        tier_index: int,
        release_nanos: int,
        cost_nanos: int,
        final: bool,
        record: bytes = b"",
        counters: Iterable[tuple[str, int]] = (),
    ) -> bool:
        """Count one attempt and, when `final`, finalize the job once; False for a duplicate."""
        # One argument for all counters: redis-py packs each argument on its own, and this is the hot path.
        packed = "\n".join(f"{_counter_name(field)}\t{n}" for field, n in counters if n)
        args = [job_id, tier_index, release_nanos, cost_nanos, "1" if final else "0", record, packed,
                self.retention_ms]
        keys = [self.keys.jobs(batch), self.keys.batch(batch), self.keys.results(batch), self.keys.pipeline(pipeline)]
        return bool(self._finish(keys=keys, args=args))

    # -- results ---------------------------------------------------------------------------

    def read_results(self, batch: str, after: bytes = b"-", count: int = 1000) -> list[tuple[bytes, bytes]]:
        """Up to `count` result records after stream id `after` (exclusive), as (id, record)."""
        start = after if after == b"-" else b"(" + after
        entries = self.redis.xrange(self.keys.results(batch), min=start, count=count)
        return [(entry_id, fields[b"r"]) for entry_id, fields in entries]

    def delete_results(self, batch: str, ids: Sequence[bytes]) -> None:
        """Drop records that have been written out, so the stream stays bounded."""
        if ids:
            self.redis.xdel(self.keys.results(batch), *ids)

    def queue_depth(self, queue_name: str) -> int:
        """Messages waiting on a tier's queue."""
        return int(self.redis.llen(Keys.queue(queue_name)))
