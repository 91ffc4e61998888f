"""Drain a batch's results stream into JSONL as records arrive, trimming what has been written.

A job finalized twice (Redis lost its last second of writes and the job ran again) is written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

import orjson

from cascade.producer.submit import StoreWaits
from cascade.worker.store import BatchRecord, BatchStore


class ResultDrain:
    """Moves result records from Redis to a file; with `trim`, each is deleted once written and flushed."""

    def __init__(self, store: BatchStore, batch: str, out: BinaryIO | None, trim: bool = True,
                 waits: StoreWaits | None = None):
        self.store = store
        self.batch = batch
        self.out = out
        self.trim = trim
        self.waits = waits or StoreWaits(lambda message: None)
        self.written = 0
        self.duplicates = 0
        self._after = b"-"
        self._seen: set[tuple[str, int]] = set()

    def drain(self) -> int:
        """Write every record available now; return how many."""
        n = 0
        while True:
            entries = self.waits("reading results", lambda: self.store.read_results(self.batch, self._after,
                                                                                    count=1000))
            if not entries:
                return n
            fresh = [record for _, record in entries if self._first(record)]
            if self.out is not None and fresh:
                self.out.write(b"".join(record + b"\n" for record in fresh))
                self.out.flush()
            ids = [entry_id for entry_id, _ in entries]
            if self.trim:
                self.waits("trimming results", lambda: self.store.delete_results(self.batch, ids))
            self._after = ids[-1]
            n += len(fresh)
            self.written += len(fresh)

    def _first(self, record: bytes) -> bool:
        """Whether this is the first record of its job (and retry round) that this drain sees."""
        d = orjson.loads(record)
        key = (d["id"], d.get("retry_round", 0))
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        return True

    def finished(self) -> bool:
        """True when the whole input was submitted and every job has its result."""
        record = self.waits("reading the batch", lambda: self.store.batch(self.batch))
        return record is not None and record.finished

    def wait(self, on_progress: Callable[[BatchRecord], None] | None = None, poll_s: float = 0.1) -> None:
        """Drain until the batch is finished."""
        while True:
            finished = self.finished()   # read before draining, so the last records are not left behind
            self.drain()
            record = self.waits("reading the batch", lambda: self.store.batch(self.batch)) if on_progress else None
            if record is not None:
                on_progress(record)
            if finished:
                return
            time.sleep(poll_s)
