"""Batch control from anywhere that reaches the Redis: cancel a batch, change its budget, retry its jobs."""

from __future__ import annotations

from collections.abc import Sequence

from cascade.errors import ConfigError
from cascade.worker.backends import Backend
from cascade.worker.config.schema import Settings
from cascade.worker.messages import JobPayload, JobRef
from cascade.worker.store import BatchRecord

CHUNK = 500


def existing(backend: Backend, batch: str) -> BatchRecord:
    """The batch record, or ConfigError when there is no such batch."""
    record = backend.store.batch(batch)
    if record is None:
        raise ConfigError(f"no batch '{batch}'")
    return record


def retry(backend: Backend, settings: Settings, batch: str, statuses: Sequence[str]) -> int:
    """Run again the jobs of `batch` that ended with one of `statuses`, each from the tier it stopped at
    (the cheaper tiers it already paid for are not called again); return how many were put back."""
    record = existing(backend, batch)
    pipeline = settings.pipeline(record.pipeline)
    store = backend.store
    put_back = 0
    kept = list(store.kept_jobs(batch, statuses))
    for start in range(0, len(kept), CHUNK):
        chunk = kept[start:start + CHUNK]
        entries = [(job, JobPayload.from_json(job.job_id, job.payload).retried().to_json()) for job in chunk]
        moved = store.retry_jobs(batch, pipeline.name, pipeline.ladder, entries)
        backend.dispatcher.send_many([JobRef(batch, pipeline.name, job_id, step, seq) for job_id, step, seq in moved])
        put_back += len(moved)
    return put_back
