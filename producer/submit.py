"""Submit a batch: validate rows, register them once (payload in the store), publish to the first tier with
backpressure. Redis restarting under the producer is waited out, never a failed submission."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from redis.exceptions import ResponseError

from cascade.errors import BatchGone, InputError
from cascade.ledger.database import LedgerError
from cascade.models import Job
from cascade.producer.reader import RawRow, to_job
from cascade.worker.backends import Backend
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.messages import JobPayload, JobRef
from cascade.worker.pricing import estimate_tokens
from cascade.worker.prompts import render
from cascade.worker.store import Registration, ResultStream
from cascade.worker.store.batches import CANCELLED
from cascade.worker.store_retry import PASSING

log = logging.getLogger("cascade.producer")
T = TypeVar("T")

PUBLISH_TRIES = 3       # a chunk that cannot be published after these is left to the reconciler (it is registered)


@dataclass
class SubmitResult:
    """What one submission run did."""

    batch: str
    run: int
    published: int = 0          # jobs put on the first tier's queue by this run
    already_submitted: int = 0  # rows an earlier run of the same batch id had submitted
    rejected: list[InputError] = field(default_factory=list)
    cancelled: bool = False     # the batch was cancelled while this run read its input


class StoreWaits:
    """Store calls of the producer, waited out while Redis restarts or refuses writes for memory (the
    ledger drains it), or the ledger database restarts; `outages` counts the Redis waits, so the caller
    can check that nothing was lost."""

    def __init__(self, say: Callable[[str], None], sleep: Callable[[float], None] = time.sleep):
        self.say = say
        self.sleep = sleep
        self.outages = 0

    def __call__(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, retried while Redis is unreachable or out of memory, or the ledger unreachable."""
        wait, since, where = 0.2, None, ""
        while True:
            try:
                result = call()
            except (*PASSING, ResponseError, LedgerError) as error:
                if isinstance(error, LedgerError):
                    if not error.passing:
                        raise
                elif isinstance(error, ResponseError) and not isinstance(error, PASSING) and "OOM" not in str(error):
                    raise
                if since is None:
                    since, where = time.monotonic(), "the ledger" if isinstance(error, LedgerError) else "Redis"
                    self.outages += where == "Redis"
                    self.say(f"{where} unreachable while {what} ({error}); waiting for it")
            else:
                if since is not None:
                    self.say(f"{where} answers again after {time.monotonic() - since:.1f} s")
                return result
            self.sleep(wait)
            wait = min(5.0, wait * 2)


class Submitter:
    """Feeds one batch's rows to the first tier, at most `high_water` messages ahead of the workers."""

    def __init__(self, backend: Backend, settings: Settings, pipeline: Pipeline, batch: str,
                 budget_nanos: int = 0,
                 on_reject: Callable[[InputError], None] | None = None,
                 while_waiting: Callable[[], None] | None = None,
                 say: Callable[[str], None] | None = None):
        """`while_waiting` runs after each chunk and while the queue is full (drain results, show progress)."""
        self.backend = backend
        self.settings = settings
        self.pipeline = pipeline
        self.batch = batch
        self.budget_nanos = budget_nanos
        self.on_reject = on_reject or (lambda error: None)
        self.while_waiting = while_waiting or (lambda: None)
        self.waits = StoreWaits(say or log.warning)
        self.results = ResultStream(backend.store.redis, settings.redis.namespace)
        self.first_tier = pipeline.ladder[0]
        self.source = ""
        self._run = 0
        self._budgeted = budget_nanos > 0
        self._server: str | None = None     # the Redis run id when the batch was opened (None: cannot restart)
        self.lost = False       # Redis lost the batch while this producer fed it (restarted without its data)

    def open(self, source: str = "") -> int:
        """Create the batch, or reopen it to resume; return this run's number (1 for a new batch)."""
        store = self.backend.store
        self.source = source or self.source
        # Not waited out: a Redis that does not answer before anything is submitted is a wrong URL or a
        # server that is down, and the user should hear so at once. Outages after this are waited out.
        self._run = store.open_batch(self.batch, self.pipeline.name, self.budget_nanos, self.backend.mode,
                                     self.source)
        self._server = self._server or store.server_id()
        # an earlier run's budget still holds when this one gives none: every job needs its prompt estimate
        self._budgeted = self.waits("reading the batch", lambda: store.batch(self.batch)).budget_nanos > 0
        return self._run

    def run(self, rows: Iterable[RawRow]) -> SubmitResult:
        """Read every row; return the counts. Re-running with the same batch id skips what was submitted."""
        store = self.backend.store
        result = SubmitResult(self.batch, self._run or self.open())
        required = self.pipeline.prompt.fields
        chunk: list[tuple[Job, str]] = []
        rejected: list[InputError] = []     # said at the flush, in line order with the chunk's duplicate ids
        for row in rows:
            try:
                chunk.append((to_job(row, required), row.raw))
            except InputError as error:
                rejected.append(error)
            if len(chunk) + len(rejected) >= self.settings.producer.chunk_size:
                self._flush(result, chunk, rejected)
                chunk, rejected = [], []
                if self._cancelled():
                    result.cancelled = True
                    break
        self._flush(result, [] if result.cancelled else chunk, rejected)
        self._in_batch(result, "closing the submission",
                       lambda: store.mark_submitted(self.batch, len(result.rejected)))
        return result

    def forgot(self) -> bool:
        """Whether Redis may have forgotten rows this producer registered: it was unreachable for a while, it
        restarted (another run id: a quick restart is retried inside the client, unseen), or it lost the batch.
        The input is then read once more (`resubmit`)."""
        if self.lost or self.waits.outages:
            return True
        server = self.waits("reading the server", self.backend.store.server_id)
        return self._server is not None and server != self._server

    def resubmit(self, rows: Iterable[RawRow]) -> SubmitResult:
        """Read the input once more into the reopened batch: the rows Redis forgot are submitted again, the rest
        are skipped as submitted (the caller leaves out the rows whose records the ledger holds already)."""
        self.lost, self.waits.outages, self._server = False, 0, None
        self.waits("reopening the batch", self.open)
        return self.run(rows)

    def _in_batch(self, result: SubmitResult, what: str, call: Callable[[], T]) -> T:
        """A store call on the batch; when Redis has lost the batch, it is opened again and the call made again
        (the rows it had are read again once this pass ends: `forgot`)."""
        try:
            return self.waits(what, call)
        except BatchGone:
            self.waits.say(f"batch {self.batch}: Redis lost it (restarted without its data, or flushed); it is "
                           "opened again, and the rows submitted before are read again once this pass ends")
            self.lost = True
            result.run = self.waits("reopening the batch", self.open)
            return self.waits(what, call)

    def _cancelled(self) -> bool:
        record = self.waits("reading the batch", lambda: self.backend.store.batch(self.batch))
        return record is not None and record.state == CANCELLED

    def _registration(self, job: Job) -> Registration:
        tokens = 0
        if self._budgeted:      # the store reserves each call's worst case from this estimate
            system, user = render(self.pipeline.prompt, job.fields)
            tokens = estimate_tokens(system) + estimate_tokens(user)
        return Registration(job.id, job.line, tokens, JobPayload(job).to_json())

    def _flush(self, result: SubmitResult, chunk: list[tuple[Job, str]], rejected: list[InputError]) -> None:
        """Register and publish a chunk of jobs; then say the rows rejected among them, in line order."""
        if chunk:
            self._register(result, chunk, rejected)
        for error in sorted(rejected, key=lambda e: e.line):
            self._reject(result, error)

    def _register(self, result: SubmitResult, chunk: list[tuple[Job, str]], rejected: list[InputError]) -> None:
        store = self.backend.store
        registrations = [self._registration(job) for job, _ in chunk]
        codes = self._in_batch(result, "registering jobs", lambda: store.register_jobs(
            self.batch, result.run, self.first_tier, registrations))
        refs = []
        for (job, raw), code in zip(chunk, codes):
            if code > 0:
                refs.append(JobRef(self.batch, self.pipeline.name, job.id, 0, code))
            elif code == 0:
                result.already_submitted += 1
            else:
                rejected.append(InputError(job.line, f"duplicate id '{job.id}' (first on line {-code})", raw))
        if refs:
            self._publish(refs)
            result.published += len(refs)
        self.while_waiting()
        self._wait_below_high_water()

    def _publish(self, refs: list[JobRef]) -> None:
        for attempt in range(1, PUBLISH_TRIES + 1):
            try:
                self.backend.dispatcher.send_many(refs)
                return
            except Exception as error:  # kombu's OperationalError, a RedisError: the broker is down
                if attempt == PUBLISH_TRIES:
                    log.warning("could not publish %d jobs (%s); they are registered, and a worker's reconciler "
                                "publishes them", len(refs), error)
                    return
                time.sleep(0.5 * attempt)

    def _wait_below_high_water(self) -> None:
        # Backpressure: Redis holds a bounded number of messages and waiting results whatever the batch size.
        high = self.settings.producer.high_water
        while self.waits("reading the queue", lambda: self.backend.backlog(self.first_tier)) >= high:
            self.while_waiting()
            time.sleep(0.05)
        results_high, said = self.settings.ledger.results_high_water, 0.0
        while self.waits("reading the results stream", self.results.length) >= results_high:
            if time.monotonic() - said > 60:
                said = time.monotonic()
                self.waits.say(f"{results_high} or more results wait in Redis for the ledger; submission pauses "
                               "until they are written (is `cascade ledger` running?)")
            self.while_waiting()
            time.sleep(0.2)

    def _reject(self, result: SubmitResult, error: InputError) -> None:
        result.rejected.append(error)
        self.on_reject(error)
