"""A batch-mode tier's provider batches: collect parked jobs, submit them, poll, apply their results.

Jobs reach a batch-mode tier as they reach any tier; the engine leases each one and parks its request
here instead of calling. Parked requests of one Cascade batch are sent as one provider batch when there
are enough of them (the provider's request and size caps, or `batch_max_requests`) or the oldest has
waited `batch_max_age_s`. The record of which jobs went into which provider batch is written to Redis
before the provider batch is created. Every `batch_poll_s` each worker of the tier polls the tier's open
provider batches; the lines of an ended one go through the engine's verify-and-record path (recorded
once: a job's lease decides who applies it). Errored and expired lines are parked again, into a new
provider batch, up to `max_retries` times; a cancelled Cascade batch cancels its provider batches.

A worker that restarts loses nothing: its leases lapse, the reconciler publishes the jobs again, and
the worker that takes one finds the record that holds its request, so the job waits for that provider
batch rather than being submitted again. A record whose owner died before the provider answered is
looked up at the provider (`find`) before its jobs may be submitted anew. A Redis restart is waited
out: every store call of the runner goes through the engine's StoreRetry (worker/backends.py wraps the
store), so what the runner holds in memory and what Redis says never part; a record the provider's
answer left unsaved is saved once Redis is back.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cascade.errors import Permanent, ProviderError
from cascade.models import CompletionRequest
from cascade.worker.leases import ShuttingDown
from cascade.worker.messages import JobRef
from cascade.worker.providers.batch_api import BatchAPI, BatchLine, LineResult, custom_id
from cascade.worker.store import LeaseCode, StoreError
from cascade.worker.store.provider_batches import CREATING, ENDED, SUBMITTED, ProviderBatch, ProviderBatchStore

log = logging.getLogger("cascade.batching")

TICK_S = 0.2                # how often the runner looks for provider batches due to be sent
SUBMIT_BACKOFF_S = 30.0     # after a failed submit, the wait before its jobs are sent again


@dataclass
class Parked:
    """A leased step whose request waits for (or in) a provider batch."""

    step: Any                   # engine.Step
    request: CompletionRequest
    custom_id: str
    tries: int = 0              # provider batches its line already errored or expired in
    since: float = field(default_factory=time.monotonic)


class BatchRunner:
    """The provider batches of one batch-mode tier in one worker process (one thread)."""

    def __init__(self, engine: Any, tier: Any, api: BatchAPI, store: ProviderBatchStore, worker_id: str, *,
                 max_tries: int, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.tier = tier
        self.api = api
        self.store = store
        self.worker_id = worker_id
        self.max_tries = max_tries
        self.clock = clock
        self.max_requests = min(tier.batch_max_requests or api.max_requests, api.max_requests)
        self._lock = threading.Lock()
        self._pending: dict[str, list[Parked]] = {}            # Cascade batch -> parked, not yet sent
        self._attached: dict[str, dict[str, Parked]] = {}      # record id -> custom_id -> parked, held here
        self._results: dict[str, dict[str, LineResult]] = {}   # record id -> its lines, once read
        self._not_before: dict[str, float] = {}                # Cascade batch -> next submit after a failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_poll = 0.0

    # -- from the engine's threads -------------------------------------------------------------

    def park(self, step: Any, request: CompletionRequest) -> Any:
        """Take a leased step: attach it to the provider batch that already holds its request, else queue it
        for the next one. Returns Outcome.PARKED (the lease stays held; the message is acked)."""
        from cascade.worker.engine import Outcome

        ref = step.ref
        record_id = self.store.parked_in(ref.batch, ref.tier_index, ref.job_id)
        record = self.store.record(self.tier.name, record_id) if record_id else None
        cid = custom_id(ref.job_id)
        with self._lock:
            if record is not None and cid in record.members:
                tries = int(record.members[cid][1])
                self._attached.setdefault(record.id, {})[cid] = Parked(step, request, cid, tries)
            else:
                self._pending.setdefault(ref.batch, []).append(Parked(step, request, cid))
        return Outcome.PARKED

    # -- the runner thread ---------------------------------------------------------------------

    def start(self) -> BatchRunner:
        self._thread = threading.Thread(target=self._run, name=f"cascade-batches-{self.tier.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and give every parked job back (the next worker finds their provider batches)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            parked = [p for group in self._pending.values() for p in group]
            parked += [p for members in self._attached.values() for p in members.values()]
            self._pending.clear()
            self._attached.clear()
        for p in parked:
            try:
                self.engine.release_parked(p.step)
            except StoreError:
                pass        # its lease lapses and the reconciler publishes it again

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.flush()
                if time.monotonic() - self._last_poll >= self.tier.batch_poll_s:
                    self._last_poll = time.monotonic()
                    self.poll()
            except ShuttingDown:        # a store call was waiting for Redis: stop() gives the parked jobs back
                return
            except StoreError as error:
                log.warning("tier %s: provider batches wait for Redis (%s)", self.tier.name, error)
            except Exception:           # never let the thread die: parked jobs would wait for a restart
                log.exception("tier %s: provider batch runner", self.tier.name)

    # -- sending ---------------------------------------------------------------------------------

    def flush(self, force: bool = False) -> int:
        """Send every group of parked requests that is due (full, or its oldest waited long enough)."""
        sent = 0
        now = time.monotonic()
        with self._lock:
            due = [b for b, group in self._pending.items() if group and (force or self._due(b, group, now))]
            groups = {b: self._pending.pop(b) for b in due}
        for batch, group in groups.items():
            if self.store.cancelled(batch):
                for p in group:
                    self.engine.cancel_parked(p.step)
                continue
            for chunk in self._chunks(group):
                sent += self._submit(batch, chunk)
        return sent

    def _due(self, batch: str, group: list[Parked], now: float) -> bool:
        if now < self._not_before.get(batch, 0.0):
            return False
        return len(group) >= self.max_requests or now - group[0].since >= self.tier.batch_max_age_s

    def _chunks(self, group: list[Parked]) -> list[list[Parked]]:
        """Split by the request cap and the provider's size cap (a few KB kept for the file's framing)."""
        chunks: list[list[Parked]] = [[]]
        size, limit = 0, self.api.max_bytes - 4096
        for p in group:
            line = self.api.line_bytes(BatchLine(p.custom_id, p.request))
            if chunks[-1] and (len(chunks[-1]) >= self.max_requests or size + line > limit):
                chunks.append([])
                size = 0
            chunks[-1].append(p)
            size += line
        return [c for c in chunks if c]

    def _submit(self, batch: str, chunk: list[Parked]) -> int:
        first = chunk[0].step.ref
        record = ProviderBatch(f"pb-{uuid.uuid4().hex[:16]}", self.tier.name, first.tier_index, batch, first.pipeline,
                               self.api.provider, self.worker_id, self.clock(),
                               {p.custom_id: [p.step.ref.job_id, p.tries] for p in chunk})
        self.store.open(record)             # before the provider batch exists: a restart finds it
        with self._lock:
            self._attached[record.id] = {p.custom_id: p for p in chunk}
        try:
            record.provider_id = self.api.submit(record.id, [BatchLine(p.custom_id, p.request) for p in chunk])
        except ProviderError as error:
            return self._submit_failed(record, error)
        record.state, record.submitted_at = SUBMITTED, self.clock()
        self.store.save(record)
        log.info("tier %s: sent provider batch %s (%s, %d requests, batch %s)", self.tier.name, record.provider_id,
                 record.id, len(chunk), batch)
        return len(chunk)

    def _submit_failed(self, record: ProviderBatch, error: ProviderError) -> int:
        """The create call failed. Unless the provider did create it (asked, in case the reply was lost), the jobs
        go back to the pending queue (a transient error) or fail with the provider's reason (a permanent one)."""
        try:
            found = self.api.find(record.id, record.created_at, len(record.members), self._known())
        except ProviderError:
            found = None
        if found:
            record.provider_id, record.state, record.submitted_at = found, SUBMITTED, self.clock()
            self.store.save(record)
            return len(record.members)
        with self._lock:
            parked = list(self._attached.pop(record.id, {}).values())
        self.store.close(record)
        if isinstance(error, Permanent):
            log.error("tier %s: the provider refused a batch of %d requests: %s", self.tier.name, len(parked), error)
            for p in parked:
                self.engine.apply_batched(p.step, p.request, None, f"batch: the provider refused the batch: {error}")
            return 0
        log.warning("tier %s: sending a batch of %d requests failed (%s); trying again in %.0f s", self.tier.name,
                    len(parked), error, SUBMIT_BACKOFF_S)
        with self._lock:
            self._pending.setdefault(record.batch, [])[:0] = parked
            self._not_before[record.batch] = time.monotonic() + SUBMIT_BACKOFF_S
        return 0

    def _known(self) -> set[str]:
        return {r.provider_id for r in self.store.records(self.tier.name) if r.provider_id}

    # -- polling and applying ----------------------------------------------------------------------

    def poll(self) -> None:
        """Look at every open provider batch of the tier once: adopt, cancel, poll, apply."""
        for record in self.store.records(self.tier.name):
            try:
                self._advance(record)
            except ProviderError as error:
                log.warning("tier %s: provider batch %s: %s; polled again in %.0f s", self.tier.name,
                            record.provider_id or record.id, error, self.tier.batch_poll_s)

    def _advance(self, record: ProviderBatch) -> None:
        if record.owner != self.worker_id:
            if self.store.owner_alive(record.owner):
                return              # its owner polls it
            if record.state != CREATING:
                record.owner = self.worker_id      # its owner died: this worker polls it now
                self.store.save(record)
        if record.state == CREATING:
            if record.owner == self.worker_id and record.id in self._attached:
                return              # this process is sending it
            self._adopt(record)
            return
        if record.state == SUBMITTED:
            if not record.cancel_sent and self.store.cancelled(record.batch):
                self.api.cancel(record.provider_id)
                record.cancel_sent = True
                self.store.save(record)
                log.info("tier %s: batch %s cancelled: cancelled provider batch %s", self.tier.name, record.batch,
                         record.provider_id)
            state = self.api.poll(record.provider_id)
            record.status, record.counts = state.status, state.counts
            if state.ended:
                record.state, record.ended_at = ENDED, self.clock()
            self.store.save(record)
        if record.state == ENDED:
            self._apply(record)

    def _adopt(self, record: ProviderBatch) -> None:
        """A record whose owner died before it knew the provider's batch id: find the batch, else drop the record
        (nothing was created, so its jobs are parked anew when they come back)."""
        found = self.api.find(record.id, record.created_at, len(record.members), self._known())
        if found:
            record.provider_id, record.state, record.submitted_at = found, SUBMITTED, self.clock()
            record.owner = self.worker_id
            self.store.save(record)
            log.info("tier %s: found provider batch %s of a worker that died (%s)", self.tier.name, found, record.id)
            return
        for job_id, _ in record.members.values():
            self.store.unpark(record.batch, record.tier_index, job_id, record.id)
        self.store.close(record)
        with self._lock:
            parked = list(self._attached.pop(record.id, {}).values())
            self._pending.setdefault(record.batch, []).extend(parked)

    def _apply(self, record: ProviderBatch) -> None:
        """Apply the lines of an ended provider batch to the jobs this worker holds or can lease; close the record
        once no member is parked on it any more."""
        results = self._results.get(record.id)
        if results is None:
            results = self._results[record.id] = {r.custom_id: r for r in self.api.results(record.provider_id)}
        for cid, (job_id, tries) in record.members.items():
            with self._lock:
                parked = self._attached.get(record.id, {}).pop(cid, None)
            if parked is None:
                parked = self._lease(record, job_id, cid, int(tries))
            if parked is not None:
                self._settle(record, parked, results.get(cid) or LineResult(cid, "errored", error="missing from the "
                                                                                                  "provider's results"))
        if not self.store.still_parked(record, [job for job, _ in record.members.values()]):
            self.store.close(record)
            self._results.pop(record.id, None)
            with self._lock:
                self._attached.pop(record.id, None)
            log.info("tier %s: provider batch %s done (%s)", self.tier.name, record.provider_id, record.counts)

    def _lease(self, record: ProviderBatch, job_id: str, cid: str, tries: int) -> Parked | None:
        """Lease a member nobody here holds (its worker died): None when another worker holds it or it is done."""
        if self.store.parked_in(record.batch, record.tier_index, job_id) != record.id:
            return None
        got = self.engine.take_parked(JobRef(record.batch, record.pipeline, job_id, record.tier_index))
        if isinstance(got, LeaseCode):
            if got in (LeaseCode.DONE, LeaseCode.STALE, LeaseCode.UNKNOWN):
                self.store.unpark(record.batch, record.tier_index, job_id, record.id)
            return None
        return Parked(got, self.engine.request_for(got), cid, tries)

    def _settle(self, record: ProviderBatch, p: Parked, line: LineResult) -> None:
        """Apply one line to its job: record the answer, park it again for a new batch, or end it."""
        ref = p.step.ref
        if line.kind == "succeeded":
            try:
                completion = self.api.completion(line, p.request)
            except ProviderError as error:
                line = LineResult(line.custom_id, "errored", error=str(error))
            else:
                if self.engine.apply_batched(p.step, p.request, completion) != "released":
                    self.store.unpark(ref.batch, ref.tier_index, ref.job_id, record.id)
                return
        if self.store.cancelled(record.batch):
            self.engine.cancel_parked(p.step)
        elif p.tries + 1 < self.max_tries:
            p.tries += 1
            p.since = time.monotonic()
            with self._lock:
                self._pending.setdefault(ref.batch, []).append(p)
            return              # the new record re-parks it
        else:
            self.engine.apply_batched(p.step, p.request, None, f"batch: the line {line.kind} in {p.tries + 1} "
                                                               f"provider batches: {line.error or line.kind}")
        self.store.unpark(ref.batch, ref.tier_index, ref.job_id, record.id)
