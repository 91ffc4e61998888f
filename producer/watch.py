"""While a producer waits for its batch: say when a tier it needs is stopped, or nobody consumes its queue.

In distributed mode these are warnings (an operator fixes the key and restarts the workers, and the
wait goes on); in embedded mode a stopped tier ends the run, since nothing else can fix it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cascade.worker.backends import Backend
from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.runtime import called_tiers
from cascade.worker.store import StoreError

CHECK_EVERY_S = 2.0
NO_WORKER_GRACE_S = 10.0     # how long the first queue may go unconsumed before the first warning
REPEAT_S = 60.0              # how often a standing problem is said again


class TierStopped(Exception):
    """Embedded: a tier the batch needs cannot work (bad key, unknown model)."""


class Watch:
    """Health checks for one waiting batch; `check()` is cheap to call often."""

    def __init__(self, backend: Backend, settings: Settings, pipeline: Pipeline, say: Callable[[str], None]):
        self.backend = backend
        self.settings = settings
        self.pipeline = pipeline
        self.say = say
        self.tiers = called_tiers(pipeline)
        self._checked = 0.0
        self._started = time.monotonic()
        self._said: dict[str, float] = {}

    def check(self) -> None:
        """Look at the tiers and the workers now and then; TierStopped in embedded mode."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        try:
            stopped = self.backend.sweeps.stopped_tiers(self.tiers)
            for tier, reason in stopped.items():
                reason = reason.rstrip(".")     # a provider's message often ends with one; ours follows
                if self.backend.mode == "embedded":
                    raise TierStopped(f"tier '{tier}' cannot work: {reason}. Fix it and run the batch again")
                self._say(f"stopped:{tier}", f"tier {tier} is stopped: {reason}. Its jobs wait: fix the key or "
                          f"model and restart its workers (cascade worker --tier {tier})")
            if self.backend.mode == "distributed" and now - self._started > NO_WORKER_GRACE_S:
                first = self.pipeline.ladder[0]
                if not any(w.tier == first for w in self.backend.sweeps.live_workers()):
                    queue = self.settings.tiers[first].queue_name
                    self._say("no-worker", f"no worker is consuming {queue}: start one with "
                              f"`cascade worker --tier {first}`; the batch waits")
        except StoreError:
            pass        # Redis restarting: the wait itself says so

    def _say(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._said.get(key, -REPEAT_S) >= REPEAT_S:
            self._said[key] = now
            self.say(f"warning: {message}")
