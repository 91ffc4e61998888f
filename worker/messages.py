"""The message a tier queue carries: ids and plain values, the attempt history included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cascade.models import Attempt, Job


@dataclass(frozen=True, slots=True)
class AttemptMessage:
    """Run job `job` of `batch` on ladder position `tier_index` of `pipeline`."""

    batch: str
    pipeline: str
    tier_index: int                             # position in the pipeline's ladder (0: the first tier)
    job: Job
    history: tuple[dict[str, Any], ...] = ()   # earlier attempts, as Attempt.to_dict()
    budgeted: bool = False                      # the batch has a budget: every call reserves against it

    def to_wire(self) -> dict[str, Any]:
        """Compact JSON-safe form for a Celery message."""
        wire = {"b": self.batch, "p": self.pipeline, "t": self.tier_index, "id": self.job.id,
                "f": self.job.fields, "l": self.job.line, "h": list(self.history)}
        if self.budgeted:
            wire["g"] = 1
        return wire

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> AttemptMessage:
        """Inverse of `to_wire`."""
        return cls(d["b"], d["p"], d["t"], Job(d["id"], d["f"], d.get("l", 0)), tuple(d.get("h", ())),
                   bool(d.get("g")))

    def escalated(self, attempt: Attempt) -> AttemptMessage:
        """The message for the next tier, carrying this attempt in the history."""
        return AttemptMessage(self.batch, self.pipeline, self.tier_index + 1, self.job, (*self.history, attempt.to_dict()),
                              self.budgeted)

    @property
    def attempts(self) -> list[Attempt]:
        """The history as Attempt values."""
        return [Attempt.from_dict(a) for a in self.history]
