"""Anthropic messages behind the official `anthropic` SDK."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cascade.errors import ProviderError
from cascade.models import Completion, CompletionRequest, Usage
from cascade.worker.fanout import fan_out
from cascade.worker.providers import errors
from cascade.worker.providers.common import connection_limits, rate_limit_hints, require_api_key, seconds_until
from cascade.worker.providers.spec import ProviderSpec

if TYPE_CHECKING:
    import anthropic
    import httpx2
    from anthropic.types import Message

PROVIDER = "anthropic"

#: Completion.rate_limit key -> response header (resets are RFC 3339 timestamps)
RATE_LIMIT_HEADERS = {
    "remaining_requests": "anthropic-ratelimit-requests-remaining",
    "remaining_tokens": "anthropic-ratelimit-tokens-remaining",
    "reset_requests_s": "anthropic-ratelimit-requests-reset",
    "reset_tokens_s": "anthropic-ratelimit-tokens-reset",
}

#: stop_reason -> our finish_reason; anything else passes through unchanged
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The answer was cut because prompt + answer filled the window: truncated, like max_tokens.
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
}

#: 429 error codes for money, not rate: waiting does not help, so they are Permanent
SPEND_LIMIT_CODES = frozenset({"contract_spend_limit_reached", "enforced_spend_limit_reached"})


class AnthropicProvider:
    """One `anthropic.Anthropic` client per process, shared by every thread; SDK retries off.

    The Messages API has no `n`: a request with n > 1 becomes n concurrent calls whose texts are
    the samples and whose usage is summed. The API has no logprobs either.

    `request.temperature` is not sent. SDK 2.x dropped the parameter and sends API version
    2026-10-21, which answers 400 to `temperature` on every model; the model's default applies.
    """

    supports_logprobs = False
    supports_n = False
    tpm_counts_max_tokens = False     # Anthropic's output limit is settled to the tokens produced

    def __init__(self, spec: ProviderSpec, *, http_client: httpx2.Client | None = None):
        # Imported here, not at module level: the SDK takes over a second to import and only
        # processes that call models need it.
        import anthropic

        self._sdk = anthropic
        self._api_key = require_api_key(spec)
        self._client = anthropic.Anthropic(
            api_key=self._api_key,
            base_url=spec.base_url,
            timeout=spec.timeout,
            max_retries=0,  # our limiter and backoff must see every attempt
            http_client=http_client or anthropic.DefaultHttpxClient(limits=connection_limits(spec)),
        )
        # The raw-response wrapper keeps the headers, which carry the rate-limit hints.
        self._create = self._client.messages.with_raw_response.create

    def complete(self, request: CompletionRequest) -> Completion:
        """Send one message (n concurrent ones when n > 1: the API has no `n`) and return the answer."""
        return self._call(request) if request.n <= 1 else fan_out(self._call, request)

    def close(self) -> None:
        """Close the pooled connections (the provider is unusable afterwards)."""
        self._client.close()

    def _call(self, request: CompletionRequest) -> Completion:
        """One Messages API call."""
        start = time.perf_counter()
        try:
            raw = self._create(**params(request), timeout=request.timeout)
            message = self._parse(raw)
        except self._sdk.AnthropicError as err:
            # `from None`: the SDK error holds the request, whose headers carry the key.
            raise self._translate(err, request.timeout) from None
        latency_ms = (time.perf_counter() - start) * 1000
        return from_message(message, request, latency_ms, rate_limit_hints(raw.headers, RATE_LIMIT_HEADERS,
                                                                           seconds_until))

    def batch_api(self) -> Any:
        """The Message Batches API of this client, for a tier with mode = "batch"."""
        from cascade.worker.providers.anthropic_batches import AnthropicBatches

        return AnthropicBatches(self._client, self._translate)

    def _parse(self, raw: Any) -> Message:
        """The parsed body; a success status with a body that is not a message is a ServerError."""
        try:
            message = raw.parse()
        except ValueError as err:  # JSON that does not decode
            raise errors.bad_response_error(PROVIDER, err, secret=self._api_key) from None
        # The SDK hands back the plain text when the body is not JSON.
        if not isinstance(message, self._sdk.types.Message):
            raise errors.bad_response_error(PROVIDER, ValueError("the body is not a message"))
        return message

    def _translate(self, err: anthropic.AnthropicError, timeout: float) -> ProviderError:
        """The worker.errors class for an SDK exception."""
        sdk = self._sdk
        if isinstance(err, sdk.APITimeoutError):  # before APIConnectionError, its base class
            return errors.timeout_error(PROVIDER, timeout)
        if isinstance(err, sdk.APIConnectionError):
            return errors.connection_error(PROVIDER, err, secret=self._api_key)
        if isinstance(err, sdk.APIStatusError):
            message = err.api_message if isinstance(err.api_message, str) else None
            # No error code marks a too-long prompt, so the message is read here, and only here.
            too_long = (
                err.status_code == 400
                and err.type == "invalid_request_error"
                and "prompt is too long" in (message or "").lower()
            )
            return errors.status_error(
                PROVIDER,
                err.response,
                message,
                secret=self._api_key,
                context_too_long=too_long,
                quota_exhausted=err.error_code in SPEND_LIMIT_CODES,
            )
        if isinstance(err, sdk.APIResponseValidationError):
            return errors.bad_response_error(PROVIDER, err, secret=self._api_key)
        return errors.sdk_error(PROVIDER, err, secret=self._api_key)



def params(request: CompletionRequest) -> dict[str, Any]:
    """The Messages API request of `request` (a live call's arguments, a message batch request's `params`)."""
    document: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": "user", "content": request.user}],
    }
    if request.system:
        document["system"] = request.system
    return document


def from_message(message: Message, request: CompletionRequest, latency_ms: float = 0.0,
                 rate_limit: dict[str, float] | None = None) -> Completion:
    """Our Completion from an SDK Message (a live answer, or a message batch's succeeded result)."""
    usage = message.usage
    return Completion(
        text="".join(block.text for block in message.content if block.type == "text"),
        usage=Usage(
            # Cache writes are billed as input; cache reads at the cached price.
            input_tokens=usage.input_tokens + (usage.cache_creation_input_tokens or 0),
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cache_read_input_tokens or 0,
        ),
        finish_reason=FINISH_REASONS.get(message.stop_reason or "", message.stop_reason or ""),
        model=message.model or request.model,
        latency_ms=latency_ms,
        rate_limit=rate_limit or {},
    )
