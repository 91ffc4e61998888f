"""A provider that answers from recorded responses instead of calling a model: offline what-if runs."""

from __future__ import annotations

from cascade.errors import Permanent
from cascade.models import Completion, CompletionRequest
from cascade.recorded import RecordedSet


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
