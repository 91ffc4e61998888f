"""OpenAI chat completions behind the official `openai` SDK."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cascade.errors import ProviderError
from cascade.models import Completion, CompletionRequest, TokenLogprob, Usage
from cascade.worker.providers import errors
from cascade.worker.providers.common import connection_limits, parse_duration, rate_limit_hints, require_api_key
from cascade.worker.providers.spec import ProviderSpec

if TYPE_CHECKING:
    import httpx2
    import openai
    from openai.types.chat import ChatCompletion
    from openai.types.chat.chat_completion import Choice

PROVIDER = "openai"

#: Completion.rate_limit key -> response header (resets are durations such as "6m0s")
RATE_LIMIT_HEADERS = {
    "remaining_requests": "x-ratelimit-remaining-requests",
    "remaining_tokens": "x-ratelimit-remaining-tokens",
    "reset_requests_s": "x-ratelimit-reset-requests",
    "reset_tokens_s": "x-ratelimit-reset-tokens",
}


class OpenAIProvider:
    """One `openai.OpenAI` client per process, shared by every thread; SDK retries off."""

    supports_logprobs = True
    supports_n = True
    tpm_counts_max_tokens = True      # OpenAI's limit counts prompt + max_tokens x n, used or not

    def __init__(self, spec: ProviderSpec, *, http_client: httpx2.Client | None = None):
        # Imported here, not at module level: the SDK takes most of a second to import and only
        # processes that call models need it.
        import openai

        self._sdk = openai
        self._api_key = require_api_key(spec)
        self._client = openai.OpenAI(
            api_key=self._api_key,
            base_url=spec.base_url,
            timeout=spec.timeout,
            max_retries=0,  # our limiter and backoff must see every attempt
            http_client=http_client or openai.DefaultHttpxClient(limits=connection_limits(spec)),
        )
        # The raw-response wrapper keeps the headers, which carry the rate-limit hints.
        self._create = self._client.chat.completions.with_raw_response.create

    def complete(self, request: CompletionRequest) -> Completion:
        """Send one chat completion; return its first choice (and all choices as samples when n > 1)."""
        start = time.perf_counter()
        try:
            raw = self._create(**body(request), timeout=request.timeout)
            response = self._parse(raw)
        except self._sdk.OpenAIError as err:
            # `from None`: the SDK error holds the request, whose headers carry the key.
            raise self._translate(err, request.timeout) from None
        latency_ms = (time.perf_counter() - start) * 1000
        return self._completion(response, raw.headers, latency_ms, request)

    def close(self) -> None:
        """Close the pooled connections (the provider is unusable afterwards)."""
        self._client.close()

    def batch_api(self) -> Any:
        """The Batch API of this client (Files + Batches), for a tier with mode = "batch"."""
        from cascade.worker.providers.openai_batches import OpenAIBatches

        return OpenAIBatches(self._client, self._translate, self.from_body)

    def from_body(self, document: dict[str, Any], request: CompletionRequest) -> Completion:
        """Our Completion from a chat.completion JSON body (a Batch API output line's `response.body`)."""
        try:
            response = self._sdk.types.chat.ChatCompletion.model_validate(document)
        except ValueError as err:
            raise errors.bad_response_error(PROVIDER, err, secret=self._api_key) from None
        if not response.choices:
            raise errors.bad_response_error(PROVIDER, ValueError("no chat completion choices in the body"))
        return self._completion(response, {}, 0.0, request)

    def _parse(self, raw: Any) -> ChatCompletion:
        """The parsed body; a success status with a body that is not a chat completion is a ServerError."""
        try:
            response = raw.parse()
        except ValueError as err:  # JSON that does not decode
            raise errors.bad_response_error(PROVIDER, err, secret=self._api_key) from None
        # The SDK hands back the plain text when the body is not JSON.
        if not isinstance(response, self._sdk.types.chat.ChatCompletion) or not response.choices:
            raise errors.bad_response_error(PROVIDER, ValueError("no chat completion choices in the body"))
        return response

    def _completion(
        self, response: ChatCompletion, headers: httpx2.Headers | dict[str, str], latency_ms: float, request: CompletionRequest
    ) -> Completion:
        """Our Completion from the SDK's parsed response."""
        first = response.choices[0]
        text, finish_reason = _text(first)
        content_logprobs = first.logprobs.content if first.logprobs and first.logprobs.content else ()
        return Completion(
            text=text,
            usage=_usage(response),
            finish_reason=finish_reason,
            model=response.model or request.model,
            latency_ms=latency_ms,
            logprobs=tuple(TokenLogprob(t.token, t.logprob) for t in content_logprobs),
            samples=tuple(_text(c)[0] for c in response.choices) if request.n > 1 else (),
            sample_finish=tuple(_text(c)[1] for c in response.choices) if request.n > 1 else (),
            rate_limit=rate_limit_hints(headers, RATE_LIMIT_HEADERS, parse_duration),
        )

    def _translate(self, err: openai.OpenAIError, timeout: float) -> ProviderError:
        """The worker.errors class for an SDK exception."""
        sdk = self._sdk
        if isinstance(err, sdk.APITimeoutError):  # before APIConnectionError, its base class
            return errors.timeout_error(PROVIDER, timeout)
        if isinstance(err, sdk.APIConnectionError):
            return errors.connection_error(PROVIDER, err, secret=self._api_key)
        if isinstance(err, sdk.APIStatusError):
            # The SDK keeps the body's "error" object in `body` and its "code" in `code`.
            body = err.body if isinstance(err.body, dict) else {}
            message = body.get("message") if isinstance(body.get("message"), str) else None
            return errors.status_error(
                PROVIDER,
                err.response,
                message,
                secret=self._api_key,
                context_too_long=err.code == "context_length_exceeded",
                quota_exhausted=err.code == "insufficient_quota",
            )
        if isinstance(err, sdk.APIResponseValidationError):
            return errors.bad_response_error(PROVIDER, err, secret=self._api_key)
        return errors.sdk_error(PROVIDER, err, secret=self._api_key)


def body(request: CompletionRequest) -> dict[str, Any]:
    """The chat completion request body of `request` (a live call's arguments, a Batch API line's `body`)."""
    document: dict[str, Any] = {
        "model": request.model,
        "messages": _messages(request),
        # `max_tokens` is deprecated in the SDK and refused by reasoning models.
        "max_completion_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if request.n > 1:
        document["n"] = request.n
    if request.logprobs:
        document["logprobs"] = True
    return document


def _messages(request: CompletionRequest) -> list[dict[str, str]]:
    """System (when set) and user messages."""
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages.append({"role": "user", "content": request.user})
    return messages


def _text(choice: Choice) -> tuple[str, str]:
    """A choice's text and finish reason; a refusal's text is the refusal itself."""
    if choice.message.refusal:
        return choice.message.refusal, "refusal"
    return choice.message.content or "", choice.finish_reason or ""


def _usage(response: ChatCompletion) -> Usage:
    """Tokens, with cached prompt tokens split out of the full-price input."""
    usage = response.usage
    if usage is None:
        return Usage()
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details else 0
    return Usage(input_tokens=usage.prompt_tokens - cached, output_tokens=usage.completion_tokens, cached_tokens=cached)
