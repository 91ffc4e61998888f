"""The Batch APIs' store: uploaded files and batches in memory, each batch processed once, lazily.

No thread runs in the background. A batch is in progress until `delay_s` after its creation; the
first read after that answers every line through the live path (SimEngine.answer_line: recorded
answers, rules, injected errors; no rate limits, no latency) and ends it. A line's own batch error
(the error_rate in force when the batch ends) is drawn from (seed, model, custom_id, submission
number), so a resubmitted line can succeed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from cascade.simulator import anthropic_wire, batch_wire, openai_wire
from cascade.simulator.outcomes import unit
from cascade.simulator.schema import BatchProfile
from cascade.simulator.stats import Stats
from cascade.simulator.wire import ApiError, BadRequest

if TYPE_CHECKING:
    from cascade.simulator.engine import Reply


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


_Item = TypeVar("_Item", bound=_HasId)
#: the wire each batch API's lines are answered in
_WIRES: MappingProxyType[str, ModuleType] = MappingProxyType({"openai": openai_wire, "anthropic": anthropic_wire})
#: what a line failed by the batch error_rate says
_BATCH_ERROR = "The server had an error while processing this batch request (simulated batch error_rate)."


@dataclass(frozen=True)
class StoredFile:
    """An uploaded batch input file, or a batch's output / error file (OpenAI Files API)."""

    id: str
    filename: str
    purpose: str          # "batch" (uploaded) | "batch_output" (written by a batch)
    data: bytes
    created_at: int


@dataclass
class BatchLine:
    """One request of a batch and, once the batch ends, its answer."""

    id: str                                 # "batch_req_..." (OpenAI's output lines name it)
    custom_id: str
    body: dict[str, Any]                    # the request body a live call would send
    model: str                              # "" when the body names none
    submission: int = 0                     # earlier lines with this (model, custom_id), since the last reset
    state: str = "processing"               # then "succeeded" | "errored" | "expired" | "canceled"
    status: int = 0                         # the answer's HTTP status
    document: dict[str, Any] | None = None  # the answer's body: exactly what a live call returns
    request_id: str = ""


@dataclass
class Batch:
    """A batch of one API ("openai" | "anthropic") and the moments of its life (Unix seconds)."""

    id: str
    api: str
    lines: list[BatchLine]
    created_at: float
    ready_at: float                          # created_at + delay_s: when its lines are answered
    expires: bool = False                    # picked by expire_next: only the first half is answered
    options: dict[str, Any] = field(default_factory=dict)  # OpenAI's echoed input_file_id, endpoint, ...
    errors: list[dict[str, Any]] | None = None             # OpenAI's validation errors: the batch failed
    cancel_at: float | None = None
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def status(self) -> str:
        """OpenAI's name for where the batch is: in_progress, cancelling, completed, expired, cancelled, failed."""
        if self.errors:
            return "failed"
        if self.ended_at is None:
            return "in_progress" if self.cancel_at is None else "cancelling"
        return "cancelled" if self.cancel_at is not None else "expired" if self.expires else "completed"

    def count(self, state: str) -> int:
        """Lines in `state`."""
        return sum(1 for line in self.lines if line.state == state)


@dataclass
class BatchSettings:
    """The [batch] settings as POST /control changes them at run time."""

    delay_s: float
    error_rate: float
    expire_next: int

    KEYS = ("batch_delay_s", "batch_error_rate", "batch_expire_next")

    def update(self, body: dict[str, Any]) -> None:
        """Apply a control request's batch_* fields; ValueError names a bad one (nothing is applied then)."""
        changes = {}
        for key, value in body.items():
            if key not in self.KEYS:
                raise ValueError(f"{key}: unknown batch setting (expected {', '.join(self.KEYS)})")
            whole = key == "batch_expire_next"
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value < 0:
                raise ValueError(f"{key}: must be a non-negative {'integer' if whole else 'number'}")
            if key == "batch_error_rate" and value > 1:
                raise ValueError(f"{key}: must be between 0 and 1")
            changes[key.removeprefix("batch_")] = value if whole else float(value)
        for name, value in changes.items():
            setattr(self, name, value)

    def snapshot(self) -> dict[str, Any]:
        """The settings under their control keys."""
        return {"batch_delay_s": self.delay_s, "batch_error_rate": self.error_rate,
                "batch_expire_next": self.expire_next}


class BatchStore:
    """Files and batches in memory; every method is thread-safe and ends the batches it reads when due."""

    def __init__(self, answer: Callable[[ModuleType, dict[str, Any]], Reply], seed: int, profile: BatchProfile,
                 stats: Stats, clock: Callable[[], float] = time.time):
        self.settings = BatchSettings(profile.delay_s, profile.error_rate, profile.expire_next)
        self._answer_live = answer
        self._seed = seed
        self._stats = stats
        self._clock = clock
        self._lock = threading.RLock()
        self._files: dict[str, StoredFile] = {}
        self._batches: dict[str, Batch] = {}   # in creation order
        self._numbers = itertools.count(1)

    def _id(self, prefix: str) -> str:
        return f"{prefix}sim{next(self._numbers):012d}"

    # --- settings -------------------------------------------------------------------------------

    def configure(self, body: dict[str, Any]) -> None:
        """Apply POST /control's batch_* keys."""
        with self._lock:
            self.settings.update(body)

    def snapshot(self) -> dict[str, Any]:
        """The batch settings, as GET /control shows them."""
        with self._lock:
            return self.settings.snapshot()

    # --- files ----------------------------------------------------------------------------------

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        """Store a file."""
        with self._lock:
            stored = StoredFile(self._id("file-"), filename, purpose, data, int(self._clock()))
            self._files[stored.id] = stored
            return stored

    def file(self, file_id: str) -> StoredFile:
        """The file, or not_found."""
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:
            raise ApiError("not_found", f"No such File object: {file_id}")
        return stored

    def delete_file(self, file_id: str) -> None:
        """Forget a file (a batch keeps the requests it read from it)."""
        with self._lock:
            self.file(file_id)
            del self._files[file_id]

    def files(self, purpose: str | None = None) -> list[StoredFile]:
        """Every file (of `purpose`), newest first."""
        with self._lock:
            return [f for f in reversed(self._files.values()) if purpose is None or f.purpose == purpose]

    # --- batches --------------------------------------------------------------------------------

    def create(self, api: str, requests: list[tuple[str, dict[str, Any]]], *, options: dict[str, Any] | None = None,
               errors: list[dict[str, Any]] | None = None) -> Batch:
        """A new batch of (custom_id, body) requests; with `errors` it failed validation and runs nothing."""
        with self._lock:
            now = self._clock()
            lines = [] if errors else [BatchLine(self._id("batch_req_"), custom_id, body, _model_name(body))
                                       for custom_id, body in requests]
            numbers = self._stats.batch_created([(line.model, line.custom_id) for line in lines])
            for line, number in zip(lines, numbers, strict=True):
                line.submission = number
            expires = not errors and self.settings.expire_next > 0
            if expires:
                self.settings.expire_next -= 1
            batch = Batch(self._id("batch_" if api == "openai" else "msgbatch_"), api, lines, now,
                          now + self.settings.delay_s, expires, options or {}, errors or None)
            if errors:
                batch.ended_at = now
            self._batches[batch.id] = batch
            return batch

    def get(self, api: str, batch_id: str) -> Batch:
        """The batch, ended first if its time has come; not_found for an unknown id."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or batch.api != api:
                raise ApiError("not_found", f"No such batch: {batch_id}")
            self._settle(batch)
            return batch

    def cancel(self, api: str, batch_id: str) -> Batch:
        """Start cancelling: the next read ends the batch with every unanswered line canceled."""
        with self._lock:
            batch = self.get(api, batch_id)
            if batch.ended_at is not None:
                raise BadRequest(f"Cannot cancel batch {batch_id}: it has already ended ({batch.status}).")
            if batch.cancel_at is None:
                batch.cancel_at = self._clock()
            return batch

    def delete(self, api: str, batch_id: str) -> None:
        """Forget an ended batch (Anthropic's delete); one still running must be cancelled first."""
        with self._lock:
            batch = self.get(api, batch_id)
            if batch.ended_at is None:
                raise BadRequest(f"Batch {batch_id} is still {batch.status}: cancel it and let it end before "
                                 "deleting it.")
            del self._batches[batch_id]

    def page(self, api: str, limit: int, *, after: str | None = None, before: str | None = None
             ) -> tuple[list[Batch], bool]:
        """Up to `limit` of the API's batches, newest first, after (or before) the one with that id; and
        whether more follow."""
        with self._lock:
            newest = [batch for batch in reversed(self._batches.values()) if batch.api == api]
            items, more = page_of(newest, limit, after=after, before=before)
            for batch in items:
                self._settle(batch)
            return items, more

    # --- processing -----------------------------------------------------------------------------

    def _settle(self, batch: Batch) -> None:
        """End the batch if it is due: cancelled, or answered (only the first half when it expires).

        `ended_at` is set last, so a reader formatting the batch outside the lock never sees it ended
        without its lines' answers and output files.
        """
        if batch.ended_at is not None or (batch.cancel_at is None and self._clock() < batch.ready_at):
            return
        if batch.cancel_at is not None:
            for line in batch.lines:
                line.state = "canceled"   # none is answered before ready_at
        else:
            answered = len(batch.lines) // 2 if batch.expires else len(batch.lines)
            for line in batch.lines[:answered]:
                self._answer(_WIRES[batch.api], line)
            for line in batch.lines[answered:]:
                line.state = "expired"
        for line in batch.lines:
            self._stats.batch_line_ended(line.model, line.custom_id, line.state)
        if batch.api == "openai":
            output, errors = batch_wire.openai_result_lines(batch)
            if output:
                batch.output_file_id = self.add_file(f"{batch.id}_output.jsonl", "batch_output", output).id
            if errors:
                batch.error_file_id = self.add_file(f"{batch.id}_error.jsonl", "batch_output", errors).id
        batch.ended_at = batch.cancel_at if batch.cancel_at is not None else batch.ready_at

    def _answer(self, wire: ModuleType, line: BatchLine) -> None:
        if unit("batch_error", self._seed, line.model, line.custom_id, line.submission) < self.settings.error_rate:
            line.status, line.document = 500, wire.error("server", _BATCH_ERROR)
        else:
            reply = self._answer_live(wire, line.body)
            line.status, line.document = reply.status, orjson.loads(reply.body or b"null")
            line.request_id = reply.headers.get("x-request-id") or reply.headers.get("request-id") or ""
        line.request_id = line.request_id or self._id("req_")
        line.state = "succeeded" if line.status == 200 else "errored"


def page_of(items: list[_Item], limit: int, *, after: str | None = None, before: str | None = None
            ) -> tuple[list[_Item], bool]:
    """The `limit` items right after (or right before) the one whose id is the cursor; and whether more follow
    in that direction. An unknown cursor is a BadRequest."""
    ids = [item.id for item in items]
    for name, cursor in (("after", after), ("before", before)):
        if cursor is not None and cursor not in ids:
            raise BadRequest(f"{name}: no object with id {cursor!r}")
    if before is not None:
        end = ids.index(before)
        return items[max(0, end - limit):end], end > limit
    start = ids.index(after) + 1 if after is not None else 0
    return items[start:start + limit], start + limit < len(items)


def _model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else ""
