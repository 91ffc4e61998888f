"""Submit a batch: validate rows, register them once, publish to the first tier with backpressure."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cascade.errors import InputError
from cascade.models import Job
from cascade.producer.reader import RawRow, to_job
from cascade.worker.backends import Backend
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.messages import AttemptMessage


@dataclass
class SubmitResult:
    """What one submission run did."""

    batch: str
    run: int
    published: int = 0          # jobs put on the first tier's queue by this run
    already_submitted: int = 0  # rows an earlier run of the same batch id had submitted
    rejected: list[InputError] = field(default_factory=list)


class Submitter:
    """Feeds one batch's rows to the first tier, at most `high_water` messages ahead of the workers."""

    def __init__(self, backend: Backend, settings: Settings, pipeline: Pipeline, batch: str,
                 budget_nanos: int = 0,
                 on_reject: Callable[[InputError], None] | None = None,
                 while_waiting: Callable[[], None] | None = None):
        """`while_waiting` runs after each chunk and while the queue is full (drain results, show progress)."""
        self.backend = backend
        self.settings = settings
        self.pipeline = pipeline
        self.batch = batch
        self.budget_nanos = budget_nanos
        self.on_reject = on_reject or (lambda error: None)
        self.while_waiting = while_waiting or (lambda: None)
        self.first_tier = pipeline.ladder[0]
        self._run = 0
        self._budgeted = budget_nanos > 0

    def open(self) -> int:
        """Create the batch, or reopen it to resume; return this run's number (1 for a new batch)."""
        store = self.backend.store
        self._run = store.open_batch(self.batch, self.pipeline.name, self.budget_nanos, self.backend.mode)
        # an earlier run's budget still holds when this one gives none: every message must reserve
        self._budgeted = store.batch(self.batch).budget_nanos > 0
        return self._run

    def run(self, rows: Iterable[RawRow]) -> SubmitResult:
        """Read every row; return the counts. Re-running with the same batch id skips what was submitted."""
        store = self.backend.store
        result = SubmitResult(self.batch, self._run or self.open())
        required = self.pipeline.prompt.fields
        chunk: list[Job] = []
        last_line = 0
        for row in rows:
            last_line = row.line
            try:
                chunk.append(to_job(row, required))
            except InputError as error:
                self._reject(result, error)
            if len(chunk) >= self.settings.producer.chunk_size:
                self._flush(result, chunk, last_line)
                chunk = []
        self._flush(result, chunk, last_line)
        store.mark_submitted(self.batch, len(result.rejected))
        return result

    def _flush(self, result: SubmitResult, chunk: list[Job], last_line: int) -> None:
        store = self.backend.store
        codes = store.register_jobs(self.batch, result.run, [(job.id, job.line) for job in chunk]) if chunk else []
        to_send = []
        for job, code in zip(chunk, codes):
            if code == 1:
                to_send.append(AttemptMessage(self.batch, self.pipeline.name, 0, job, budgeted=self._budgeted))
            elif code == 0:
                result.already_submitted += 1
            else:
                self._reject(result, InputError(job.line, f"duplicate id '{job.id}' (first on line {-code})"))
        if to_send:
            self.backend.dispatcher.send_many(to_send)
            result.published += len(to_send)
        store.mark_published(self.batch, result.run, last_line)
        self.while_waiting()
        self._wait_below_high_water()

    def _wait_below_high_water(self) -> None:
        # Backpressure: Redis holds a bounded number of messages whatever the batch size.
        high = self.settings.producer.high_water
        while self.backend.backlog(self.first_tier) >= high:
            self.while_waiting()
            time.sleep(0.05)

    def _reject(self, result: SubmitResult, error: InputError) -> None:
        result.rejected.append(error)
        self.on_reject(error)
