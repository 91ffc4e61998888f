"""Thin Celery shells over the engine."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from cascade.worker.messages import AttemptMessage
from cascade.worker.store import StoreError

log = logging.getLogger("cascade.tasks")


def register_tasks(app: Celery, get_engine: Callable[[], Any] | None) -> None:
    """Register `cascade.attempt` on the app."""
    from cascade.worker.celery_app import ATTEMPT_TASK

    @app.task(name=ATTEMPT_TASK, ignore_result=True, shared=False, bind=True)   # per-app closure
    def attempt(self: Any, message: dict[str, Any]) -> str:
        """Run one attempt of one job on this worker's tier."""
        if get_engine is None:
            raise RuntimeError("this process publishes only; start workers with `cascade worker`")
        try:
            return get_engine().handle(AttemptMessage.from_wire(message), redelivered=_redelivered(self.request))
        except StoreError as error:
            # Redis hiccup: put the message back rather than lose the job; pause so a dead Redis is not hammered.
            log.warning("store error on %s/%s: %s; requeueing", message.get("b"), message.get("id"), error)
            time.sleep(1.0)
            raise Reject(str(error), requeue=True) from error


def _redelivered(request: Any) -> bool:
    """Whether the broker may have delivered this message before (kombu flags the messages it restores)."""
    info = request.delivery_info
    return True if not info else bool(info.get("redelivered", True))
