"""Open the store and dispatcher for a run: embedded (one process) or distributed (Redis + Celery)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from cascade.worker.config.schema import Settings
from cascade.worker.dispatch.base import Dispatcher
from cascade.worker.store import BatchStore


@dataclass
class Backend:
    """A store and a dispatcher that share one Redis; `mode` is embedded or distributed."""

    mode: str
    store: BatchStore
    dispatcher: Dispatcher

    def backlog(self, tier_name: str) -> int:
        """Messages waiting (or, embedded, running) on a tier."""
        return self.dispatcher.backlog(tier_name)

    def close(self) -> None:
        """Stop local pools or release broker connections."""
        self.dispatcher.close()


def batch_store(settings: Settings, client: Any) -> BatchStore:
    """The batch store of these settings over `client` (real Redis or fakeredis)."""
    return BatchStore(client, settings.redis.namespace, retention_s=settings.redis.retention_days * 86400)


def open_backend(settings: Settings, providers: Any = None) -> Backend:
    """The backend the settings ask for: embedded when no Redis URL is configured."""
    if settings.embedded:
        return _embedded(settings, providers)
    from cascade.worker.celery_app import create_app
    from cascade.worker.dispatch.celery_dispatch import CeleryDispatcher

    client = redis.Redis.from_url(settings.redis.url)
    store = batch_store(settings, client)
    app = create_app(settings)
    return Backend("distributed", store, CeleryDispatcher(app, settings, store))


def _embedded(settings: Settings, providers: Any) -> Backend:
    import fakeredis

    from cascade.worker.dispatch.local import LocalDispatcher
    from cascade.worker.engine import Engine
    from cascade.worker.limiter import RedisLimiter
    from cascade.worker.runtime import ProviderPool

    client = fakeredis.FakeRedis()
    store = batch_store(settings, client)
    dispatcher = LocalDispatcher(settings)
    limiter = RedisLimiter(client, settings.redis.namespace)   # same scripts as distributed, in-process
    engine = Engine(settings, store, providers or ProviderPool(settings), dispatcher, limiter)
    dispatcher.bind(engine.handle)
    return Backend("embedded", store, dispatcher)


def worker_engine(settings: Settings, app: Any, tier_name: str, providers: Any = None) -> Any:
    """The engine a Celery worker process runs: real Redis store, escalations published through `app`."""
    from cascade.worker.dispatch.celery_dispatch import CeleryDispatcher
    from cascade.worker.engine import Engine
    from cascade.worker.limiter import RedisLimiter
    from cascade.worker.runtime import ProviderPool

    providers = providers or ProviderPool(settings)
    providers.get(tier_name)            # fail at startup, not on the first job, when the key is missing
    client = redis.Redis.from_url(settings.redis.url)
    store = batch_store(settings, client)
    limiter = RedisLimiter(client, settings.redis.namespace)   # tier limits shared by every worker process
    return Engine(settings, store, providers, CeleryDispatcher(app, settings, store), limiter)
