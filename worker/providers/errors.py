"""Turn what an SDK raised into a `worker.errors.ProviderError`, the only place that reads provider errors.

Each adapter picks out its SDK's facts (status, message, whether the prompt was too long) and
these functions decide the class, so both providers map statuses the same way:

    429, 529 (Anthropic "overloaded")   -> RateLimited, `retry_after` from the headers
    408, 409, 5xx                        -> ServerError
    prompt too long (a 400)              -> ContextTooLong
    401, 403, 404 (bad key, no access,  -> TierUnusable: every call to the tier would fail the same way
      unknown model)
    any other 4xx                        -> Permanent
    429 for an exhausted quota or spend  -> Permanent (waiting does not refill it)
    client-side timeout                  -> ProviderTimeout
    connection refused / reset / DNS     -> ProviderUnavailable

408 is a ServerError, not a ProviderTimeout: the server answered, and ProviderTimeout means our own
deadline (the tier's timeout) passed with no answer. Both are retryable, so only the label differs.

Messages read "openai 401: Incorrect API key provided" and never carry the API key or request headers.
"""

from __future__ import annotations

import re

import httpx2

from cascade.errors import (
    ContextTooLong,
    Permanent,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    TierUnusable,
)
from cascade.worker.providers.common import parse_retry_after

#: API keys as providers echo them back, masked or not ("sk-proj-****abcd", "sk-ant-api03-...")
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*]{3,}")
_MAX_MESSAGE = 500  # an HTML error page from a proxy should not flood the logs


def redact(text: str, secret: str = "") -> str:
    """`text` without `secret` and without anything shaped like an API key."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("sk-***", text)


def status_error(
    provider: str,
    response: httpx2.Response,
    message: str | None,
    *,
    secret: str = "",
    context_too_long: bool = False,
    quota_exhausted: bool = False,
) -> ProviderError:
    """The error for an HTTP error response; `message` is the provider's own words when it sent any."""
    status = response.status_code
    words = message or _body_text(response) or response.reason_phrase or "no message"
    text = f"{provider} {status}: {redact(' '.join(words.split()), secret)[:_MAX_MESSAGE]}"
    if context_too_long:
        return ContextTooLong(text, status=status)
    if status in (429, 529) and not quota_exhausted:
        return RateLimited(text, status=status, retry_after=parse_retry_after(response.headers))
    if status in (408, 409) or status >= 500:
        return ServerError(text, status=status)
    if status in (401, 403, 404):
        return TierUnusable(text, status=status)
    return Permanent(text, status=status)


def timeout_error(provider: str, timeout: float) -> ProviderTimeout:
    """The error for a call that got no answer within the tier's timeout."""
    return ProviderTimeout(f"{provider}: no answer within {timeout:g} s")


def connection_error(provider: str, err: BaseException, *, secret: str = "") -> ProviderUnavailable:
    """The error for an endpoint that could not be reached; names the network cause the SDK wrapped."""
    cause = err.__cause__ or err.__context__
    detail = str(cause) if cause is not None and str(cause) else str(err)
    return ProviderUnavailable(f"{provider}: cannot connect ({redact(detail, secret)[:_MAX_MESSAGE]})")


def bad_response_error(provider: str, err: BaseException, *, secret: str = "") -> ServerError:
    """The error for a success status whose body the SDK could not read: the provider's fault."""
    return ServerError(f"{provider}: unreadable response ({redact(str(err), secret)[:_MAX_MESSAGE]})")


def sdk_error(provider: str, err: BaseException, *, secret: str = "") -> Permanent:
    """The error for an SDK failure before any HTTP exchange (bad arguments, client set-up)."""
    return Permanent(f"{provider}: {type(err).__name__}: {redact(str(err), secret)[:_MAX_MESSAGE]}")


def _body_text(response: httpx2.Response) -> str:
    """The raw body of a non-JSON error response (a proxy's page), or "" when unreadable."""
    if response.is_closed and not response.is_stream_consumed:
        return ""  # closed before it was read: there is no body to show
    return response.text.strip()
