"""Drain a batch's results stream into JSONL as records arrive, trimming what has been written."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

from cascade.worker.store import BatchRecord, BatchStore


class ResultDrain:
    """Moves result records from Redis to a file; with `trim`, each is deleted once written and flushed."""

    def __init__(self, store: BatchStore, batch: str, out: BinaryIO | None, trim: bool = True):
        self.store = store
        self.batch = batch
        self.out = out
        self.trim = trim
        self.written = 0
        self._after = b"-"

    def drain(self) -> int:
        """Write every record available now; return how many."""
        n = 0
        while True:
            entries = self.store.read_results(self.batch, self._after, count=1000)
            if not entries:
                return n
            if self.out is not None:
                self.out.write(b"".join(record + b"\n" for _, record in entries))
                self.out.flush()
            ids = [entry_id for entry_id, _ in entries]
            if self.trim:
                self.store.delete_results(self.batch, ids)
            self._after = ids[-1]
            n += len(entries)
            self.written += len(entries)

    def finished(self) -> bool:
        """True when the whole input was submitted and every job has its result."""
        record = self.store.batch(self.batch)
        return record is not None and record.finished

    def wait(self, on_progress: Callable[[BatchRecord], None] | None = None, poll_s: float = 0.1) -> None:
        """Drain until the batch is finished."""
        while True:
            finished = self.finished()   # read before draining, so the last records are not left behind
            self.drain()
            record = self.store.batch(self.batch) if on_progress is not None else None
            if record is not None:
                on_progress(record)
            if finished:
                return
            time.sleep(poll_s)
