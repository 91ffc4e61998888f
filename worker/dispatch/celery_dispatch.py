"""Publish job messages to the tier queues of a Celery app."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from cascade.worker.celery_app import ATTEMPT_TASK
from cascade.worker.config.schema import Settings
from cascade.worker.messages import JobRef
from cascade.worker.store import BatchStore

#: kombu's Redis transport takes a queue's priority-0 list first: ordinary messages go in at priority 9, and a
#: job the reconciler publishes again goes in at 0, ahead of the backlog (it has waited a lease length already)
ORDINARY, FIRST = 9, 0


class CeleryDispatcher:
    """Sends each message to its tier's queue; `send_many` uses kombu's batch publish."""

    def __init__(self, app: Celery, settings: Settings, store: BatchStore):
        self.app = app
        self.settings = settings
        self.store = store
        self.task = app.tasks[ATTEMPT_TASK]

    def _queue(self, ref: JobRef) -> str:
        pipeline = self.settings.pipeline(ref.pipeline)
        return self.settings.tiers[pipeline.ladder[ref.tier_index]].queue_name

    def _publish(self, ref: JobRef, producer: object | None = None, first: bool = False) -> None:
        # A short argsrepr: Celery otherwise repeats the arguments in a header.
        self.task.apply_async(args=(ref.to_wire(),), queue=self._queue(ref), producer=producer,
                              argsrepr=ref.label, kwargsrepr="{}", priority=FIRST if first else ORDINARY)

    def send(self, ref: JobRef, first: bool = False) -> None:
        """Publish one message; `first` puts it ahead of the messages already waiting."""
        self._publish(ref, first=first)

    def send_many(self, refs: Sequence[JobRef]) -> None:
        """Publish a chunk in as few Redis round trips as kombu allows."""
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=max(1, len(refs))):
            for ref in refs:
                self._publish(ref, producer)

    def backlog(self, tier_name: str) -> int:
        """Messages waiting on a tier's queue."""
        return self.store.queue_depth(self.settings.tiers[tier_name].queue_name)

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()
