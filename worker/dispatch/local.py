"""Embedded mode: one thread pool per tier in this process, sized by the tier's concurrency."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from cascade.worker.config.schema import Settings
from cascade.worker.messages import JobRef

log = logging.getLogger("cascade.local")


class LocalDispatcher:
    """Runs each message on its tier's pool; counts what is queued or running per tier."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pools = {name: ThreadPoolExecutor(tier.concurrency, thread_name_prefix=f"tier-{name}")
                       for name, tier in settings.tiers.items()}
        self._pending = {name: 0 for name in settings.tiers}
        self._lock = threading.Lock()
        self._handler: Callable[[JobRef], object] | None = None

    def bind(self, handler: Callable[[JobRef], object]) -> None:
        """Set the function that processes a message (the engine's `handle`)."""
        self._handler = handler

    def send(self, ref: JobRef, first: bool = False) -> None:
        """Queue one message on its tier's pool (`first` changes nothing here: nothing waits long)."""
        tier = self.settings.pipeline(ref.pipeline).ladder[ref.tier_index]
        with self._lock:
            self._pending[tier] += 1
        self._pools[tier].submit(self._run, tier, ref)

    def send_many(self, refs: Sequence[JobRef]) -> None:
        """Queue a chunk."""
        for ref in refs:
            self.send(ref)

    def backlog(self, tier_name: str) -> int:
        """Messages queued or running on a tier."""
        with self._lock:
            return self._pending[tier_name]

    def _run(self, tier: str, ref: JobRef) -> None:
        try:
            self._handler(ref)
        except Exception:
            log.exception("job %s failed on tier %s", ref.label, tier)
        finally:
            with self._lock:
                self._pending[tier] -= 1

    def close(self) -> None:
        """Finish what is running and stop the pools."""
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
