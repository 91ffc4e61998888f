"""The thin Celery shell over the engine: decode the job reference, run it, dead-letter what is not a job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from cascade.errors import PoisonMessage
from cascade.worker.messages import JobRef

log = logging.getLogger("cascade.tasks")


def register_tasks(app: Celery, get_engine: Callable[[], Any] | None,
                   get_shadow: Callable[[], Any] | None = None) -> None:
    """Register `cascade.attempt` (and `cascade.shadow`, the shadow queue's task) on the app."""
    from cascade.worker.celery_app import ATTEMPT_TASK, SHADOW_TASK
    from cascade.worker.engine import Outcome
    from cascade.worker.leases import ShuttingDown

    @app.task(name=ATTEMPT_TASK, ignore_result=True, shared=False, bind=True)   # per-app closure
    def attempt(self: Any, *args: Any, **kwargs: Any) -> str:
        """Run one attempt of one job on this worker's tier."""
        if get_engine is None:
            raise RuntimeError("this process publishes only; start workers with `cascade worker`")
        engine = get_engine()
        try:
            if len(args) != 1 or kwargs:
                raise PoisonMessage(f"expected one job reference, got args={str(args)[:200]} kwargs={str(kwargs)[:200]}")
            outcome = engine.handle(JobRef.from_wire(args[0]))
        except PoisonMessage as error:
            queue = (self.request.delivery_info or {}).get("routing_key", "")
            log.warning("poison message on %s: %s; moved to the dead-letter list", queue, error)
            engine.dead_letter_message({"kind": "message", "queue": queue, "reason": str(error),
                                        "raw": str(args[:1])[:4096]})
            return "dead_lettered"
        if outcome is Outcome.RELEASED:
            raise Reject("worker stopping: the job goes back on its queue", requeue=True)
        return str(outcome)

    @app.task(name=SHADOW_TASK, ignore_result=True, shared=False)
    def shadow(*args: Any, **kwargs: Any) -> str:
        """Re-run one accepted early answer on the last tier (a shadow worker: `cascade worker --shadow`)."""
        if get_shadow is None:
            raise RuntimeError("shadow jobs run on `cascade worker --tier LAST --shadow`")
        try:
            if len(args) != 1 or kwargs:
                raise PoisonMessage(f"expected one job reference, got args={str(args)[:200]}")
            return get_shadow().run(JobRef.from_wire(args[0]))
        except PoisonMessage as error:
            log.warning("poison shadow message: %s; dropped", error)
            return "dead_lettered"
        except ShuttingDown:
            raise Reject("worker stopping: the shadow job goes back on its queue", requeue=True) from None
