"""`cascade-submit --wait`: after submitting, collect the batch from the ledger until it is finished.

The batch is finished when Redis says every job is done and the ledger holds a record for each. When
Redis was unreachable at some point, the input is read once more: a Redis that lost its last second of
writes forgot some registrations, and those rows are submitted again (the others are skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cascade.producer.collect import Collector
from cascade.producer.reader import RawRow
from cascade.producer.submit import Submitter
from cascade.producer.watch import Watch
from cascade.worker.store import BatchRecord

RESUBMIT_ROUNDS = 3


class BatchWait:
    """Waits for one submitted batch: collect, watch, show progress."""

    def __init__(self, submitter: Submitter, collector: Collector, watch: Watch,
                 on_progress: Callable[[BatchRecord], None], say: Callable[[str], None]):
        self.submitter = submitter
        self.collector = collector
        self.watch = watch
        self.on_progress = on_progress
        self.say = say

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
        """Every job is done in Redis, and its record is in the ledger."""
        record = self.record()
        return record is not None and record.finished and \
            self.collector.ledger.result_count(self.submitter.batch) >= record.done

    def until_finished(self, rows: Callable[[], Iterable[RawRow]] | None) -> BatchRecord:
        """Wait for the end; `rows` reads the input again (None for stdin, which cannot be read twice)."""
        self._wait()
        for _ in range(RESUBMIT_ROUNDS):
            if not self.submitter.waits.outages or rows is None:
                break
            self.submitter.waits.outages = 0
            self.submitter.waits("reopening the batch", self.submitter.open)
            again = self.submitter.run(rows())
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
