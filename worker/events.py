"""What the engine tells observers (metrics, shadow sampling) after it recorded a step.

An observer is a callable taking one `StepRecorded`; it runs on the worker thread right after the
store accepted the step, so it must be quick and must not raise (the engine logs and ignores errors).
A redelivery that recorded nothing emits nothing: observers see each step once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cascade.models import Attempt

log = logging.getLogger("cascade.engine")


@dataclass(frozen=True, slots=True)
class StepRecorded:
    """One recorded step of one job: an escalation, or the job's final record."""

    batch: str
    pipeline: str
    job_id: str
    tier: str                       # the tier this step ran on
    tier_index: int
    outcome: str                    # an engine Outcome value: accepted | escalated | flagged | failed | ...
    attempt: Attempt | None         # None when no call was made (cancelled, budget, poison)
    cost_nanos: int                 # this step's spend
    retries: int = 0                # transient retries of this step's call
    record: dict[str, Any] | None = None   # the job's result record when the step finalized it
    fields: dict[str, Any] | None = None   # the job's input fields


Observer = Callable[[StepRecorded], None]


def notify(observers: Sequence[Observer], event: StepRecorded) -> None:
    """Tell every observer; one that raises is logged and does not stop the others or the job."""
    for observer in observers:
        try:
            observer(event)
        except Exception:
            log.exception("observer %r failed on job %s/%s", observer, event.batch, event.job_id)
