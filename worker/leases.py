"""The leases one worker process holds, kept alive by its heartbeat; and the process's stop signal.

A leased job belongs to this process while the heartbeat renews its lease. A killed process stops
renewing, so its leases expire within `lease_s` and the reconciler publishes those jobs again. Waits
(an open circuit, a stopped tier, a Redis outage) sleep through `sleep`, which raises ShuttingDown
once the process is asked to stop, so a warm shutdown never hangs on a job that is waiting.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid

from cascade.worker.store import StoreError, SweepStore, WorkerInfo

log = logging.getLogger("cascade.worker")

LIVENESS_FACTOR = 3     # a worker's liveness key outlives this many missed heartbeats


class ShuttingDown(Exception):
    """The process is stopping: a waiting job gives its lease back instead of waiting on."""


def new_worker_id(tier: str) -> str:
    """A worker id, unique across machines and restarts: tier, host, pid and a random suffix."""
    host = socket.gethostname().replace("|", "-")[:40]
    return f"{tier.replace('|', '-')}@{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseKeeper:
    """Hands out lease tokens, remembers which jobs this process holds, and renews them."""

    def __init__(self, sweeps: SweepStore | None, worker_id: str, *, lease_s: float = 15.0, heartbeat_s: float = 2.0):
        self.sweeps = sweeps
        self.worker_id = worker_id
        self.lease_ms = round(lease_s * 1000)
        self.heartbeat_s = heartbeat_s
        self.stopping = threading.Event()     # warm shutdown: waiting jobs give their leases back
        self._closed = threading.Event()      # the process is done: the heartbeat ends
        self._held: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._thread: threading.Thread | None = None
        self._info: WorkerInfo | None = None
        self._failing_since: float | None = None

    # -- leases ----------------------------------------------------------------------------

    def new_token(self) -> str:
        """A lease token no other delivery anywhere will have."""
        return f"{self._prefix}{next(self._ids):x}@{self.worker_id}"

    def hold(self, batch: str, job_id: str, token: str) -> None:
        """This process now works on the job: renew its lease until `drop`."""
        with self._lock:
            self._held[(batch, job_id)] = token

    def drop(self, batch: str, job_id: str) -> None:
        """The job is recorded or given back: stop renewing its lease."""
        with self._lock:
            self._held.pop((batch, job_id), None)

    def held(self) -> list[tuple[str, str]]:
        """(batch, job id) of every lease held now."""
        with self._lock:
            return list(self._held)

    # -- waiting ---------------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Sleep, or raise ShuttingDown as soon as the process is asked to stop."""
        if self.stopping.wait(max(0.0, seconds)):
            raise ShuttingDown()

    def stop(self) -> None:
        """Ask every waiting job to give its lease back (warm shutdown)."""
        self.stopping.set()

    # -- the heartbeat ---------------------------------------------------------------------

    def start(self, info: WorkerInfo) -> None:
        """Register the worker and renew its liveness and leases every `heartbeat_s` on a daemon thread."""
        if self.sweeps is None:
            return
        self._info = info
        self.sweeps.register_worker(info, self.liveness_ms)
        self._thread = threading.Thread(target=self._run, name="cascade-heartbeat", daemon=True)
        self._thread.start()

    @property
    def liveness_ms(self) -> int:
        """How long the worker counts as alive after its last heartbeat."""
        return round(self.heartbeat_s * LIVENESS_FACTOR * 1000)

    def beat(self) -> None:
        """One heartbeat: liveness and every held lease, in one round trip."""
        self.sweeps.heartbeat(self._info, self.liveness_ms, self.held(), self.lease_ms)

    def _run(self) -> None:
        # Runs through a warm shutdown: calls still in flight keep their leases until they are recorded.
        while not self._closed.wait(self.heartbeat_s):
            try:
                self.beat()
                if self._failing_since is not None:
                    log.warning("heartbeat: Redis answers again after %.0f s", time.monotonic() - self._failing_since)
                    self._failing_since = None
            except StoreError as error:     # Redis restarting: keep trying, say so once
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("heartbeat: Redis unreachable (%s); leases renew once it is back", error)
            except Exception:               # never let the heartbeat die: its leases would be taken over
                log.exception("heartbeat failed")

    def close(self) -> None:
        """Stop the heartbeat and unregister the worker (it stopped cleanly)."""
        self.stop()
        self._closed.set()
        if self.sweeps is not None:
            try:
                self.sweeps.unregister_worker(self.worker_id)
            except StoreError:
                pass        # Redis is gone: the liveness key expires by itself
