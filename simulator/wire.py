"""What both wire protocols share: the parsed request and reading text out of message content."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: max_tokens assumed when an OpenAI request sets none (for the token budget of rate limits)
DEFAULT_MAX_TOKENS = 256
#: HTTP status of each error kind the simulator answers with
ERROR_STATUS = MappingProxyType({
    "invalid_request": 400, "context_length": 400, "auth": 401, "not_found": 404, "too_large": 413,
    "rate_limit": 429, "server": 500,
})


class ApiError(Exception):
    """A refused request: `kind` (a key of ERROR_STATUS) picks its status and each wire's error type."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class BadRequest(ApiError):
    """A request the API would refuse with 400 invalid_request_error."""

    def __init__(self, message: str):
        super().__init__("invalid_request", message)


@dataclass(frozen=True)
class SimRequest:
    """One chat request reduced to what the simulator needs."""

    model: str
    user_text: str                   # the last user message: what the rules and every draw key on
    message_texts: tuple[str, ...]   # system + every message, for prompt token counting
    max_tokens: int | None
    n: int = 1
    logprobs: bool = False

    @property
    def budget_tokens(self) -> int:
        """Output tokens the request may use, as rate limits reserve them."""
        return (self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS) * self.n


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif "content" in block:  # e.g. a tool result wrapping its own blocks
                    parts.append(content_text(block["content"]))
        return "\n".join(parts)
    raise BadRequest("message content must be a string or an array of content blocks")


def require_model(body: dict[str, Any]) -> str:
    """The request's model name."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: a non-empty string is required")
    return model


def require_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages array."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages: an array of message objects is required")
    return messages


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last message whose role is user ("" when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def optional_int(body: dict[str, Any], *names: str, low: int = 1) -> int | None:
    """The first of `names` present in `body`, as an integer >= low."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BadRequest(f"{name}: must be an integer >= {low}")
        return value
    return None


def seconds_text(seconds: float) -> str:
    """A number of seconds as a header value: "1", "0.25"."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"
