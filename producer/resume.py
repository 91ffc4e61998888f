"""Submitting what Redis forgot, without running again what the ledger holds.

Redis is the hot path and the ledger the record. A Redis that lost its last second of writes forgot some
registrations; one that restarted without its data (or was flushed) forgot whole batches. The producer
then reads its input once more: rows still registered are skipped by the store, and rows whose records
the ledger holds are left out here, so a job done before Redis forgot it is not paid for twice. The same
applies when a batch id comes back to Redis new while the ledger holds records of it (its live state was
lost, or expired after the retention). `cascade-submit` (with or without --wait) and beat's scheduled runs
use these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from cascade.producer.reader import RawRow
from cascade.producer.submit import Submitter

RESUBMIT_ROUNDS = 3     # readings of the input again, at most, while Redis keeps forgetting


def without(rows: Iterable[RawRow], kept: set[str]) -> Iterator[RawRow]:
    """The rows whose job has no record in the ledger yet (those that have one are not run again)."""
    return (row for row in rows if job_id(row) not in kept)


def job_id(row: RawRow) -> str | None:
    """A row's job id as the store keys it (None for a row that is not a job: it is rejected again)."""
    value = row.value.get("id") if row.value is not None else None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def first_rows(run: int, distributed: bool, rows: Iterable[RawRow], kept: Callable[[], set[str]],
               say: Callable[[str], None], batch: str) -> Iterable[RawRow]:
    """The rows of a submission's first pass: where the batch is new to Redis (`run` 1 of a distributed one) and
    the ledger holds records of its id, the rows with a record are left out."""
    if run != 1 or not distributed:
        return rows
    held = kept()
    if not held:
        return rows
    say(f"batch {batch}: the ledger holds {len(held)} records of it from before its state left Redis; those rows "
        "are not run again")
    return without(rows, held)


def submit_forgotten(submitter: Submitter, rows: Callable[[], Iterable[RawRow]] | None,
                     kept: Callable[[], set[str]], say: Callable[[str], None]) -> int:
    """After a pass (no waiting for the batch): read the input again while Redis may have forgotten rows of it;
    how many were submitted again. `rows` None (stdin, read once) only says what to do."""
    total = 0
    for _ in range(RESUBMIT_ROUNDS):
        if not submitter.forgot():
            break
        if rows is None:
            say(f"Redis may have forgotten rows of batch {submitter.batch} (it restarted or was unreachable) and "
                f"stdin cannot be read again: see `cascade status {submitter.batch}`, and submit the input again "
                f"under --batch-id {submitter.batch}")
            break
        again = submitter.resubmit(without(rows(), kept()))
        if not again.published:
            break
        total += again.published
        say(f"{again.published} rows were lost by Redis and are submitted again")
    return total
