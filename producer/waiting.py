"""`cascade-submit --wait`: after submitting, collect the batch from the ledger until it is finished.

The batch is finished when Redis says every job is done and the ledger holds a record for each. When
Redis may have forgotten rows (it was unreachable for a while, it restarted, or it lost the batch), the
input is read once more, between waits (producer/resume.py says how).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cascade.errors import BatchGone
from cascade.producer.collect import Collector
from cascade.producer.reader import RawRow
from cascade.producer.resume import RESUBMIT_ROUNDS, without
from cascade.producer.submit import Submitter
from cascade.producer.watch import Watch
from cascade.worker.store import BatchRecord


class BatchWait:
    """Waits for one submitted batch: collect, watch, show progress."""

    def __init__(self, submitter: Submitter, collector: Collector, watch: Watch,
                 on_progress: Callable[[BatchRecord], None], say: Callable[[str], None]):
        self.submitter = submitter
        self.collector = collector
        self.watch = watch
        self.on_progress = on_progress
        self.say = say
        self.vanished = False       # Redis no longer has the batch it was waiting on

    def record(self) -> BatchRecord | None:
        """The batch's Redis record (Redis outages waited out)."""
        store = self.submitter.backend.store
        return self.submitter.waits("reading the batch", lambda: store.batch(self.submitter.batch))

    def tick(self) -> None:
        """Collect what arrived, check the tiers and workers, show progress (also while submitting)."""
        self.submitter.waits("collecting results", self.collector.collect)
        self.watch.check()
        record = self.record()
        if record is not None:
            self.on_progress(record)

    def finished(self) -> bool:
        """Every job is done in Redis, and its record is in the ledger; or the batch is gone from Redis, and
        waiting longer would be waiting forever."""
        record = self.record()
        if record is None:
            self.vanished = True
            return True
        return record.finished and self.collector.ledger.result_count(self.submitter.batch) >= record.done

    def until_finished(self, rows: Callable[[], Iterable[RawRow]] | None) -> BatchRecord | None:
        """Wait for the end; `rows` reads the input again (None for stdin, which cannot be read twice: a batch
        Redis lost is then BatchGone)."""
        self._wait()
        for _ in range(RESUBMIT_ROUNDS):
            if not (self.vanished or self.submitter.forgot()):
                break
            if rows is None:
                if self.vanished:
                    raise BatchGone(self.submitter.batch)
                break
            self.vanished = False
            kept = self.collector.ledger.job_ids(self.submitter.batch)     # done before Redis forgot: not again
            again = self.submitter.resubmit(without(rows(), kept))
            if not again.published:
                break
            self.say(f"{again.published} rows were lost by Redis and are submitted again")
            self._wait()
        return self.record()

    def _wait(self) -> None:
        self.collector.wait(self.finished, on_tick=self._progress, through=self.submitter.waits)

    def _progress(self) -> None:
        self.watch.check()
        record = self.record()
        if record is not None:
            self.on_progress(record)
