"""The job-level reconciler: every registered job that is not done is in flight under a live lease, or is
published again. It does not trust the broker: kombu's Redis transport can lose a message that a killed
worker had popped but not read, and restores unacked ones only after the visibility timeout.

A job is due for publishing again when
1. its lease expired: the holder stopped renewing it (killed, or lost Redis for longer than a lease).
   Right after a Redis restart this rule waits one lease length, so live workers renew first;
2. its message was overtaken: the tier's consumers took messages numbered more than their capacity
   above its number, and never it (queues are first in, first out);
3. its tier's queue was empty on two sweeps in a row while it still waited (the tail of a batch, where
   no later message can overtake it).
A claim is atomic (claim_jobs.lua), so sweepers in every worker never publish a job twice; a duplicate
message that does reach a worker is a no-op (the lease is taken once, the step recorded once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from cascade.worker.config.schema import Settings
from cascade.worker.dispatch.base import Dispatcher
from cascade.worker.messages import JobRef
from cascade.worker.store import Claimed, StoreError, SweepStore

log = logging.getLogger("cascade.reconciler")

OVERTAKE_SLACK = 10     # messages beyond the consumers' capacity that may legitimately be taken out of order


@dataclass
class SweepReport:
    """What one sweep republished, by rule."""

    expired: int = 0
    overtaken: int = 0
    tail: int = 0
    claimed: list[Claimed] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Jobs published again."""
        return len(self.claimed)


class Reconciler:
    """Finds jobs whose message is gone and publishes them again; run by every worker process."""

    def __init__(self, settings: Settings, sweeps: SweepStore, dispatcher: Dispatcher, *, lease_s: float,
                 queue_depth, sweep_s: float = 2.0):
        """`queue_depth(tier name)` counts the messages on a tier's queue."""
        self.settings = settings
        self.sweeps = sweeps
        self.dispatcher = dispatcher
        self.lease_ms = round(lease_s * 1000)
        self.sweep_s = sweep_s
        self.queue_depth = queue_depth
        self._tail: dict[str, set[tuple[str, str, float]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> SweepReport:
        """One pass over the due jobs of every tier; publishes what it claims."""
        report = SweepReport()
        now_ms, uptime_s = self.sweeps.server_state()
        due: list[tuple[str, str, str]] = []
        if uptime_s * 1000 > self.lease_ms:
            expired = [(b, j, f"L{score!r}") for b, j, score in self.sweeps.expired_leases(now_ms)]
            due += expired
            report.expired = len(expired)
        capacity: dict[str, int] = {}
        for worker in self.sweeps.live_workers():
            capacity[worker.tier] = capacity.get(worker.tier, 0) + worker.concurrency + 1
        for tier in self.settings.tiers:
            if not capacity.get(tier):
                self._tail.pop(tier, None)
                continue        # nobody consumes the tier: no message of it can have died in a worker
            queued = self.sweeps.overtaken(tier)
            horizon = self.sweeps.taken(tier) - capacity[tier] - OVERTAKE_SLACK
            overtaken = [(b, j, f"Q{seq!r}") for b, j, seq in queued if seq < horizon]
            due += overtaken
            report.overtaken += len(overtaken)
            tail = self._tail_due(tier, queued)
            due += [(b, j, f"Q{seq!r}") for b, j, seq in tail]
            report.tail += len(tail)
        if due:
            report.claimed = self._claim(due)
            for claimed in report.claimed:
                self._publish(claimed)
            if report.claimed:
                log.info("reconciler: published %d jobs again (%d leases expired, %d messages overtaken, %d at "
                         "a queue's tail)", report.total, report.expired, report.overtaken, report.tail)
        return report

    def _tail_due(self, tier: str, queued: Sequence[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
        """Queued jobs seen on two sweeps in a row while the tier's queue was empty."""
        if self.queue_depth(tier) > 0 or not queued:
            self._tail.pop(tier, None)
            return []
        current = set(queued)
        seen = self._tail.get(tier, set())
        self._tail[tier] = current
        return sorted(current & seen)

    def _claim(self, due: Sequence[tuple[str, str, str]]) -> list[Claimed]:
        by_pipeline: dict[str, list[tuple[str, str, str]]] = {}
        for batch, job_id, expect in due:
            name = self.sweeps.pipeline_of(batch)
            if name is None or name not in self.settings.pipelines:
                continue        # a batch of a pipeline this config does not have: another deployment's
            by_pipeline.setdefault(name, []).append((batch, job_id, expect))
        claimed = []
        for name, jobs in by_pipeline.items():
            claimed += self.sweeps.claim(self.settings.pipelines[name].ladder, jobs)
        return claimed

    def _publish(self, claimed: Claimed) -> None:
        pipeline = self.sweeps.pipeline_of(claimed.batch) or ""
        # Published ahead of the queue, so its message carries no number: taking it must not move the queue's
        # watermark, or every message it jumped would look overtaken. The queued set keeps the claim's number.
        ref = JobRef(claimed.batch, pipeline, claimed.job_id, claimed.step, 0)
        try:
            self.dispatcher.send(ref, first=True)      # it waited a lease length already: ahead of the backlog
        except Exception as error:  # the broker is down: the job stays queued, a later sweep finds it again
            log.warning("reconciler: could not publish %s (%s); a later sweep retries", ref.label, error)

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Sweep every `sweep_s` on a daemon thread until `stop`."""
        self._thread = threading.Thread(target=self._run, name="cascade-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the sweeping thread."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.sweep_s):
            try:
                self.sweep()
            except StoreError as error:
                log.debug("reconciler: Redis unreachable (%s)", error)
            except Exception:
                log.exception("reconciler: sweep failed")
