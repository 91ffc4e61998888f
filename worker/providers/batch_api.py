"""What a provider's Batch API offers a batch-mode tier: submit lines, find, poll, read results, cancel.

Both adapters (OpenAI Files + Batches, Anthropic Message Batches) speak this; the batch runner
(worker/batching.py) needs nothing else. Lines are matched to jobs by `custom_id` alone: results come
back in any order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cascade.errors import ProviderError
from cascade.models import Completion, CompletionRequest

#: a custom_id both providers accept (Anthropic's pattern; OpenAI takes any string)
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ENDED = "ended"


def custom_id(job_id: str) -> str:
    """The job id, when both providers accept it as a custom_id; else a stable digest of it."""
    if _CUSTOM_ID.match(job_id):
        return job_id
    return "j" + hashlib.blake2b(job_id.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class BatchLine:
    """One request of a provider batch."""

    custom_id: str
    request: CompletionRequest


@dataclass(frozen=True)
class BatchState:
    """A provider batch as the provider reports it: `ended` once no line will change any more."""

    provider_id: str
    status: str                       # the provider's own word (in_progress, completed, expired, ended...)
    ended: bool
    counts: dict[str, int] = field(default_factory=dict)   # succeeded, errored, expired, canceled, processing


@dataclass(frozen=True)
class LineResult:
    """One line's outcome: kind "succeeded" (with the provider's answer, read by `BatchAPI.completion`),
    "errored", "expired" or "canceled"."""

    custom_id: str
    kind: str
    answer: Any = None
    error: str = ""


class BatchAPI(Protocol):
    """A provider's Batch API behind its official SDK."""

    provider: str
    max_requests: int                 # the provider's cap on requests per batch
    max_bytes: int                    # and on the size of one batch

    def line_bytes(self, line: BatchLine) -> int:
        """What the line adds to the batch's size."""
        ...

    def submit(self, tag: str, lines: Sequence[BatchLine]) -> str:
        """Create a provider batch of `lines`, marked with `tag` where the provider keeps metadata; its id."""
        ...

    def find(self, tag: str, since: float, count: int, known: set[str]) -> str | None:
        """The id of a batch created from a submit of `tag` (at or after `since`, `count` lines) that is not in
        `known`, or None: what a restarted worker asks before it could submit the same lines twice."""
        ...

    def poll(self, provider_id: str) -> BatchState:
        """The batch's status and counts."""
        ...

    def results(self, provider_id: str) -> Iterator[LineResult]:
        """Every line of an ended batch, in any order."""
        ...

    def completion(self, line: LineResult, request: CompletionRequest) -> Completion:
        """Our Completion from a succeeded line's answer (ProviderError when it is not one)."""
        ...

    def cancel(self, provider_id: str) -> None:
        """Ask the provider to cancel the batch (lines not yet run come back canceled)."""
        ...


class SDKErrors:
    """`with SDKErrors(...)`: an SDK exception becomes our ProviderError tree, the SDK error (which holds the
    request and its key) dropped."""

    def __init__(self, translate: Callable[[Exception, float], ProviderError], timeout: float):
        self._translate = translate
        self._timeout = timeout

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> bool:
        if not isinstance(error, Exception) or isinstance(error, ProviderError):
            return False
        if type(error).__module__.split(".")[0] not in ("openai", "anthropic"):
            return False
        raise self._translate(error, self._timeout) from None
