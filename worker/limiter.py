"""The interface the engine uses to stay within a tier's provider limits."""

from __future__ import annotations

from typing import Protocol

from worker.config.schema import Tier


class Limiter(Protocol):
    """Admits calls to a tier within its rpm / tpm / in-flight limits, shared by every process."""

    def acquire(self, tier: Tier, tokens: int) -> object:
        """Block until one call of about `tokens` tokens may start; return a lease."""
        ...

    def settle(self, tier: Tier, lease: object, used_tokens: int) -> None:
        """Return the lease with the tokens the call really used."""
        ...

    def cool_down(self, tier: Tier, seconds: float) -> None:
        """The provider said 429: no worker of this tier calls for `seconds`."""
        ...


class NoLimiter:
    """Admits every call at once (tiers without rpm / tpm limits)."""

    def acquire(self, tier: Tier, tokens: int) -> object:
        """Admit at once."""
        return None

    def settle(self, tier: Tier, lease: object, used_tokens: int) -> None:
        """Nothing to return."""

    def cool_down(self, tier: Tier, seconds: float) -> None:
        """Nothing shared to pause."""
