"""The OpenAI Chat Completions wire format: POST /v1/chat/completions."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from cascade.simulator.outcomes import SimAnswer
from cascade.simulator.ratelimit import Admission, go_duration, retry_after_seconds
from cascade.simulator.wire import (
    BadRequest,
    SimRequest,
    content_text,
    last_user_text,
    optional_int,
    require_messages,
    require_model,
    seconds_text,
)

API = "openai"
PATH = "/v1/chat/completions"
#: OpenAI charges prompt + max_tokens x n against tpm at admission and keeps it
SETTLES_OUTPUT = False
_FINISH = MappingProxyType({"stop": "stop", "length": "length"})
_ERROR_TYPE = MappingProxyType({
    "invalid_request": "invalid_request_error",
    "context_length": "invalid_request_error",
    "not_found": "invalid_request_error",
    "too_large": "invalid_request_error",
    "auth": "invalid_request_error",
    "rate_limit": "requests",
    "server": "server_error",
})
_ERROR_CODE = MappingProxyType({"context_length": "context_length_exceeded", "rate_limit": "rate_limit_exceeded",
                                "auth": "invalid_api_key"})


def parse(body: dict[str, Any]) -> SimRequest:
    """The request a chat.completions.create call sent; unknown parameters are ignored."""
    model = require_model(body)
    messages = require_messages(body)
    if not messages:
        raise BadRequest("messages: at least one message is required")
    if body.get("stream"):
        raise BadRequest("stream: streaming is not supported by the simulator")
    n = optional_int(body, "n") or 1
    if n > 128:
        raise BadRequest("n: must be at most 128")
    return SimRequest(
        model=model,
        user_text=last_user_text(messages),
        message_texts=tuple(content_text(m.get("content")) for m in messages),
        max_tokens=optional_int(body, "max_completion_tokens", "max_tokens"),
        n=n,
        logprobs=bool(body.get("logprobs")),
    )


def response_id(number: int) -> str:
    """A completion id."""
    return f"chatcmpl-sim{number:012d}"


def _logprobs(answer: SimAnswer) -> dict[str, Any]:
    content = [
        {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")), "top_logprobs": []}
        for token, logprob in answer.logprobs
    ]
    return {"content": content, "refusal": None}


def completion(
    request: SimRequest, answers: list[SimAnswer], prompt_tokens: int, rid: str, created: int
) -> dict[str, Any]:
    """The chat.completion body for `answers` (one choice each)."""
    choices = [
        {
            "index": index,
            "message": {"role": "assistant", "content": answer.text, "refusal": None, "annotations": []},
            "finish_reason": _FINISH[answer.finish],
            "logprobs": _logprobs(answer) if request.logprobs else None,
        }
        for index, answer in enumerate(answers)
    ]
    completion_tokens = sum(answer.output_tokens for answer in answers)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_simulator",
    }


def error(kind: str, message: str, *, limit: str = "") -> dict[str, Any]:
    """An error body; `limit` ("requests" | "tokens") names the rate limit a 429 hit."""
    error_type = (limit or "requests") if kind == "rate_limit" else _ERROR_TYPE[kind]
    param = "messages" if kind == "context_length" else None
    return {"error": {"message": message, "type": error_type, "param": param, "code": _ERROR_CODE.get(kind)}}


def context_message(prompt_tokens: int, window: int) -> str:
    """What OpenAI says when a prompt does not fit."""
    return (
        f"This model's maximum context length is {window} tokens. However, your messages resulted in "
        f"{prompt_tokens} tokens. Please reduce the length of the messages."
    )


def rate_limit_message(model: str, admission: Admission, requested: int) -> str:
    """What OpenAI says when the rpm / tpm limiter refuses a request."""
    if admission.reason == "tokens":
        used = admission.limit_tokens - admission.remaining_tokens
        what = f"tokens per min (TPM): Limit {admission.limit_tokens}, Used {used}, Requested {requested}"
    else:
        used = admission.limit_requests - admission.remaining_requests
        what = f"requests per min (RPM): Limit {admission.limit_requests}, Used {used}, Requested 1"
    return (
        f"Rate limit reached for {model} in organization org-simulator on {what}. "
        f"Please try again in {go_duration(admission.retry_after_s)}."
    )


def limit_headers(admission: Admission) -> dict[str, str]:
    """x-ratelimit-* headers for the limits that are set (none for an unlimited model)."""
    headers: dict[str, str] = {}
    if admission.limit_requests:
        headers["x-ratelimit-limit-requests"] = str(admission.limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(admission.remaining_requests)
        headers["x-ratelimit-reset-requests"] = go_duration(admission.reset_requests_s)
    if admission.limit_tokens:
        headers["x-ratelimit-limit-tokens"] = str(admission.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(admission.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = go_duration(admission.reset_tokens_s)
    return headers


def retry_headers(seconds: float, *, whole: bool) -> dict[str, str]:
    """retry-after (whole seconds, rounded up, when `whole`) and the exact retry-after-ms."""
    after = str(retry_after_seconds(seconds)) if whole else seconds_text(seconds)
    return {"retry-after": after, "retry-after-ms": str(round(seconds * 1000))}


def request_id_headers(rid: str) -> dict[str, str]:
    """Headers naming the request."""
    return {"x-request-id": f"req_{rid}"}
