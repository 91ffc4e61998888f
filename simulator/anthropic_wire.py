"""The Anthropic Messages wire format: POST /v1/messages."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from cascade.simulator.outcomes import SimAnswer
from cascade.simulator.ratelimit import Admission, retry_after_seconds, rfc3339_after
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

API = "anthropic"
PATH = "/v1/messages"
#: Anthropic reserves max_tokens at admission and adjusts to the output produced at the end
SETTLES_OUTPUT = True
_STOP = MappingProxyType({"stop": "end_turn", "length": "max_tokens"})
_ERROR_TYPE = MappingProxyType({
    "invalid_request": "invalid_request_error",
    "context_length": "invalid_request_error",
    "not_found": "not_found_error",
    "too_large": "request_too_large",
    "auth": "authentication_error",
    "rate_limit": "rate_limit_error",
    "server": "api_error",
})


def parse(body: dict[str, Any]) -> SimRequest:
    """The request a messages.create call sent; unknown parameters are ignored, `n` is refused."""
    model = require_model(body)
    messages = require_messages(body)
    if not messages:
        raise BadRequest("messages: at least one message is required")
    max_tokens = optional_int(body, "max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if "n" in body:
        raise BadRequest("n: Extra inputs are not permitted")
    if body.get("stream"):
        raise BadRequest("stream: streaming is not supported by the simulator")
    system = content_text(body.get("system"))
    texts = ((system,) if system else ()) + tuple(content_text(m.get("content")) for m in messages)
    return SimRequest(model=model, user_text=last_user_text(messages), message_texts=texts, max_tokens=max_tokens)


def response_id(number: int) -> str:
    """A message id."""
    return f"msg_sim{number:016d}"


def completion(
    request: SimRequest, answers: list[SimAnswer], prompt_tokens: int, rid: str, created: int
) -> dict[str, Any]:
    """The message body for the one answer (`created` is unused: messages carry no timestamp)."""
    (answer,) = answers
    return {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": _STOP[answer.finish],
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt_tokens,
            "output_tokens": answer.output_tokens,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }


def error(kind: str, message: str, *, limit: str = "") -> dict[str, Any]:
    """An error body (`limit` is unused: Anthropic names no limit type)."""
    return {"type": "error", "error": {"type": _ERROR_TYPE[kind], "message": message}}


def context_message(prompt_tokens: int, window: int) -> str:
    """What Anthropic says when a prompt does not fit."""
    return f"prompt is too long: {prompt_tokens} tokens > {window} maximum"


def rate_limit_message(model: str, admission: Admission, requested: int) -> str:
    """What Anthropic says when the rpm / tpm limiter refuses a request."""
    if admission.reason == "tokens":
        what = f"the rate limit of {admission.limit_tokens} input and output tokens per minute"
    else:
        what = f"the rate limit of {admission.limit_requests} requests per minute"
    return f"This request would exceed {what} for {model}. Please try again later."


def limit_headers(admission: Admission) -> dict[str, str]:
    """anthropic-ratelimit-* headers for the limits that are set (none for an unlimited model)."""
    headers: dict[str, str] = {}
    if admission.limit_requests:
        headers["anthropic-ratelimit-requests-limit"] = str(admission.limit_requests)
        headers["anthropic-ratelimit-requests-remaining"] = str(admission.remaining_requests)
        headers["anthropic-ratelimit-requests-reset"] = rfc3339_after(admission.reset_requests_s)
    if admission.limit_tokens:
        headers["anthropic-ratelimit-tokens-limit"] = str(admission.limit_tokens)
        headers["anthropic-ratelimit-tokens-remaining"] = str(admission.remaining_tokens)
        headers["anthropic-ratelimit-tokens-reset"] = rfc3339_after(admission.reset_tokens_s)
    return headers


def retry_headers(seconds: float, *, whole: bool) -> dict[str, str]:
    """retry-after in seconds (whole, rounded up, when `whole`)."""
    return {"retry-after": str(retry_after_seconds(seconds)) if whole else seconds_text(seconds)}


def request_id_headers(rid: str) -> dict[str, str]:
    """Headers naming the request."""
    return {"request-id": f"req_{rid}"}
