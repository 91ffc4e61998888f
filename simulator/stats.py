"""Counters of everything the simulator did, per model, as GET /stats reports them."""

from __future__ import annotations

import copy
import threading
from typing import Any

from cascade.simulator.outcomes import OUTCOMES
from cascade.simulator.schema import ERROR_KINDS

#: batch counters: batches created, lines submitted, lines that ended errored / expired / canceled
_BATCH_COUNTERS = ("created", "requests", "errored_lines", "expired_lines", "canceled_lines")
#: the API kinds requests are counted under: live calls, and lines of batches
_APIS = ("openai", "anthropic", "openai_batch", "anthropic_batch")


def _empty_record() -> dict[str, Any]:
    return {
        "requests": 0,                                   # every request naming the model (batch lines too)
        "batch_requests": 0,                             # of which lines of batches
        "ok": 0,                                         # requests answered 200
        "answers": {outcome: 0 for outcome in OUTCOMES},  # per sampled answer (n counts n)
        "errors": {kind: 0 for kind in ERROR_KINDS},     # injected by error_rate
        "rate_limited_429": 0,                           # refused by the rpm / tpm limiter
        "context_400": 0,                                # prompt above the context window
        "bad_request_400": 0,                            # malformed request bodies
        "auth_401": 0,                                   # a key other than the one POST /control requires
        "outage_500": 0,                                 # refused by a simulated outage (POST /control)
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }


def _add(into: dict[str, Any], record: dict[str, Any]) -> None:
    for key, value in record.items():
        if isinstance(value, dict):
            _add(into[key], value)
        else:
            into[key] += value


class Stats:
    """Thread-safe counters; `snapshot()` is the GET /stats document."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, dict[str, Any]] = {}
        self._apis = dict.fromkeys(_APIS, 0)
        self._unparsed = 0
        self._batches = dict.fromkeys(_BATCH_COUNTERS, 0)
        self._submissions: dict[tuple[str, str], int] = {}   # (model, custom_id) -> lines submitted
        self._unanswered: dict[tuple[str, str], int] = {}    # (model, custom_id) -> lines errored/expired/canceled

    def _record(self, model: str) -> dict[str, Any]:
        record = self._models.get(model)
        if record is None:
            record = self._models[model] = _empty_record()
        return record

    def request(self, api: str, model: str | None, *, batch: bool = False) -> None:
        """A request arrived (a batch line's is counted under "<api>_batch"); `model` is None when it named none."""
        with self._lock:
            kind = f"{api}_batch" if batch else api
            self._apis[kind] = self._apis.get(kind, 0) + 1
            if model is None:
                self._unparsed += 1
            else:
                record = self._record(model)
                record["requests"] += 1
                if batch:
                    record["batch_requests"] += 1

    def bump(self, model: str, counter: str, kind: str | None = None) -> None:
        """Add one to a model's counter ("rate_limited_429", or "errors" with `kind`, ...)."""
        with self._lock:
            record = self._record(model)
            if kind is None:
                record[counter] += 1
            else:
                record[counter][kind] += 1

    def answered(self, model: str, outcomes: list[str], prompt_tokens: int, completion_tokens: int) -> None:
        """A 200 answer with one outcome per sampled choice."""
        with self._lock:
            record = self._record(model)
            record["ok"] += 1
            for outcome in outcomes:
                record["answers"][outcome] += 1
            record["prompt_tokens"] += prompt_tokens
            record["completion_tokens"] += completion_tokens

    def batch_created(self, keys: list[tuple[str, str]]) -> list[int]:
        """A batch was created with lines keyed (model, custom_id); returns each line's 0-based submission number."""
        with self._lock:
            self._batches["created"] += 1
            self._batches["requests"] += len(keys)
            numbers = []
            for key in keys:
                numbers.append(self._submissions.get(key, 0))
                self._submissions[key] = numbers[-1] + 1
            return numbers

    def batch_line_ended(self, model: str, custom_id: str, state: str) -> None:
        """A batch line ended "succeeded", "errored", "expired" or "canceled"; the last three may be resubmitted."""
        if state == "succeeded":
            return
        with self._lock:
            self._batches[f"{state}_lines"] += 1
            key = (model, custom_id)
            self._unanswered[key] = self._unanswered.get(key, 0) + 1

    def _batch_snapshot(self, submissions: bool) -> dict[str, Any]:
        duplicates = sum(max(0, count - 1 - self._unanswered.get(key, 0)) for key, count in self._submissions.items())
        document: dict[str, Any] = {**self._batches, "duplicate_submissions": duplicates}
        if submissions:
            document["submissions"] = {f"{model}|{cid}": count for (model, cid), count in self._submissions.items()}
        return document

    def snapshot(self, *, submissions: bool = False) -> dict[str, Any]:
        """Per model counters, their totals, requests per API, unparseable requests and batch counters
        (with every (model, custom_id)'s submission count when `submissions`)."""
        with self._lock:
            models = copy.deepcopy(self._models)
            totals = _empty_record()
            for record in models.values():
                _add(totals, record)
            return {"models": models, "totals": totals, "apis": dict(self._apis), "unparsed_400": self._unparsed,
                    "batches": self._batch_snapshot(submissions)}

    def reset(self) -> None:
        """Zero every counter and forget every submission."""
        with self._lock:
            self._models.clear()
            self._apis = dict.fromkeys(_APIS, 0)
            self._unparsed = 0
            self._batches = dict.fromkeys(_BATCH_COUNTERS, 0)
            self._submissions.clear()
            self._unanswered.clear()
