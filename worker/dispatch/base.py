"""What the engine and the producer need of a dispatcher, whichever way messages travel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cascade.worker.messages import JobRef


class Dispatcher(Protocol):
    """Delivers attempt messages to the workers of the tier each names."""

    def send(self, ref: JobRef, first: bool = False) -> None:
        """Queue one message on the tier its `tier_index` names; `first`: ahead of the messages waiting."""
        ...

    def send_many(self, refs: Sequence[JobRef]) -> None:
        """Queue a chunk in as few round trips as the transport allows."""
        ...

    def backlog(self, tier_name: str) -> int:
        """Messages waiting (or, embedded, running) on a tier."""
        ...

    def close(self) -> None:
        """Release what the dispatcher holds (pools, broker connections)."""
        ...
