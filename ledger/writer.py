"""The ledger writer: result records from Redis into the ledger, exactly once, and batch rows kept up to date.

Read (consumer group), write (an insert that ignores a record already there), commit, then ack and delete:
a crash at any point between those steps leaves each record in the ledger once (worker/store/results.py).
`cascade ledger` runs one continuously; `cascade-submit --wait` runs one in-process beside it (embedded
mode too), so results flow whether or not the service runs. Any number may run: they share the group.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import orjson

from cascade.ledger.database import Ledger, LedgerError
from cascade.ops.alerts import sinks_for
from cascade.ops.metrics import process_metrics
from cascade.ops.monitor import Monitor
from cascade.ops.shadow import ShadowStore
from cascade.producer.report import summarize
from cascade.worker.config.schema import Settings
from cascade.worker.store import BatchRecord, BatchStore, ResultStream, StoreError

log = logging.getLogger("cascade.ledger")

SYNC_EVERY_S = 1.0      # how often batch rows are refreshed from Redis
CLAIM_EVERY_S = 1.0     # how often abandoned records are looked for (taken over once claim_idle_s old, or their
#                         writer's process is gone from this host)


def new_consumer() -> str:
    """A writer's name in the consumer group: host, pid and a random suffix."""
    return f"ledger@{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def gone(consumer: str) -> bool:
    """Whether a writer named by `new_consumer` ran on this host and its process no longer runs.

    Its unacked records can then be taken over at once instead of after `claim_idle_s`. A host name shared
    across pid namespaces (containers given one `hostname`) can make a live writer look gone; taking its
    records over then only stores them twice, which the ledger turns into a no-op.
    """
    host, _, pid = consumer.removeprefix("ledger@").rpartition("-")[0].rpartition("-")
    if (not consumer.startswith("ledger@") or not pid.isdigit() or host != socket.gethostname()[:40]
            or int(pid) == os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:         # it runs under another user
        return False
    return False


class LedgerWriter:
    """Moves records from one namespace's results stream into a ledger; one per process is plenty."""

    def __init__(self, settings: Settings, redis: Any, ledger: Ledger, consumer: str | None = None,
                 chunk: int = 1000, claim_idle_s: float | None = None):
        self.settings = settings
        self.ledger = ledger
        self.stream = ResultStream(redis, settings.redis.namespace)
        self.store = BatchStore(redis, settings.redis.namespace)
        self.shadows = ShadowStore(redis, settings.redis.namespace)
        self.consumer = consumer or new_consumer()
        self.chunk = chunk
        self.claim_idle_ms = round((settings.ledger.claim_idle_s if claim_idle_s is None else claim_idle_s) * 1000)
        self.written = 0
        self._synced = 0.0
        self._claimed = 0.0
        self._started = False
        self._lock = threading.Lock()
        # the alert gauge of `cascade ledger --metrics-port` follows every alert this writer's monitor sends
        sinks = (*sinks_for(settings, ledger), process_metrics().set_alert_state)
        self.monitor = Monitor(settings, sinks, ledger)

    def start(self) -> None:
        """Migrate the ledger and join the consumer group (both idempotent)."""
        if not self._started:
            self.ledger.migrate()
            self.stream.ensure_group()
            self._started = True

    def step(self, block_ms: int = 0) -> int:
        """One round: take over abandoned records, read new ones, store them, ack them; refresh batch rows.
        Returns how many records were stored (new or already there)."""
        with self._lock:        # a writer's rounds never overlap (the submit loop and its thread share one)
            self.start()
            now = time.monotonic()
            entries = []
            if now - self._claimed >= CLAIM_EVERY_S:
                self._claimed = now
                for dead in filter(gone, self.stream.consumers()):
                    entries += self.stream.take_over(dead, self.consumer, self.chunk)
                entries += self.stream.claim_idle(self.consumer, self.claim_idle_ms, self.chunk)
            entries += self.stream.read(self.consumer, self.chunk, block_ms)
            if entries:
                self.ledger.write_results([record for _, record in entries])
                self.stream.ack([entry_id for entry_id, _ in entries])
                self.written += len(entries)
                self._watch([record for _, record in entries])
            if now - self._synced >= SYNC_EVERY_S or entries:
                self._synced = now
                self.sync_batches()
            self.move_shadow_pairs()
            return len(entries)

    def _watch(self, records: list[bytes]) -> None:
        """Feed committed records to the alert monitor; its trouble is logged and never stops the writer."""
        try:
            self.monitor.observe_records(orjson.loads(raw) for raw in records)
        except Exception as e:  # noqa: BLE001 - a monitor bug must not stop records flowing
            log.warning("ledger: alerts skipped %d records: %s", len(records), e)

    def move_shadow_pairs(self) -> int:
        """Shadow pairs from their stream into the ledger (stored once each), then off the stream; how many."""
        pairs = self.shadows.pending_pairs(self.chunk)
        if pairs:
            self.ledger.write_shadow_pairs([pair for _, pair in pairs])
            self.shadows.delete_pairs([entry_id for entry_id, _ in pairs])
            try:
                self.monitor.observe_shadow(pair for _, pair in pairs)
                self._show_agreement()
            except Exception as e:  # noqa: BLE001 - a monitor bug must not stop pairs flowing
                log.warning("ledger: alerts skipped %d shadow pairs: %s", len(pairs), e)
        return len(pairs)

    def _show_agreement(self) -> None:
        """The shadow-agreement gauges of `cascade ledger --metrics-port` (what deploy/prometheus's rule reads)."""
        metrics = process_metrics()
        for pipeline, (value, baseline) in self.monitor.agreement().items():
            if value is not None:
                metrics.set_shadow_agreement(pipeline, value)
            if baseline is not None:
                metrics.set_shadow_baseline(pipeline, baseline)

    def drain(self) -> int:
        """Store everything waiting now; return how many records."""
        total = 0
        while (n := self.step()) > 0:
            total += n
        while self.move_shadow_pairs():     # shadow pairs beyond the chunk the last round moved
            pass
        return total

    def sync_batches(self) -> None:
        """Bring the ledger rows of unfinished batches up to date; a finished one gets its per-tier figures."""
        for batch in self.stream.batches_to_sync():
            record = self.store.batch(batch)
            if record is None:          # expired from Redis before its last sync: its row stays as it was
                self.stream.synced(batch)
                continue
            in_ledger = self.ledger.result_count(batch)
            finished = record.finished and in_ledger >= record.done
            self.ledger.upsert_batch(batch_row(record, finished), self._figures(record) if finished else ())
            if finished:
                self.stream.synced(batch)

    def _figures(self, record: BatchRecord) -> list[dict[str, Any]]:
        pipeline = self.settings.pipelines.get(record.pipeline)
        if pipeline is None:
            return []
        summary = summarize(record.counters, self.settings, pipeline)
        return [{"batch_id": record.id, "tier": t["tier"], "position": i, "model": t["model"],
                 "attempts": t["attempts"], "accepted": t["accepted"], "escalated": t["escalated"],
                 "final_jobs": t["final_jobs"], "input_tokens": t["input_tokens"], "output_tokens": t["output_tokens"],
                 "cost_nanos": round(t["cost_usd"] * 1e9), "latency_p50_ms": t["latency_ms"]["p50"],
                 "latency_p95_ms": t["latency_ms"]["p95"]} for i, t in enumerate(summary["tiers"])]

    def run(self, stop: threading.Event) -> None:
        """Step until `stop`; a Redis or database outage is waited out and said once."""
        trouble: str | None = None
        while not stop.is_set():
            try:
                self.step(block_ms=500)
                if trouble is not None:
                    log.warning("ledger: %s is back", trouble)
                    trouble = None
            except StoreError as e:
                trouble = self._trouble(trouble, "Redis", e)
            except LedgerError as e:
                trouble = self._trouble(trouble, "the ledger database", e)
            except Exception:
                log.exception("ledger: a round failed")
                stop.wait(1.0)

    def _trouble(self, current: str | None, what: str, error: Exception) -> str:
        if current != what:
            log.warning("ledger: %s unreachable (%s); records wait in Redis until it is back", what, error)
        time.sleep(1.0)
        return what


def batch_row(record: BatchRecord, finished: bool) -> dict[str, Any]:
    """The ledger row of a batch, from its Redis record."""
    counters = dict(record.counters)
    row = {
        "id": record.id,
        "pipeline": record.pipeline,
        "source": record.source,
        "mode": record.mode,
        "state": "finished" if finished else record.state,
        "submitted_at": record.created or time.time(),
        "total": record.total,
        "done": record.done,
        "cost_nanos": counters.get("cost", 0),
        "counterfactual_nanos": counters.get("counterfactual", 0),
        "budget_nanos": record.budget_nanos,
        "counters": counters,
        "updated_at": time.time(),
    }
    if finished:
        row["finished_at"] = time.time()
    return row


def start_thread(writer: LedgerWriter) -> tuple[threading.Thread, threading.Event]:
    """Run a writer on a daemon thread; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), name="cascade-ledger", daemon=True)
    thread.start()
    return thread, stop
