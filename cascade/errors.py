"""The error tree. Retry decisions depend on the class, never on message text.

    CascadeError
    ├── ConfigError              bad or inconsistent configuration (names file and key)
    ├── InputError               a bad input row (names the line)
    ├── PoisonMessage            a queue message that is not a job of any batch (dead-lettered, never retried)
    ├── BatchGone                a batch's live state vanished from Redis while it was submitted or waited on
    └── ProviderError            a model call failed; `.provider_message` keeps the provider's words,
        │                        `.spent` the usage of the parts that were answered (and billed)
        ├── Retryable            worth trying again on the same tier: the tier waits, the job does not fail
        │   ├── RateLimited      429 / overloaded; `.retry_after` seconds when the provider said
        │   ├── ProviderTimeout  no answer within the tier's timeout
        │   ├── ProviderUnavailable  connection refused or reset
        │   └── ServerError      5xx
        └── Permanent            the same request will fail again
            ├── ContextTooLong   the prompt does not fit the model's window
            └── TierUnusable     no request to this tier can work (401, 403, unknown model): the tier stops
"""

from __future__ import annotations


class CascadeError(Exception):
    """Base of every error Cascade raises on purpose."""


class ConfigError(CascadeError):
    """Configuration that cannot be used; the message names the file and the key."""


class InputError(CascadeError):
    """An input row that cannot become a job; the message names the line."""

    def __init__(self, line: int, reason: str, raw: str = ""):
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason
        self.raw = raw          # the row as read, so a rejected row can be fixed and submitted again


class PoisonMessage(CascadeError):
    """A queue message that cannot be a job (malformed, unknown batch or pipeline): dead-lettered, never retried."""


class BatchGone(CascadeError):
    """A batch's live state is no longer in Redis (restarted without its data, flushed): the producer opens it
    again and submits what was lost, a reader says so instead of waiting for it."""

    def __init__(self, batch: str):
        super().__init__(f"batch {batch}: its live state is gone from Redis (restarted without its data, or "
                         "flushed)")
        self.batch = batch


class ProviderError(CascadeError):
    """A model call failed."""

    kind = "provider_error"

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.provider_message = message
        self.status = status
        self.spent = None       # Usage of the sampled calls that did answer before one failed (fan-out)


class Retryable(ProviderError):
    """Worth trying again on the same tier after a backoff."""

    kind = "retryable"


class RateLimited(Retryable):
    """The provider refused the call for rate; honour `retry_after` when given."""

    kind = "rate_limited"

    def __init__(self, message: str, *, status: int | None = 429, retry_after: float | None = None):
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ProviderTimeout(Retryable):
    """No answer within the tier's timeout."""

    kind = "timeout"


class ProviderUnavailable(Retryable):
    """The endpoint could not be reached."""

    kind = "connection"


class ServerError(Retryable):
    """The provider failed on its side (5xx)."""

    kind = "server_error"


class Permanent(ProviderError):
    """The same request will fail again: bad request, auth, unknown model."""

    kind = "permanent"


class ContextTooLong(Permanent):
    """The prompt does not fit the model's context window; a larger tier may take it."""

    kind = "context_too_long"


class TierUnusable(Permanent):
    """Every request to the tier will fail the same way (bad key, no access, unknown model): stop the tier."""

    kind = "tier_unusable"
