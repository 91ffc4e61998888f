"""Per-model rate limits enforced like a provider: requests and tokens over a rolling 60 s window."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

WINDOW_S = 60.0


@dataclass(frozen=True)
class Admission:
    """The limiter's verdict on one request and the state it reports in headers."""

    allowed: bool
    retry_after_s: float          # seconds until the request would fit; 0 when allowed
    reason: str                   # "requests" | "tokens" | "" (which limit refused it)
    limit_requests: int           # 0: unlimited
    remaining_requests: int
    reset_requests_s: float       # until the request budget is fully replenished
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_s: float
    ticket: list | None = None    # the admitted entry, for `settle`


class RollingWindow:
    """Requests and tokens admitted in the last `window_s` seconds for one model; thread-safe."""

    def __init__(self, rpm: int, tpm: int, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.clock = clock
        self._entries: deque[list] = deque()     # [admitted at, tokens charged]
        self._tokens = 0
        self._lock = threading.Lock()

    def admit(self, tokens: int) -> Admission:
        """Admit a request costing `tokens` (prompt + max output) now, or say how long to wait."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            wait_requests = self._wait_for_requests(now)
            wait_tokens = self._wait_for_tokens(now, tokens)
            allowed = wait_requests <= 0 and wait_tokens <= 0
            ticket = None
            if allowed:
                ticket = [now, tokens]
                self._entries.append(ticket)
                self._tokens += tokens
            reason = "" if allowed else ("requests" if wait_requests >= wait_tokens else "tokens")
            return replace(self._snapshot(now, allowed, max(wait_requests, wait_tokens, 0.0), reason), ticket=ticket)

    def settle(self, ticket: list, tokens: int) -> None:
        """Charge an admitted request `tokens` instead of its reservation (Anthropic counts the output produced)."""
        with self._lock:
            self._expire(self.clock())
            if ticket[0] > self.clock() - self.window_s:      # still in the window
                self._tokens += tokens - ticket[1]
                ticket[1] = tokens

    def _expire(self, now: float) -> None:
        while self._entries and self._entries[0][0] <= now - self.window_s:
            _, tokens = self._entries.popleft()
            self._tokens -= tokens

    def _wait_for_requests(self, now: float) -> float:
        if self.rpm <= 0 or len(self._entries) < self.rpm:
            return 0.0
        # the request fits once enough old requests expire to leave one slot
        oldest_needed = self._entries[len(self._entries) - self.rpm][0]
        return oldest_needed + self.window_s - now

    def _wait_for_tokens(self, now: float, tokens: int) -> float:
        if self.tpm <= 0 or self._tokens + tokens <= self.tpm:
            return 0.0
        if tokens > self.tpm:
            return self.window_s  # can never fit; a provider refuses it as too large
        excess = self._tokens + tokens - self.tpm
        freed = 0
        for stamp, used in self._entries:
            freed += used
            if freed >= excess:
                return stamp + self.window_s - now
        return self.window_s

    def _snapshot(self, now: float, allowed: bool, wait: float, reason: str) -> Admission:
        newest = self._entries[-1][0] if self._entries else now - self.window_s
        reset = max(0.0, newest + self.window_s - now)
        return Admission(
            allowed=allowed,
            retry_after_s=0.0 if allowed else wait,
            reason=reason,
            limit_requests=self.rpm,
            remaining_requests=max(0, self.rpm - len(self._entries)),
            reset_requests_s=reset,
            limit_tokens=self.tpm,
            remaining_tokens=max(0, self.tpm - self._tokens),
            reset_tokens_s=reset if self._tokens else 0.0,
        )


def retry_after_seconds(wait: float) -> int:
    """A wait as the whole seconds a retry-after header carries, rounded up, at least 1."""
    return max(1, math.ceil(wait - 1e-9))


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes rate-limit resets: "20ms", "1.5s", "1m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def rfc3339_after(seconds: float) -> str:
    """The wall-clock moment `seconds` from now, as Anthropic writes resets (whole seconds, UTC)."""
    moment = math.ceil(time.time() + max(0.0, seconds))
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
