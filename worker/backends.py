"""Open the stores and dispatcher for a run: embedded (one process) or distributed (Redis + Celery)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis

from cascade.worker.config.schema import Pipeline, Settings
from cascade.worker.dispatch.base import Dispatcher
from cascade.worker.store import BatchStore, JobStore, SweepStore, WorkerInfo


@dataclass
class Backend:
    """A batch store, the sweeps store and a dispatcher that share one Redis; `mode` is embedded or distributed."""

    mode: str
    store: BatchStore
    sweeps: SweepStore
    dispatcher: Dispatcher
    stop: Any = None            # embedded: what tells waiting jobs to give up when the run ends
    shadows: Any = None         # embedded: the in-process shadow queue (ops/shadow.py LocalShadows)

    def finish_shadows(self) -> None:
        """Embedded: run the shadow jobs still queued (after the real work); distributed: nothing to do."""
        if self.shadows is not None:
            self.shadows.finish()

    def backlog(self, tier_name: str) -> int:
        """Messages waiting (or, embedded, running) on a tier."""
        return self.dispatcher.backlog(tier_name)

    def close(self) -> None:
        """Stop local pools or release broker connections."""
        if self.shadows is not None:
            self.shadows.close()
        if self.stop is not None:
            self.stop()
        self.dispatcher.close()


def redis_client(settings: Settings) -> redis.Redis:
    """A client for the configured Redis whose commands time out instead of hanging on a dead connection."""
    return redis.Redis.from_url(settings.redis.url, socket_timeout=settings.redis.socket_timeout_s,
                                socket_connect_timeout=10, socket_keepalive=True, health_check_interval=30)


def batch_store(settings: Settings, client: Any) -> BatchStore:
    """The batch store of these settings over `client` (real Redis or fakeredis)."""
    return BatchStore(client, settings.redis.namespace, retention_s=settings.redis.retention_days * 86400)


def job_store(settings: Settings, client: Any) -> JobStore:
    """The job store of these settings over `client`."""
    return JobStore(client, settings.redis.namespace, retention_s=settings.redis.retention_days * 86400)


def open_backend(settings: Settings, providers: Any = None, pipeline: Pipeline | None = None) -> Backend:
    """The backend the settings ask for: embedded when no Redis URL is configured. Embedded, the API keys of
    the tiers `pipeline` calls are checked here, before anything is submitted."""
    if settings.embedded:
        return _embedded(settings, providers, pipeline)
    from cascade.worker.celery_app import create_app
    from cascade.worker.dispatch.celery_dispatch import CeleryDispatcher

    client = redis_client(settings)
    store = batch_store(settings, client)
    app = create_app(settings)
    return Backend("distributed", store, SweepStore(client, settings.redis.namespace),
                   CeleryDispatcher(app, settings, store))


def _embedded(settings: Settings, providers: Any, pipeline: Pipeline | None) -> Backend:
    import fakeredis

    from cascade.worker.dispatch.local import LocalDispatcher
    from cascade.worker.engine import Engine
    from cascade.worker.leases import LeaseKeeper
    from cascade.worker.limiter import RedisLimiter
    from cascade.worker.runtime import ProviderPool, called_tiers

    providers = providers or ProviderPool(settings)
    if pipeline is not None:
        providers.check(called_tiers(pipeline))
    client = fakeredis.FakeRedis()
    store = batch_store(settings, client)
    sweeps = SweepStore(client, settings.redis.namespace)
    dispatcher = LocalDispatcher(settings)
    keeper = LeaseKeeper(None, "embedded", lease_s=settings.engine.lease_s)
    limiter = RedisLimiter(client, settings.redis.namespace, sleep=keeper.sleep,     # the same scripts, in-process
                           circuit=circuit_policy(settings))
    engine = Engine(settings, job_store(settings, client), providers, dispatcher, limiter, keeper=keeper,
                    sweeps=sweeps)
    dispatcher.bind(engine.handle)
    shadows = _local_shadows(settings, engine, client, dispatcher, keeper)
    runners = [batch_runner(settings, engine, client, providers, tier, keeper.worker_id).start()
               for tier in called_batch_tiers(settings, pipeline)]

    def stop() -> None:
        for runner in runners:
            runner.stop()
        keeper.stop()

    return Backend("embedded", store, sweeps, dispatcher, stop=stop, shadows=shadows)


def called_batch_tiers(settings: Settings, pipeline: Pipeline | None) -> list[str]:
    """The batch-mode tiers of `pipeline`'s ladder (of every pipeline when None)."""
    pipelines = [pipeline] if pipeline is not None else list(settings.pipelines.values())
    names = {name for p in pipelines for name in p.ladder}
    return sorted(name for name in names if settings.tiers[name].batched)


def batch_runner(settings: Settings, engine: Any, client: Any, providers: Any, tier_name: str, worker_id: str) -> Any:
    """The provider-batch runner of a batch-mode tier, registered with the engine (not started)."""
    from cascade.worker.batching import BatchRunner
    from cascade.worker.store.provider_batches import ProviderBatchStore
    from cascade.worker.store_retry import WaitedOut

    tier = settings.tiers[tier_name]
    # waited out: a record saved after the provider created its batch must not be lost to a Redis restart
    store = WaitedOut(ProviderBatchStore(client, settings.redis.namespace), engine.store)
    runner = BatchRunner(engine, tier, providers.get(tier_name).batch_api(), store, worker_id,
                         max_tries=max(1, settings.engine.max_retries))
    engine.batching[tier_name] = runner
    return runner


def _local_shadows(settings: Settings, engine: Any, client: Any, dispatcher: Any, keeper: Any) -> Any:
    """Embedded shadow sampling: shadow jobs run on one thread of this process when no real work is queued."""
    if settings.shadow.rate <= 0:
        return None
    from cascade.ops.shadow import LocalShadows, ShadowRunner, ShadowStore, attach_sampler

    store = ShadowStore(client, settings.redis.namespace)
    idle = lambda _tier: all(dispatcher.backlog(t) == 0 for t in settings.tiers)
    shadows = LocalShadows(lambda: ShadowRunner(engine, store, idle, sleep=keeper.sleep))
    attach_sampler(engine, client, shadows.publish)
    return shadows


def circuit_policy(settings: Settings) -> Any:
    """The [engine] section's circuit settings."""
    from cascade.worker.limiter import CircuitPolicy

    engine = settings.engine
    return CircuitPolicy(engine.circuit_failures, engine.circuit_open_s, engine.circuit_max_open_s)


@dataclass
class WorkerRuntime:
    """What one `cascade worker` process runs besides Celery: the engine, its heartbeat and its reconciler."""

    engine: Any
    keeper: Any
    reconciler: Any
    info: WorkerInfo
    shadow: Any = None          # a shadow worker's runner (`cascade worker --shadow`)
    batches: Any = None         # a batch-mode tier's provider-batch runner (worker/batching.py)

    def start(self) -> None:
        """Register the worker, then start the heartbeat, the reconciler and the provider-batch runner."""
        self.keeper.start(self.info)
        self.reconciler.start()
        if self.batches is not None:
            self.batches.start()

    def stopping(self) -> None:
        """Warm shutdown began: jobs that wait (circuit, stopped tier, Redis) give their leases back."""
        self.keeper.stop()

    def close(self) -> None:
        """The worker stopped: give parked jobs back, keep unrecorded paid answers, end the threads, unregister."""
        if self.batches is not None:
            self.batches.stop()
        self.reconciler.stop()
        self.engine.keep_paid_answers()
        self.keeper.close()


def worker_runtime(settings: Settings, app: Any, tier_name: str, concurrency: int, providers: Any = None,
                   shadow: bool = False) -> WorkerRuntime:
    """The engine a Celery worker process runs: real Redis stores, escalations published through `app`;
    `shadow`: a shadow worker of `tier_name` (it runs shadow jobs, the others sample them)."""
    from cascade.worker.dispatch.celery_dispatch import CeleryDispatcher
    from cascade.worker.engine import Engine
    from cascade.worker.leases import LeaseKeeper, new_worker_id
    from cascade.worker.limiter import RedisLimiter
    from cascade.worker.reconciler import Reconciler
    from cascade.worker.runtime import ProviderPool

    providers = providers or ProviderPool(settings, threads=concurrency)
    providers.get(tier_name)            # fail at startup, not on the first job, when the key is missing
    client = redis_client(settings)
    store = batch_store(settings, client)
    sweeps = SweepStore(client, settings.redis.namespace)
    engine_cfg = settings.engine
    worker_id = new_worker_id(tier_name)
    keeper = LeaseKeeper(sweeps, worker_id, lease_s=engine_cfg.lease_s, heartbeat_s=engine_cfg.heartbeat_s)
    limiter = RedisLimiter(client, settings.redis.namespace, sleep=keeper.sleep, circuit=circuit_policy(settings))
    dispatcher = CeleryDispatcher(app, settings, store)
    engine = Engine(settings, job_store(settings, client), providers, dispatcher, limiter, keeper=keeper,
                    sweeps=sweeps)
    reconciler = Reconciler(settings, sweeps, dispatcher, lease_s=engine_cfg.lease_s, sweep_s=engine_cfg.sweep_s,
                            queue_depth=dispatcher.backlog)
    info = WorkerInfo(worker_id, tier_name, concurrency, socket.gethostname(), os.getpid(), round(time.time(), 3))
    from cascade.ops.shadow import ShadowRunner, ShadowStore, attach_sampler, celery_publisher

    runner = None
    if shadow:      # registered as shadow.<tier>: it is no worker of the tier's real queue
        info = WorkerInfo(worker_id, f"shadow.{tier_name}", concurrency, info.host, info.pid, info.started)
        runner = ShadowRunner(engine, ShadowStore(client, settings.redis.namespace),
                              idle=lambda tier: dispatcher.backlog(tier) == 0, sleep=keeper.sleep)
    else:
        attach_sampler(engine, client, celery_publisher(app, settings))
    batches = None
    if settings.tiers[tier_name].batched and not shadow:
        batches = batch_runner(settings, engine, client, providers, tier_name, worker_id)
    return WorkerRuntime(engine, keeper, reconciler, info, runner, batches)
