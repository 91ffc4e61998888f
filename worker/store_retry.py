"""Store calls that outlast Redis trouble: a restart or failover is waited out, a refusal is retried a few times.

Redis restarting, loading its AOF, or read-only during a failover are passing faults: the call waits
(as long as the process is not stopping) and then goes through. A refusal that may not pass (an OOM
under `noeviction`, a script error) is tried `retries` more times, then raised as StoreRefused so the
engine can take the job out of circulation instead of looping on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError, RedisError, TimeoutError

log = logging.getLogger("cascade.engine")
T = TypeVar("T")

PASSING = (ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError)
FIRST_WAIT_S = 0.2
LONGEST_WAIT_S = 5.0


class StoreRefused(Exception):
    """Redis refused a write `retries + 1` times for a reason that may not pass (OOM, a script error)."""

    def __init__(self, what: str, error: RedisError):
        super().__init__(f"{what}: Redis refused it: {type(error).__name__}: {error}")
        self.error = error


class StoreRetry:
    """Runs one store call through passing Redis faults; shared by a worker's threads."""

    def __init__(self, sleep: Callable[[float], None], retries: int = 5):
        self.sleep = sleep
        self.retries = retries

    def __call__(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, retried while Redis is unreachable; StoreRefused after `retries` refusals."""
        refusals = 0
        wait = FIRST_WAIT_S
        outage_since: float | None = None
        while True:
            try:
                result = call()
            except PASSING as error:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("%s: Redis unreachable (%s); waiting for it", what, error)
            except RedisError as error:
                refusals += 1
                if refusals > self.retries:
                    raise StoreRefused(what, error) from None
                log.warning("%s: Redis refused it (%s: %s); try %d of %d", what, type(error).__name__, error,
                            refusals, self.retries)
            else:
                if outage_since is not None:
                    log.warning("%s: Redis answers again after %.1f s", what, time.monotonic() - outage_since)
                return result
            self.sleep(wait)
            wait = min(LONGEST_WAIT_S, wait * 2)


class WaitedOut:
    """A store whose every method call goes through a StoreRetry: for threads whose memory and Redis must not
    part (the provider-batch runner), so a call that fails mid-way is tried again rather than abandoned.
    Only for stores whose calls are idempotent."""

    def __init__(self, store: object, retry: StoreRetry):
        self._store = store
        self._retry = retry

    def __getattr__(self, name: str) -> object:
        method = getattr(self._store, name)
        if not callable(method):
            return method
        what = f"{type(self._store).__name__}.{name}"
        return lambda *args, **kwargs: self._retry(what, lambda: method(*args, **kwargs))
