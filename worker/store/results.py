"""The namespace's results stream as the ledger writers read it: a consumer group, at-least-once delivery.

A writer reads new records (XREADGROUP), stores them in the ledger and commits, and only then acks and
deletes them (XACK + XDEL). A writer that dies in between leaves its records pending; another writer (or
itself, restarted) claims them once they have been idle long enough (XAUTOCLAIM), or at once when its
process is known to be gone (`take_over`), and stores them again, which the ledger's unique (batch, job)
turns into a no-op. So every record reaches the ledger once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from cascade.worker.store.keys import Keys

GROUP = "ledger"
T = TypeVar("T")

log = logging.getLogger("cascade.ledger")


class ResultStream:
    """The results stream of one namespace."""

    def __init__(self, redis: Any, namespace: str = "cascade"):
        self.redis = redis
        self.keys = Keys(namespace)

    def ensure_group(self) -> None:
        """Create the writers' consumer group (from the stream's start, so nothing written before is missed)."""
        try:
            self.redis.xgroup_create(self.keys.results, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _in_group(self, call: Callable[[], T]) -> T:
        """Run a command of the group; a group gone with its stream (Redis restarted without its data, the
        database flushed) is made again and the command run once more. The group starts at the stream's
        beginning, so no record written since is missed."""
        try:
            return call()
        except ResponseError as e:
            if "NOGROUP" not in str(e) and "no such key" not in str(e):
                raise
            log.warning("results stream %s: its consumer group was gone (%s); made again", self.keys.results, e)
            self.ensure_group()
            return call()

    def read(self, consumer: str, count: int = 1000, block_ms: int = 1000) -> list[tuple[bytes, bytes]]:
        """New records for this consumer, as (stream id, record); they stay pending until `ack`."""
        # BLOCK 0 would wait forever: no BLOCK at all when the caller does not want to wait
        reply = self._in_group(lambda: self.redis.xreadgroup(GROUP, consumer, {self.keys.results: ">"}, count=count,
                                                             block=block_ms or None))
        return _entries(reply[0][1] if reply else [])

    def claim_idle(self, consumer: str, min_idle_ms: int, count: int = 1000) -> list[tuple[bytes, bytes]]:
        """Records another writer read and did not ack for `min_idle_ms` (it died): now this consumer's."""
        _, entries, *_ = self._in_group(lambda: self.redis.xautoclaim(self.keys.results, GROUP, consumer, min_idle_ms,
                                                                      "0-0", count=count))
        return _entries(entries)

    def consumers(self) -> list[str]:
        """The names of the writers the group knows (a writer joins by reading; `take_over` removes the dead)."""
        return [c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in self._in_group(lambda: self.redis.xinfo_consumers(self.keys.results, GROUP))]

    def take_over(self, dead: str, consumer: str, count: int = 1000) -> list[tuple[bytes, bytes]]:
        """The records writer `dead` read and did not ack, now this consumer's whatever their idle time; the
        dead writer leaves the group once it holds none (each killed process would otherwise stay listed)."""
        pending = self.redis.xpending_range(self.keys.results, GROUP, "-", "+", count, consumername=dead)
        ids = [p["message_id"] for p in pending]
        claimed = _entries(self.redis.xclaim(self.keys.results, GROUP, consumer, 0, ids)) if ids else []
        if len(ids) < count:
            self.redis.xgroup_delconsumer(self.keys.results, GROUP, dead)
        return claimed

    def ack(self, ids: list[bytes]) -> None:
        """The ledger committed these records: ack and delete them, so the stream stays short."""
        if ids:
            pipe = self.redis.pipeline()
            pipe.xack(self.keys.results, GROUP, *ids)
            pipe.xdel(self.keys.results, *ids)
            pipe.execute()

    def read_all(self) -> list[bytes]:
        """Every record in the stream (an in-process replay reads its own run this way, with no ledger)."""
        return [record for _, record in _entries(self.redis.xrange(self.keys.results))]

    def length(self) -> int:
        """Records waiting for the ledger."""
        return int(self.redis.xlen(self.keys.results))

    def batches_to_sync(self) -> list[str]:
        """Batches whose ledger row is not final yet."""
        return sorted(b.decode() for b in self.redis.smembers(self.keys.ledger_batches))

    def synced(self, batch: str) -> None:
        """The batch's ledger row is final (it runs again after a retry, which adds it back)."""
        self.redis.srem(self.keys.ledger_batches, batch)


def _entries(raw: list) -> list[tuple[bytes, bytes]]:
    """(id, record) pairs; an entry whose record was deleted under a claim comes back empty and is skipped."""
    return [(entry_id, fields[b"r"]) for entry_id, fields in raw if fields and b"r" in fields]
