"""A provider that answers from recorded responses instead of calling a model: offline what-if runs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from cascade.errors import Permanent
from cascade.models import Completion, CompletionRequest
from cascade.recorded import RecordedSet
from cascade.worker.providers.batch_api import ENDED, BatchLine, BatchState, LineResult


class ReplayProvider:
    """Serves the recorded answer of `model` (default: the request's model) to the request's prompt.

    The prompt is matched on its message texts (system, user), else the request's job id on a row id
    (a pipeline whose template words the prompt differently). Logprobs and `n` samples are served
    as the API returns them where they were recorded; anything unrecorded is a Permanent error, so a
    replay never invents an answer.
    """

    supports_logprobs = True
    supports_n = True
    tpm_counts_max_tokens = False

    def __init__(self, recorded: RecordedSet, model: str | None = None):
        self.recorded = recorded
        self.model = model

    def complete(self, request: CompletionRequest) -> Completion:
        """The recorded answer, or Permanent naming what is missing."""
        row = self.recorded.find((request.system, request.user), request.job_id)
        if row is None:
            preview = " ".join(request.user.split())[:60]
            raise Permanent(f"replay: no recorded response in {self.recorded.source} for the prompt '{preview}'")
        model = self.model or request.model
        response = row.responses.get(model)
        if response is None:
            raise Permanent(f"replay: row {row.id} has no response from '{model}' "
                            f"(recorded: {', '.join(row.responses)})")
        return response.completion(request.n, request.logprobs)

    def close(self) -> None:
        """Nothing to release."""

    def batch_api(self) -> ReplayBatches:
        """A Batch API over the recording: every batch ends at once with the recorded answers."""
        return ReplayBatches(self)


class ReplayBatches:
    """Provider batches answered from a recording (replays and embedded runs of batch-mode tiers)."""

    provider = "replay"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(self, provider: ReplayProvider):
        self._provider = provider
        self._batches: dict[str, list[LineResult]] = {}
        self._ids = itertools.count(1)

    def line_bytes(self, line: BatchLine) -> int:
        return len(line.request.system) + len(line.request.user) + 64

    def submit(self, tag: str, lines: Sequence[BatchLine]) -> str:
        results = []
        for line in lines:
            try:
                results.append(LineResult(line.custom_id, "succeeded", self._provider.complete(line.request)))
            except Permanent as error:
                results.append(LineResult(line.custom_id, "errored", error=str(error)))
        provider_id = f"replay-batch-{next(self._ids)}"
        self._batches[provider_id] = results
        return provider_id

    def find(self, tag: str, since: float, count: int, known: set[str]) -> str | None:
        return None         # in-process: a batch that was submitted is never unknown

    def poll(self, provider_id: str) -> BatchState:
        lines = self._batches.get(provider_id, [])
        return BatchState(provider_id, ENDED, True, {"succeeded": sum(r.kind == "succeeded" for r in lines),
                                                     "errored": sum(r.kind == "errored" for r in lines)})

    def results(self, provider_id: str) -> Iterator[LineResult]:
        return iter(self._batches.pop(provider_id, []))

    def completion(self, line: LineResult, request: CompletionRequest) -> Completion:
        return line.answer

    def cancel(self, provider_id: str) -> None:
        return None
