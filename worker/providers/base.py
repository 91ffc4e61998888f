"""The provider interface and the registry that config names providers by."""

from __future__ import annotations

from typing import Protocol

from cascade.models import Completion, CompletionRequest


class Provider(Protocol):
    """One model endpoint behind an official SDK (or a replay of recorded answers)."""

    #: whether `complete` can return token logprobs (config rejects a logprob verifier otherwise)
    supports_logprobs: bool
    #: whether `n > 1` is one call (else the caller makes parallel calls)
    supports_n: bool
    #: whether the provider counts `max_tokens` (not the tokens produced) against its tokens-per-minute
    #: limit: OpenAI does; Anthropic adjusts to the output at the end of the call
    tpm_counts_max_tokens: bool

    def complete(self, request: CompletionRequest) -> Completion:
        """Send one request; return the answer or raise a `worker.errors.ProviderError`."""
        ...
