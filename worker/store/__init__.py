"""The only place that spells Redis keys and holds Lua scripts."""

from worker.store.batches import Begin, BatchStore
from worker.store.keys import Keys, check_batch_id

__all__ = ["Begin", "BatchStore", "Keys", "check_batch_id"]

from redis.exceptions import RedisError as StoreError  # noqa: E402  (what a failing store raises)

__all__ += ["StoreError"]
