"""Publish attempt messages to the tier queues of a Celery app."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from cascade.worker.celery_app import ATTEMPT_TASK
from cascade.worker.config.schema import Settings
from cascade.worker.messages import AttemptMessage
from cascade.worker.store import BatchStore


class CeleryDispatcher:
    """Sends each message to its tier's queue; `send_many` uses kombu's batch publish."""

    def __init__(self, app: Celery, settings: Settings, store: BatchStore):
        self.app = app
        self.settings = settings
        self.store = store
        self.task = app.tasks[ATTEMPT_TASK]

    def _queue(self, msg: AttemptMessage) -> str:
        pipeline = self.settings.pipeline(msg.pipeline)
        return self.settings.tiers[pipeline.ladder[msg.tier_index]].queue_name

    def _publish(self, msg: AttemptMessage, producer: object | None = None) -> None:
        # A short argsrepr: Celery otherwise repeats up to 1 KB of the arguments in a header.
        self.task.apply_async(args=(msg.to_wire(),), queue=self._queue(msg), producer=producer,
                              argsrepr=f"{msg.batch}/{msg.job.id}@{msg.tier_index}", kwargsrepr="{}")

    def send(self, message: AttemptMessage) -> None:
        """Publish one message."""
        self._publish(message)

    def send_many(self, messages: Sequence[AttemptMessage]) -> None:
        """Publish a chunk in as few Redis round trips as kombu allows."""
        with self.app.producer_or_acquire() as producer:
            with producer.batch(max_size=max(1, len(messages))):
                for msg in messages:
                    self._publish(msg, producer)

    def backlog(self, tier_name: str) -> int:
        """Messages waiting on a tier's queue."""
        return self.store.queue_depth(self.settings.tiers[tier_name].queue_name)

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()
