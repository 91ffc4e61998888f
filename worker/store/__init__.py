"""The only place that spells Redis keys and holds Lua scripts."""

from cascade.worker.store.batches import BatchRecord, BatchStore, Begin
from cascade.worker.store.keys import Keys, check_batch_id

__all__ = ["BatchRecord", "BatchStore", "Begin", "Keys", "check_batch_id"]

from redis.exceptions import RedisError as StoreError  # noqa: E402  (what a failing store raises)

__all__ += ["StoreError"]
