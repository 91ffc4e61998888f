"""OpenAI's Batch API through the official SDK: upload a JSONL file, create the batch, poll, read the
output and error files. Limits: 50,000 requests and 200 MB per batch file; half the live price."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from cascade.errors import ProviderError
from cascade.models import CompletionRequest
from cascade.worker.providers.batch_api import BatchLine, BatchState, LineResult, SDKErrors
from cascade.worker.providers.openai_provider import body

ENDPOINT = "/v1/chat/completions"
TAG_KEY = "cascade_batch"         # the metadata entry that names the Cascade submit a batch came from
ENDED_STATUSES = ("completed", "expired", "cancelled", "failed")
LIST_PAGE = 100


class OpenAIBatches:
    """Files + Batches on one `openai.OpenAI` client (the tier's, shared with its live calls)."""

    provider = "openai"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(self, client: Any, translate: Callable[[Exception, float], ProviderError],
                 from_body: Callable[[dict[str, Any], CompletionRequest], Any], timeout: float = 120.0):
        self._client = client
        self._translate = translate
        self._from_body = from_body
        self._timeout = timeout

    def _line(self, line: BatchLine) -> bytes:
        return orjson.dumps({"custom_id": line.custom_id, "method": "POST", "url": ENDPOINT,
                             "body": body(line.request)}) + b"\n"

    def line_bytes(self, line: BatchLine) -> int:
        """The line's size in the uploaded JSONL file."""
        return len(self._line(line))

    def submit(self, tag: str, lines: Sequence[BatchLine]) -> str:
        """Upload the lines as a batch file and create a 24 h batch from it, tagged in its metadata."""
        data = b"".join(self._line(line) for line in lines)
        with self._errors():
            uploaded = self._client.files.create(file=(f"{tag}.jsonl", data, "application/jsonl"), purpose="batch",
                                                 timeout=self._timeout)
            batch = self._client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                                                completion_window="24h", metadata={TAG_KEY: tag},
                                                timeout=self._timeout)
        return batch.id

    def find(self, tag: str, since: float, count: int, known: set[str]) -> str | None:
        """A batch whose metadata names `tag` (newest first, back to `since`)."""
        with self._errors():
            for batch in self._client.batches.list(limit=LIST_PAGE, timeout=self._timeout):
                if batch.created_at < since - 60:
                    return None
                if (batch.metadata or {}).get(TAG_KEY) == tag and batch.id not in known:
                    return batch.id
        return None

    def poll(self, provider_id: str) -> BatchState:
        """Status and request counts; ended once completed, expired, cancelled or failed."""
        with self._errors():
            batch = self._client.batches.retrieve(provider_id, timeout=self._timeout)
        counts = batch.request_counts
        total, done, failed = (counts.total, counts.completed, counts.failed) if counts else (0, 0, 0)
        return BatchState(provider_id, batch.status, batch.status in ENDED_STATUSES,
                          {"succeeded": done, "errored": failed, "processing": max(0, total - done - failed)})

    def results(self, provider_id: str) -> Iterator[LineResult]:
        """The output file's answers, then the error file's errors and expired lines."""
        with self._errors():
            batch = self._client.batches.retrieve(provider_id, timeout=self._timeout)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            with self._errors():
                content = self._client.files.content(file_id, timeout=self._timeout).content
            for raw in content.splitlines():
                if raw.strip():
                    yield _result(raw)

    def completion(self, line: LineResult, request: CompletionRequest) -> Any:
        """The chat completion of a succeeded output line."""
        return self._from_body(line.answer, request)

    def cancel(self, provider_id: str) -> None:
        """Cancel the batch (OpenAI answers 409 for one that has ended: nothing to cancel then)."""
        try:
            with self._errors():
                self._client.batches.cancel(provider_id, timeout=self._timeout)
        except ProviderError as err:
            if getattr(err, "status", None) not in (400, 409):
                raise

    def _errors(self) -> SDKErrors:
        return SDKErrors(self._translate, self._timeout)


def _result(raw: bytes) -> LineResult:
    """One line of an output or error file."""
    try:
        line = orjson.loads(raw)
        cid = str(line["custom_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return LineResult("", "errored", error=f"unreadable result line: {raw[:200]!r}")
    response, error = line.get("response") or {}, line.get("error") or {}
    if error:
        kind = "expired" if error.get("code") == "batch_expired" else "errored"
        return LineResult(cid, kind, error=f"{error.get('code')}: {error.get('message')}")
    status = response.get("status_code")
    if status != 200:
        message = ((response.get("body") or {}).get("error") or {}).get("message", "")
        return LineResult(cid, "errored", error=f"HTTP {status}: {message}")
    return LineResult(cid, "succeeded", response.get("body") or {})
