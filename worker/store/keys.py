"""Every Redis key Cascade uses, spelled once."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cascade.errors import ConfigError

_BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def check_batch_id(batch: str) -> str:
    """Return the batch id, or raise ConfigError when it would make an unsafe key."""
    if not _BATCH_ID.match(batch):
        raise ConfigError(f"batch id '{batch}': use 1-128 letters, digits, '.', '_' or '-'")
    return batch


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one namespace.

    batch:{id}          hash: pipeline, state, total, done, budget, cost, reserved and the counters
    batch:{id}:jobs     hash: job id -> "run:line:counted-tiers:done" (done-once and resubmission)
    batch:{id}:results  stream: one result record per finished job, trimmed once drained
    pipeline:{name}     hash: the same counters summed over every batch of the pipeline
    limiter:{tier}:state   hash: a tier's rate buckets, 429 cooldown and mean call time (cluster-wide)
    limiter:{tier}:leases  sorted set: calls in flight on a tier, by lease expiry
    """

    namespace: str = "cascade"

    def batch(self, batch: str) -> str:
        """The batch record and its counters."""
        return f"{self.namespace}:batch:{batch}"

    def jobs(self, batch: str) -> str:
        """Per-job state of a batch."""
        return f"{self.namespace}:batch:{batch}:jobs"

    def results(self, batch: str) -> str:
        """The results stream of a batch."""
        return f"{self.namespace}:batch:{batch}:results"

    def pipeline(self, pipeline: str) -> str:
        """Counters of a pipeline over all its batches."""
        return f"{self.namespace}:pipeline:{pipeline}"

    def limiter(self, tier: str, part: str) -> str:
        """Shared limiter state of a tier: `part` is "state" or "leases"."""
        return f"{self.namespace}:limiter:{tier}:{part}"

    @staticmethod
    def queue(queue_name: str) -> str:
        """The list kombu's Redis transport keeps a queue's messages in (named after the queue)."""
        return queue_name
