"""What travels: a tier queue carries a `JobRef` (ids only); the store keeps each job's `JobPayload`.

Keeping the payload in Redis, not in the message, is what lets the reconciler publish a job again when
its message is lost (a worker killed with a message popped but unread); the message stays tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cascade.errors import PoisonMessage
from cascade.models import Attempt, Job


@dataclass(frozen=True, slots=True)
class JobRef:
    """Run job `job_id` of `batch` at ladder position `tier_index` of `pipeline`; `seq` numbers the message."""

    batch: str
    pipeline: str
    job_id: str
    tier_index: int     # position in the pipeline's ladder (0: the first tier)
    seq: int = 0        # the tier queue's publish sequence number (the reconciler finds lost messages by it)

    def to_wire(self) -> dict[str, Any]:
        """Compact JSON-safe form for a Celery message."""
        return {"b": self.batch, "p": self.pipeline, "id": self.job_id, "t": self.tier_index, "s": self.seq}

    @classmethod
    def from_wire(cls, d: Any) -> JobRef:
        """Inverse of `to_wire`; PoisonMessage when `d` is not one."""
        try:
            ref = cls(d["b"], d["p"], d["id"], d["t"], d.get("s", 0))
        except (KeyError, TypeError, AttributeError):
            raise PoisonMessage(f"not a job message: {str(d)[:200]}") from None
        if not all(isinstance(v, str) and v for v in (ref.batch, ref.pipeline, ref.job_id)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (ref.tier_index, ref.seq)):
            raise PoisonMessage(f"not a job message: {str(d)[:200]}")
        return ref

    @property
    def label(self) -> str:
        """batch/job@tier, for logs and Celery's argsrepr."""
        return f"{self.batch}/{self.job_id}@{self.tier_index}"


@dataclass(frozen=True, slots=True)
class JobPayload:
    """A job as the store keeps it between tiers: its input fields, its earlier attempts, its retry round."""

    job: Job
    history: tuple[dict[str, Any], ...] = ()    # earlier attempts, as Attempt.to_dict()
    retry_round: int = 0                        # how many times `cascade retry` ran it again

    def to_json(self) -> bytes:
        """The stored form."""
        out: dict[str, Any] = {"f": self.job.fields, "l": self.job.line}
        if self.history:
            out["h"] = list(self.history)
        if self.retry_round:
            out["r"] = self.retry_round
        return orjson.dumps(out)

    @classmethod
    def from_json(cls, job_id: str, raw: bytes) -> JobPayload:
        """Inverse of `to_json`."""
        d = orjson.loads(raw)
        return cls(Job(job_id, d["f"], d.get("l", 0)), tuple(d.get("h", ())), d.get("r", 0))

    def escalated(self, attempt: Attempt) -> JobPayload:
        """The payload for the next tier, carrying this attempt in the history."""
        return JobPayload(self.job, (*self.history, attempt.to_dict()), self.retry_round)

    def retried(self) -> JobPayload:
        """The payload of a job put back by `cascade retry`."""
        return JobPayload(self.job, self.history, self.retry_round + 1)

    @property
    def attempts(self) -> list[Attempt]:
        """The history as Attempt values."""
        return [Attempt.from_dict(a) for a in self.history]
