"""Build the Celery app from settings: one queue per tier, threads pool, late acks, prefetch 1."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from cascade.worker.config.schema import Settings

ATTEMPT_TASK = "cascade.attempt"


def create_app(settings: Settings, get_engine: Callable[[], object] | None = None) -> Celery:
    """A Celery app for these settings; `get_engine` supplies the engine when this process is a worker."""
    from cascade.worker.tasks import register_tasks

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
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.redis.visibility_timeout_s,
            # sweep for a dead worker's unacked messages every interval, not every 10th interval
            "unacked_restore_throttle": 1,
            "unacked_restore_interval": max(1, min(10, settings.redis.visibility_timeout_s // 4)),
        },
        task_create_missing_queues=True,
    )
    register_tasks(app, get_engine)
    return app
