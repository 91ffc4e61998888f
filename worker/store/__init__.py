"""The only place that spells Redis keys and holds Lua scripts."""

from redis.exceptions import RedisError as StoreError  # what a failing store raises

from cascade.worker.store.batches import BatchRecord, BatchStore, KeptJob, Registration
from cascade.worker.store.jobs import JobStore, Lease, LeaseCode, Recorded, pack_counters
from cascade.worker.store.keys import Keys, check_batch_id
from cascade.worker.store.results import ResultStream
from cascade.worker.store.sweeps import Claimed, SweepStore, WorkerInfo

__all__ = ["BatchRecord", "BatchStore", "Claimed", "JobStore", "KeptJob", "Keys", "Lease", "LeaseCode", "Recorded",
           "Registration", "ResultStream", "StoreError", "SweepStore", "WorkerInfo", "check_batch_id", "pack_counters"]
