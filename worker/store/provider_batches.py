"""Provider batches of batch-mode tiers, over Redis: which jobs went into which provider batch.

A record is written with its members before the provider batch is created, so a worker that restarts
finds it, asks the provider whether the batch exists, and polls it instead of submitting its jobs again.
Each parked job also names its record (`parked` hash, by ladder step), which is how a redelivered job
finds the provider batch that already holds its request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from cascade.worker.store.keys import Keys
from cascade.worker.store.scripts import load_script

CREATING = "creating"       # members recorded, the provider batch not yet known to exist
SUBMITTED = "submitted"     # the provider has it: poll until it ends
ENDED = "ended"             # every line is back: its results are being applied


@dataclass
class ProviderBatch:
    """One provider batch as Cascade tracks it; `members` maps custom_id -> [job id, tries so far]."""

    id: str                             # Cascade's own id (the provider's comes later)
    tier: str
    tier_index: int
    batch: str                          # the Cascade batch every member belongs to
    pipeline: str
    provider: str
    owner: str                          # the worker that created it
    created_at: float
    members: dict[str, list[Any]] = field(default_factory=dict)
    state: str = CREATING
    provider_id: str = ""
    status: str = ""                    # the provider's own word
    counts: dict[str, int] = field(default_factory=dict)
    submitted_at: float = 0.0
    ended_at: float = 0.0
    cancel_sent: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ProviderBatch:
        return cls(**orjson.loads(raw))


class ProviderBatchStore:
    """Records of open provider batches, per tier; the parked-job index, per Cascade batch."""

    def __init__(self, redis: Any, namespace: str = "cascade"):
        self.redis = redis
        self.keys = Keys(namespace)
        self._save = load_script(redis, "save_provider_batch")

    def open(self, record: ProviderBatch) -> None:
        """Record a provider batch and park its members on it, in one transaction (before it is created)."""
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.provider_batches(record.tier), record.id, record.to_json())
        pipe.hset(self.keys.parked(record.batch),
                  mapping={_field(record.tier_index, job): record.id for job, _ in record.members.values()})
        pipe.execute()

    def save(self, record: ProviderBatch) -> bool:
        """Write the record's new state; False when it was closed meanwhile."""
        return bool(self._save(keys=[self.keys.provider_batches(record.tier)], args=[record.id, record.to_json()]))

    def close(self, record: ProviderBatch) -> None:
        """Forget a provider batch whose every member was applied (or moved to another provider batch)."""
        self.redis.hdel(self.keys.provider_batches(record.tier), record.id)

    def records(self, tier: str) -> list[ProviderBatch]:
        """Every open provider batch of a tier."""
        return [ProviderBatch.from_json(raw) for raw in self.redis.hvals(self.keys.provider_batches(tier))]

    def record(self, tier: str, record_id: str) -> ProviderBatch | None:
        """One open provider batch, or None."""
        raw = self.redis.hget(self.keys.provider_batches(tier), record_id)
        return ProviderBatch.from_json(raw) if raw else None

    def parked_in(self, batch: str, tier_index: int, job_id: str) -> str | None:
        """The record id of the provider batch that holds the job's request at this step, if any."""
        raw = self.redis.hget(self.keys.parked(batch), _field(tier_index, job_id))
        return raw.decode() if raw else None

    def still_parked(self, record: ProviderBatch, job_ids: Iterable[str]) -> list[str]:
        """Of these members, the jobs still parked on this record (not applied, not moved on)."""
        jobs = list(job_ids)
        if not jobs:
            return []
        values = self.redis.hmget(self.keys.parked(record.batch), [_field(record.tier_index, j) for j in jobs])
        return [j for j, v in zip(jobs, values) if v is not None and v.decode() == record.id]

    def unpark(self, batch: str, tier_index: int, job_id: str, record_id: str) -> None:
        """The job's step is recorded: it is no longer parked on `record_id` (a newer parking is kept)."""
        key, name = self.keys.parked(batch), _field(tier_index, job_id)
        raw = self.redis.hget(key, name)
        if raw is not None and raw.decode() == record_id:
            self.redis.hdel(key, name)

    def cancelled(self, batch: str) -> bool:
        """Whether the Cascade batch was cancelled (its open provider batches are cancelled too)."""
        return self.redis.hget(self.keys.batch(batch), "state") == b"cancelled"

    def owner_alive(self, worker_id: str) -> bool:
        """Whether the worker that owns a record still sends heartbeats."""
        return bool(self.redis.exists(self.keys.worker(worker_id)))


def _field(tier_index: int, job_id: str) -> str:
    return f"{tier_index}:{job_id}"
