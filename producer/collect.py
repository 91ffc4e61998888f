"""Collect a batch's results from the ledger: as they arrive, as often as wanted; reading never deletes.

While the batch runs, the collecting process is one more ledger writer (records move from Redis into the
ledger whether or not `cascade ledger` runs); what it writes out comes from the ledger, never from Redis.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO, TypeVar

import orjson

from cascade.ledger.database import Ledger, ResultRow
from cascade.ledger.writer import LedgerWriter

#: CSV columns: what a person reads; nested values (parsed, tags) are JSON
CSV_COLUMNS = ("id", "batch", "status", "tier", "model", "cost_usd", "reason", "output", "parsed", "tags",
               "retry_round")


class RecordWriter:
    """Writes result records as JSONL (each record as stored) or CSV (one row per job)."""

    def __init__(self, sink: BinaryIO, fmt: str = "jsonl", header: bool = True):
        self.sink = sink
        self.fmt = fmt
        self.written = 0
        self._header = header and fmt == "csv"

    def write(self, rows: Sequence[ResultRow]) -> None:
        """Write and flush a page of records."""
        if not rows:
            return
        if self.fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            if self._header:
                writer.writerow(CSV_COLUMNS)
                self._header = False
            for row in rows:
                record = orjson.loads(row.record)
                writer.writerow([_cell(record.get(column, "")) for column in CSV_COLUMNS])
            self.sink.write(buffer.getvalue().encode())
        else:
            self.sink.write(b"".join(row.record + b"\n" for row in rows))
        self.sink.flush()
        self.written += len(rows)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, bool)):
        return orjson.dumps(value).decode()
    return str(value)


T = TypeVar("T")
Through = Callable[[str, Callable[[], T]], T]


def _direct(what: str, call: Callable[[], T]) -> T:
    return call()


class Collector:
    """Follows one batch: moves its records into the ledger (with `writer`) and writes out the new ones."""

    def __init__(self, ledger: Ledger, batch: str, out: RecordWriter | None, writer: LedgerWriter | None = None,
                 status: Sequence[str] = ()):
        self.ledger = ledger
        self.batch = batch
        self.out = out
        self.writer = writer
        self.status = tuple(status)
        self.after = 0
        self.seen = 0

    def collect(self) -> int:
        """Write every record of the batch that reached the ledger since the last call; return how many."""
        if self.writer is not None:
            self.writer.drain()
        n = 0
        while rows := self.ledger.results(self.batch, self.after, self.status):
            if self.out is not None:
                self.out.write(rows)
            self.after = rows[-1].seq
            n += len(rows)
        self.seen += n
        return n

    def wait(self, finished: Callable[[], bool], on_tick: Callable[[], None] | None = None,
             poll_s: float = 0.2, through: Through = _direct) -> None:
        """Collect until `finished()` holds (asked before each round, so the last records are not left behind).

        Both run `through` a caller's store guard (`StoreWaits`), so a Redis restart is waited out.
        """
        while True:
            done = through("reading the batch", finished)
            through("collecting results", self.collect)
            if on_tick is not None:
                on_tick()
            if done:
                return
            time.sleep(poll_s)
