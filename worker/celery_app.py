"""Build the Celery app from settings: one queue per tier, threads pool, late acks, prefetch 1, guarded transport."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from cascade.worker.broker import DEADLETTER_OPTION, TASK_OPTION
from cascade.worker.config.schema import Settings
from cascade.worker.store.keys import Keys

ATTEMPT_TASK = "cascade.attempt"
SHADOW_TASK = "cascade.shadow"        # a shadow quality run (ops/shadow.py), on its own queue
GUARDED_TRANSPORT = "cascade.worker.broker:GuardedTransport"


def use_guarded_transport() -> None:
    """Make kombu resolve redis:// and rediss:// to the guarded transport in this process. Celery's
    `broker_transport` alone is not enough: a reconnect re-reads the URL's scheme (kombu's `switch`)."""
    TRANSPORT_ALIASES["redis"] = GUARDED_TRANSPORT
    TRANSPORT_ALIASES["rediss"] = GUARDED_TRANSPORT


def create_app(settings: Settings, get_engine: Callable[[], object] | None = None,
               get_shadow: Callable[[], object] | None = None) -> Celery:
    """A Celery app for these settings; `get_engine` supplies the engine when this process is a worker
    (`get_shadow` the shadow runner, when it is a shadow worker)."""
    from cascade.worker.tasks import register_tasks

    use_guarded_transport()
    timeout = settings.redis.socket_timeout_s
    app = Celery("cascade", broker=settings.redis.url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,                  # a job is acked after it is recorded, so a crash redelivers it
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,         # a long call never holds other jobs hostage
        task_ignore_result=True,              # results live in the batch's stream, not Celery's backend
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_pool="threads",                # LLM calls are I/O-bound; gevent does not work with httpx
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport=GUARDED_TRANSPORT,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,   # a Redis restart is waited out, however long it takes
        broker_connection_timeout=10,
        broker_transport_options={
            # A backstop only: the reconciler publishes a killed worker's jobs again within a lease length.
            "visibility_timeout": settings.redis.visibility_timeout_s,
            # sweep for a dead worker's unacked messages every interval, not every 10th interval
            "unacked_restore_throttle": 1,
            "unacked_restore_interval": max(1, min(10, settings.redis.visibility_timeout_s // 4)),
            "socket_timeout": timeout,
            "socket_connect_timeout": 10,
            "socket_keepalive": True,
            "health_check_interval": 25,
            "retry_on_timeout": True,
            DEADLETTER_OPTION: Keys(settings.redis.namespace).deadletter,
            TASK_OPTION: (ATTEMPT_TASK, SHADOW_TASK),
        },
        task_create_missing_queues=True,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
    )
    register_tasks(app, get_engine, get_shadow)
    return app
