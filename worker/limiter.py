"""Stay within a tier's provider limits: rpm, tpm and calls in flight, shared by every process of the cluster.

`RedisLimiter` keeps two token buckets per tier in Redis (requests and tokens) and a set of in-flight
leases. A caller books the next free slot in one Lua round trip and sleeps until it; it never polls
for a rate slot. Buckets are sized so that no rolling minute ever holds more than the limit, which is
how providers count; a small burst absorbs threads that wake late.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cascade.worker.config.schema import Tier
from cascade.worker.store.limits import Bucket, LimiterStore
from cascade.worker.store_retry import PASSING

log = logging.getLogger("cascade.limiter")
T = TypeVar("T")

WINDOW_S = 60.0          # providers count rpm / tpm over a rolling minute
MARGIN_S = 0.5           # our admission time vs the provider's clock: network and thread-wake jitter
BURST_S = 0.5            # a bucket holds half a second of calls, so late wake-ups do not lose slots
MAX_WAIT_S = 5.0         # a slot is booked at most this far ahead; a refused caller re-asks at most this often
LEASE_SLACK_S = 30.0     # an in-flight lease outlives the call's timeout by this, then lapses (crashed worker)
COOLDOWN_POLL_S = 0.5    # tiers without limits look for another process's 429 cooldown this often
LOW_REQUESTS = 1         # provider hint: this many requests left before its reset -> pause until the reset
HINT_MAX_PAUSE_S = 2.0   # a pause from hints is short: the hint's reset is when the window is *fully* refilled


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

    def observe(self, tier: Tier, rate_limit: Mapping[str, float]) -> None:
        """Read a successful call's rate-limit hints; pause the tier before the provider refuses."""
        ...

    def report(self, tier: Tier, lease: object, ok: bool, cause: str = "") -> None:
        """A call ended: a transient failure (`cause` says which) counts toward opening the tier's circuit, a
        success closes it."""
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

    def observe(self, tier: Tier, rate_limit: Mapping[str, float]) -> None:
        """Nothing to slow down."""

    def report(self, tier: Tier, lease: object, ok: bool, cause: str = "") -> None:
        """No shared circuit."""


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """When a tier's circuit opens and for how long: consecutive transient failures, then doubling periods."""

    failures_to_open: int = 5
    first_open_s: float = 1.0
    max_open_s: float = 60.0


def request_bucket(rpm: int) -> Bucket:
    """Requests bucket whose admissions in any window of WINDOW_S + MARGIN_S never exceed `rpm`."""
    if rpm <= 0:
        return Bucket()
    capacity = max(1.0, math.floor(rpm * BURST_S / WINDOW_S))
    # calls are whole: capacity + floor(rate * window) <= rpm needs rate * window < rpm - capacity + 1
    return Bucket(capacity, (rpm - capacity + 1) / (WINDOW_S + MARGIN_S) / 1000)


def token_bucket(tpm: int) -> Bucket:
    """Tokens bucket whose reservations in any window of WINDOW_S + MARGIN_S never exceed `tpm`."""
    if tpm <= 0:
        return Bucket()
    capacity = tpm * BURST_S / WINDOW_S
    return Bucket(capacity, (tpm - capacity) / (WINDOW_S + MARGIN_S) / 1000)


@dataclass(frozen=True, slots=True)
class Lease:
    """One admitted call: what it reserved and when it started."""

    tier: str
    lease_id: str       # in-flight lease ("" when the tier has no cap)
    tokens: int         # reserved: prompt estimate + max_tokens
    started: float      # clock() when the call could start
    probe: str = ""     # this call's token for the tier's circuit
    circuit: bool = False   # the circuit was open or half-open when the call was admitted (it is a probe)


class RedisLimiter:
    """The cluster-wide limiter: state in Redis (or fakeredis when embedded), one script call per step."""

    def __init__(self, redis: Any, namespace: str = "cascade", *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 max_wait_s: float = MAX_WAIT_S, circuit: CircuitPolicy = CircuitPolicy()):
        self.store = LimiterStore(redis, namespace)
        self.sleep = sleep
        self.clock = clock
        self.max_wait_s = max_wait_s
        self.circuit = circuit
        self._failing: dict[str, bool] = {}          # tier -> this process saw a transient failure or an open circuit
        self._rng = rng or random.Random()
        self._prefix = uuid.uuid4().hex[:12] + "-"
        self._ids = itertools.count(1)
        self._cool_until: dict[str, float] = {}      # tier -> clock() at which a known cooldown ends
        self._cool_checked: dict[str, float] = {}    # tier -> clock() of the last look (tiers without limits)

    def acquire(self, tier: Tier, tokens: int) -> Lease:
        """Block until one call of about `tokens` tokens may start on `tier`; return its lease."""
        requests, token_limit = request_bucket(tier.rpm), token_bucket(tier.tpm)
        probe = f"{self._prefix}{next(self._ids)}"
        limited = bool(requests.per_ms or token_limit.per_ms or tier.max_in_flight)
        if not limited and not self._failing.get(tier.name):
            self._honour_cooldown_unlimited(tier.name)
            if not self._failing.get(tier.name):
                return Lease(tier.name, "", tokens, self.clock(), probe)
        lease_id = probe if tier.max_in_flight else ""
        refusals = 0
        while True:
            self._sleep_out_cooldown(tier.name)
            admission = self._through_outage(lambda: self.store.acquire(
                tier.name, requests, token_limit, tokens, max_in_flight=tier.max_in_flight, lease_id=lease_id,
                lease_ttl_s=tier.timeout_s + LEASE_SLACK_S, max_book_s=self.max_wait_s, refusals=refusals,
                probe=probe, probe_ttl_s=tier.timeout_s + LEASE_SLACK_S))
            self._failing[tier.name] = admission.circuit or self._failing.get(tier.name, False)
            if admission.cooldown_s:
                self._note_cooldown(tier.name, admission.cooldown_s)
            if admission.admitted:
                if admission.wait_s > 0:
                    self.sleep(admission.wait_s)      # our booked slot: no jitter needed, no second ask
                    # Another process may have met a 429 (or opened the circuit) while this slot waited:
                    # a booked call must not go out into it.
                    left, _ = self._through_outage(lambda: self.store.pause(tier.name))
                    if left > 0:
                        self._note_cooldown(tier.name, left)
                        self.settle(tier, Lease(tier.name, lease_id, tokens, self.clock()), 0)
                        continue
                self._sleep_out_cooldown(tier.name)   # a 429 seen by this process while we slept
                return Lease(tier.name, lease_id, tokens, self.clock(), probe, admission.circuit)
            if not admission.cooldown_s:
                refusals += 1
            self.sleep(self._jittered(min(admission.wait_s, self.max_wait_s)))

    def report(self, tier: Tier, lease: object, ok: bool, cause: str = "") -> None:
        """Count a transient failure toward the tier's circuit, or close it after a success. A success costs a
        round trip only while this process knows of failures (the common case stays free)."""
        if not isinstance(lease, Lease) or (ok and not (lease.circuit or self._failing.get(tier.name))):
            return
        try:
            opened = self.store.report(tier.name, ok, lease.probe, failures_to_open=self.circuit.failures_to_open,
                                       first_open_s=self.circuit.first_open_s, max_open_s=self.circuit.max_open_s)
        except PASSING:
            return      # Redis restarting: the circuit is bookkeeping, the call itself is done
        if ok:
            self._failing[tier.name] = False
            if opened < 0:
                log.warning("tier %s: circuit closed, calls resume", tier.name)
        else:
            self._failing[tier.name] = True
            if opened > 0:
                log.warning("tier %s: circuit open for %.1f s after repeated failures (the last: %s); its jobs wait",
                            tier.name, opened, cause or "unknown")
                self._note_cooldown(tier.name, opened)

    def settle(self, tier: Tier, lease: object, used_tokens: int) -> None:
        """Free the lease's in-flight slot and refund (or debit) the tokens it did not (or over) use."""
        if not isinstance(lease, Lease):
            return
        token_limit = token_bucket(tier.tpm)
        delta = used_tokens - lease.tokens if token_limit.per_ms else 0
        if lease.lease_id or delta:
            try:
                self.store.settle(tier.name, token_limit, delta, lease.lease_id, max(0.0, self.clock() - lease.started))
            except PASSING:
                pass    # Redis restarting: the buckets refill and the in-flight lease lapses by themselves

    def cool_down(self, tier: Tier, seconds: float) -> None:
        """Pause every worker of the tier for `seconds`; an already-set cooldown that ends later wins."""
        try:
            self._note_cooldown(tier.name, self.store.cool_down(tier.name, seconds))
        except PASSING:
            self._note_cooldown(tier.name, seconds)     # at least this process waits

    def observe(self, tier: Tier, rate_limit: Mapping[str, float]) -> None:
        """Pause the tier briefly when the provider says its requests or tokens are nearly spent."""
        pause = 0.0
        remaining, reset = rate_limit.get("remaining_requests"), rate_limit.get("reset_requests_s")
        if remaining is not None and remaining <= LOW_REQUESTS and reset:
            pause = min(reset, HINT_MAX_PAUSE_S)
        remaining, reset = rate_limit.get("remaining_tokens"), rate_limit.get("reset_tokens_s")
        if remaining is not None and remaining < tier.max_tokens and reset:
            pause = max(pause, min(reset, HINT_MAX_PAUSE_S))
        if pause > 0 and self._cool_until.get(tier.name, 0.0) < self.clock() + pause:
            self.cool_down(tier, pause)

    # -- local view of the shared cooldown ----------------------------------------------------

    def _note_cooldown(self, tier: str, left_s: float) -> None:
        until = self.clock() + left_s
        if until > self._cool_until.get(tier, 0.0):
            self._cool_until[tier] = until

    def _sleep_out_cooldown(self, tier: str) -> None:
        while (left := self._cool_until.get(tier, 0.0) - self.clock()) > 0:
            self.sleep(self._jittered(min(left, self.max_wait_s)))

    def _honour_cooldown_unlimited(self, tier: str) -> None:
        now = self.clock()
        if now - self._cool_checked.get(tier, -math.inf) >= COOLDOWN_POLL_S:
            self._cool_checked[tier] = now
            left, circuit = self._through_outage(lambda: self.store.pause(tier))
            if left:
                self._note_cooldown(tier, left)
            if circuit:
                self._failing[tier] = True      # half-open: calls go through the script, one probe at a time
        self._sleep_out_cooldown(tier)

    def _through_outage(self, call: Callable[[], T]) -> T:
        """A limiter read or booking, waited out while Redis restarts (the caller's sleep can interrupt it)."""
        wait = 0.2
        while True:
            try:
                return call()
            except PASSING:
                self.sleep(wait)
                wait = min(5.0, wait * 2)

    def _jittered(self, seconds: float) -> float:
        # spread callers that were told the same wait, so they do not all ask again at once
        return seconds + self._rng.uniform(0.0, 0.1 * seconds + 0.005)
