"""Answers paid for but not yet recorded: held in memory until their step is recorded, so a store failure
after a call (Redis refusing, a dead-letter) never pays for the same answer twice."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import orjson

from cascade.models import Completion
from cascade.worker.store import StoreError

log = logging.getLogger("cascade.engine")

PAID_CACHE = 10_000         # paid completions kept in memory while their recording fails

Key = tuple[str, str, int]  # (batch, job id, ladder step)


class PaidAnswers:
    """The process's unrecorded paid answers, shared by its threads; `jobs` (a JobStore) keeps them in Redis."""

    def __init__(self, jobs: Any):
        self.jobs = jobs
        self._held: OrderedDict[Key, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key, kept: bytes = b"") -> Completion | None:
        """The answer kept in Redis (`kept`, from the lease) or held here for this step, if any."""
        if not kept:
            with self._lock:
                kept = self._held.get(key, b"")
        return Completion.from_dict(orjson.loads(kept)) if kept else None

    def remember(self, key: Key, completion: Completion) -> None:
        """Hold a paid answer until its step is recorded (the oldest go past PAID_CACHE)."""
        with self._lock:
            self._held[key] = orjson.dumps(completion.to_dict())
            while len(self._held) > PAID_CACHE:
                self._held.popitem(last=False)

    def forget(self, key: Key) -> None:
        """The step is recorded."""
        with self._lock:
            self._held.pop(key, None)

    def keep(self, key: Key) -> None:
        """Write one held answer to Redis, for a delivery to another worker (best effort)."""
        with self._lock:
            raw = self._held.get(key)
        if raw is not None:
            try:
                self.jobs.keep_paid(key[0], key[1], raw)
            except StoreError:
                pass

    def keep_all(self) -> None:
        """Write every held answer to Redis (before a worker stops with recordings still failing)."""
        with self._lock:
            items = list(self._held.items())
        for (batch, job_id, _), raw in items:
            try:
                self.jobs.keep_paid(batch, job_id, raw)
            except StoreError:
                log.error("job %s/%s: its paid answer could not be kept: %s", batch, job_id, raw[:200])
