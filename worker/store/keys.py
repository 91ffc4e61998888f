"""Every Redis key Cascade uses, spelled once."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cascade.errors import ConfigError

_BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SEP = "\x1f"      # between batch and job id in a due-set member (batch ids never hold it)


def check_batch_id(batch: str) -> str:
    """Return the batch id, or raise ConfigError when it would make an unsafe key."""
    if not _BATCH_ID.match(batch):
        raise ConfigError(f"batch id '{batch}': use 1-128 letters, digits, '.', '_' or '-'")
    return batch


def member(batch: str, job_id: str) -> str:
    """A job's name in the namespace-wide due sets."""
    return f"{batch}{SEP}{job_id}"


def split_member(value: bytes | str) -> tuple[str, str]:
    """(batch, job id) of a due-set member."""
    text = value.decode() if isinstance(value, bytes) else value
    batch, _, job_id = text.partition(SEP)
    return batch, job_id


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one namespace.

    Per batch
      batch:{id}            hash: pipeline, state, total, done, budget, cost, reserved and the counters
      batch:{id}:jobs       hash: job id -> "run:line:counted-tiers:done:last-token" (finalize-once, resubmission)
      batch:{id}:live       hash: job id -> "step|lease-token|deliveries|reserved-nanos|prompt-tokens"
                            (jobs not yet final: where they are and who holds them)
      batch:{id}:payload    hash: job id -> the job's fields and earlier attempts (JobPayload JSON)
      batch:{id}:paid       hash: job id -> a paid completion not yet recorded (a store failure after the call)
      batch:{id}:kept       hash: job id -> how a failed / budget_exhausted / cancelled job ended, and its
                            payload, so `cascade retry` can run it again
      batch:{id}:parked     hash: "step:job id" -> the provider batch (its Cascade id) holding the job's request
                            at that ladder step (batch-mode tiers), written before the provider batch is created
    Per namespace
      results               stream: one result record per finished job, read by the ledger writers'
                            consumer group (`ledger`) and deleted once the ledger committed it
      ledger:batches        set: batches whose ledger row is not final yet (the writers sync them)
      pipeline:{name}       hash: the same counters summed over every batch of the pipeline
      leased                sorted set: batch SEP job -> lease expiry (ms); renewed by the holder's heartbeat
      queued:{tier}         sorted set: batch SEP job -> the publish sequence number of its message
      tier:{tier}:seq       counter: last sequence number given to a message of the tier's queue
      tier:{tier}:taken     the highest sequence number a worker has taken from the tier's queue
      tier:{tier}:status    hash: state "stopped", reason, since (a 401 / 403 / unknown model)
      workers               hash: worker id -> {tier, concurrency, pid, host, started} (JSON)
      worker:{id}           liveness: exists while the worker's heartbeat runs
      deadletter            list: messages and jobs taken out of circulation, with their reason
      limiter:{tier}:state  hash: a tier's rate buckets, 429 cooldown, circuit and mean call time
      limiter:{tier}:leases sorted set: calls in flight on a tier, by lease expiry
      shadow:{batch}:{job}  string: what a shadow run needs (fields, accepted answer), with a TTL; taken once
      shadow:pairs          stream: shadow pairs (shaped like the ledger's shadow_pairs rows) for the ledger writers
      pbatches:{tier}       hash: provider batch id (Cascade's) -> its record (JSON: provider id, state, members)
    Shadow counters (shadow_jobs, shadow_agree, shadow_cost, shadow_reserved, shadow_skipped) live in the batch
    hash beside the batch's own, never in its cost or budget.
    """

    namespace: str = "cascade"

    def batch(self, batch: str) -> str:
        """The batch record and its counters."""
        return f"{self.namespace}:batch:{batch}"

    def jobs(self, batch: str) -> str:
        """Per-job done-once state of a batch."""
        return f"{self.namespace}:batch:{batch}:jobs"

    def live(self, batch: str) -> str:
        """Where each unfinished job of a batch is, and who holds it."""
        return f"{self.namespace}:batch:{batch}:live"

    def payload(self, batch: str) -> str:
        """Each unfinished job's fields and attempt history."""
        return f"{self.namespace}:batch:{batch}:payload"

    def paid(self, batch: str) -> str:
        """Paid completions whose recording failed."""
        return f"{self.namespace}:batch:{batch}:paid"

    def kept(self, batch: str) -> str:
        """Jobs that ended without an accepted answer, kept for `cascade retry`."""
        return f"{self.namespace}:batch:{batch}:kept"

    def parked(self, batch: str) -> str:
        """Which provider batch holds each parked job of a batch, by ladder step."""
        return f"{self.namespace}:batch:{batch}:parked"

    def provider_batches(self, tier: str) -> str:
        """The open provider batches of a batch-mode tier."""
        return f"{self.namespace}:pbatches:{tier}"

    @property
    def results(self) -> str:
        """The results stream of the namespace (every batch's records, until the ledger has them)."""
        return f"{self.namespace}:results"

    @property
    def ledger_batches(self) -> str:
        """Batches whose ledger row is not final yet."""
        return f"{self.namespace}:ledger:batches"

    def batch_keys(self, batch: str) -> list[str]:
        """Every key of one batch (what expires `retention_days` after it finishes)."""
        return [self.batch(batch), self.jobs(batch), self.live(batch), self.payload(batch), self.paid(batch),
                self.kept(batch), self.parked(batch)]

    def pipeline(self, pipeline: str) -> str:
        """Counters of a pipeline over all its batches."""
        return f"{self.namespace}:pipeline:{pipeline}"

    @property
    def leased(self) -> str:
        """Jobs held by a worker, by lease expiry."""
        return f"{self.namespace}:leased"

    def queued(self, tier: str) -> str:
        """Jobs whose message waits on a tier's queue, by sequence number."""
        return f"{self.namespace}:queued:{tier}"

    def tier_seq(self, tier: str) -> str:
        """The last sequence number given to a tier's messages."""
        return f"{self.namespace}:tier:{tier}:seq"

    def tier_taken(self, tier: str) -> str:
        """The highest sequence number taken from a tier's queue."""
        return f"{self.namespace}:tier:{tier}:taken"

    def tier_status(self, tier: str) -> str:
        """Whether a tier is stopped, and why."""
        return f"{self.namespace}:tier:{tier}:status"

    @property
    def workers(self) -> str:
        """The worker registry."""
        return f"{self.namespace}:workers"

    def worker(self, worker_id: str) -> str:
        """A worker's liveness key."""
        return f"{self.namespace}:worker:{worker_id}"

    @property
    def deadletter(self) -> str:
        """Messages and jobs taken out of circulation."""
        return f"{self.namespace}:deadletter"

    def limiter(self, tier: str, part: str) -> str:
        """Shared limiter state of a tier: `part` is "state" or "leases"."""
        return f"{self.namespace}:limiter:{tier}:{part}"

    def shadow_job(self, batch: str, job_id: str) -> str:
        """A sampled job's shadow payload, until a shadow worker takes it."""
        return f"{self.namespace}:shadow:{batch}:{job_id}"

    @property
    def shadow_pairs(self) -> str:
        """The stream of shadow pairs the ledger writers move into the ledger."""
        return f"{self.namespace}:shadow:pairs"

    @staticmethod
    def queue_lists(queue_name: str) -> list[str]:
        """The lists kombu's Redis transport keeps a queue's messages in: one per priority step, the queue's
        own name for priority 0 (taken first), then "<queue>\\x06\\x16<step>" (see worker/dispatch)."""
        return [queue_name, *(f"{queue_name}\x06\x16{step}" for step in (3, 6, 9))]
