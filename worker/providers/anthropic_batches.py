"""Anthropic's Message Batches through the official SDK: create with the requests inline, poll the
processing status, stream the results. Limits: 100,000 requests and 256 MB per batch; half price."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from cascade.errors import ProviderError
from cascade.models import CompletionRequest
from cascade.worker.providers.anthropic_provider import from_message, params
from cascade.worker.providers.batch_api import BatchLine, BatchState, LineResult, SDKErrors

LIST_PAGE = 100
CLOCK_SLACK_S = 60          # a found batch may be stamped this much before the submit began (clock skew)


class AnthropicBatches:
    """Message Batches on one `anthropic.Anthropic` client (the tier's, shared with its live calls)."""

    provider = "anthropic"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(self, client: Any, translate: Callable[[Exception, float], ProviderError], timeout: float = 120.0):
        self._client = client
        self._translate = translate
        self._timeout = timeout

    @staticmethod
    def _request(line: BatchLine) -> dict[str, Any]:
        if line.request.n > 1:
            raise ProviderError("a message batch request has no n: sampled checks need a live tier on Anthropic")
        return {"custom_id": line.custom_id, "params": params(line.request)}

    def line_bytes(self, line: BatchLine) -> int:
        """The request's size in the create call's body."""
        return len(orjson.dumps(self._request(line))) + 1

    def submit(self, tag: str, lines: Sequence[BatchLine]) -> str:
        """Create the message batch (Anthropic keeps no metadata: `find` matches it by time and size)."""
        with self._errors():
            batch = self._client.messages.batches.create(requests=[self._request(line) for line in lines],
                                                         timeout=self._timeout)
        return batch.id

    def find(self, tag: str, since: float, count: int, known: set[str]) -> str | None:
        """The newest batch created since `since` with `count` requests that no record knows."""
        with self._errors():
            for batch in self._client.messages.batches.list(limit=LIST_PAGE, timeout=self._timeout):
                created = batch.created_at.timestamp()
                if created < since - CLOCK_SLACK_S:
                    return None
                counts = batch.request_counts
                total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
                if total == count and batch.id not in known:
                    return batch.id
        return None

    def poll(self, provider_id: str) -> BatchState:
        """Processing status and request counts; ended once the status is "ended"."""
        with self._errors():
            batch = self._client.messages.batches.retrieve(provider_id, timeout=self._timeout)
        c = batch.request_counts
        return BatchState(provider_id, batch.processing_status, batch.processing_status == "ended",
                          {"succeeded": c.succeeded, "errored": c.errored, "expired": c.expired,
                           "canceled": c.canceled, "processing": c.processing})

    def results(self, provider_id: str) -> Iterator[LineResult]:
        """Each result of the ended batch, streamed."""
        with self._errors():
            stream = self._client.messages.batches.results(provider_id, timeout=self._timeout)
            for item in stream:
                yield self._result(item)

    def completion(self, line: LineResult, request: CompletionRequest) -> Any:
        """The message of a succeeded result."""
        return from_message(line.answer, request)

    @staticmethod
    def _result(item: Any) -> LineResult:
        cid, result = item.custom_id, item.result
        if result.type == "succeeded":
            return LineResult(cid, "succeeded", result.message)
        if result.type == "errored":
            inner = getattr(result.error, "error", None)
            return LineResult(cid, "errored", error=f"{getattr(inner, 'type', 'error')}: "
                                                    f"{getattr(inner, 'message', '')}")
        return LineResult(cid, result.type)       # "expired" | "canceled"

    def cancel(self, provider_id: str) -> None:
        """Cancel the batch (400 for one that has ended: nothing to cancel then)."""
        try:
            with self._errors():
                self._client.messages.batches.cancel(provider_id, timeout=self._timeout)
        except ProviderError as err:
            if getattr(err, "status", None) not in (400, 409):
                raise

    def _errors(self) -> SDKErrors:
        return SDKErrors(self._translate, self._timeout)
