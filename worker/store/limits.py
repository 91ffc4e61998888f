"""The shared limiter's Redis side: one Lua script call per admission, settlement or cooldown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cascade.worker.store.keys import Keys
from cascade.worker.store.scripts import load_script


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: `capacity` units, refilled at `per_ms` units a millisecond (0: no limit)."""

    capacity: float = 0.0
    per_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Admission:
    """What the acquire script decided."""

    admitted: bool          # True: a slot is booked; start the call after `wait_s`
    wait_s: float           # admitted: until the booked slot; refused: before asking again
    cooldown_s: float       # what is left of the tier's 429 cooldown or open circuit (0 when none)
    circuit: bool = False   # the tier's circuit is open or half-open (an admitted caller is its probe)


class LimiterStore:
    """Limiter state of every tier of one namespace; the clock is the Redis server's."""

    def __init__(self, redis: Any, namespace: str = "cascade"):
        self.redis = redis
        self.keys = Keys(namespace)
        self._acquire = load_script(redis, "limiter_acquire")
        self._settle = load_script(redis, "limiter_settle")
        self._cool_down = load_script(redis, "limiter_cool_down")
        self._circuit = load_script(redis, "circuit_report")

    def _tier_keys(self, tier: str) -> list[str]:
        return [self.keys.limiter(tier, "state"), self.keys.limiter(tier, "leases")]

    def acquire(self, tier: str, requests: Bucket, tokens: Bucket, cost: int, *, max_in_flight: int = 0,
                lease_id: str = "", lease_ttl_s: float = 0.0, max_book_s: float = 5.0,
                refusals: int = 0, probe: str = "", probe_ttl_s: float = 30.0) -> Admission:
        """Book one call of `cost` tokens, or learn how long to wait; takes nothing when refused."""
        args = [repr(requests.capacity), repr(requests.per_ms), repr(tokens.capacity), repr(tokens.per_ms), cost,
                max_in_flight, lease_id, round(lease_ttl_s * 1000), round(max_book_s * 1000), min(refusals, 16),
                probe, round(probe_ttl_s * 1000)]
        admitted, wait_ms, cool_ms, circuit = self._acquire(keys=self._tier_keys(tier), args=args)
        return Admission(bool(admitted), int(wait_ms) / 1000, int(cool_ms) / 1000, bool(circuit))

    def settle(self, tier: str, tokens: Bucket, delta: int, lease_id: str, duration_s: float) -> None:
        """Refund (`delta` < 0) or debit the tokens bucket and free the in-flight lease, if any."""
        args = [repr(tokens.capacity), repr(tokens.per_ms), delta, lease_id, round(duration_s * 1000, 3)]
        self._settle(keys=self._tier_keys(tier), args=args)

    def cool_down(self, tier: str, seconds: float) -> float:
        """Hold every caller of the tier for `seconds` (a later cooldown already set wins); return what is left."""
        left_ms = self._cool_down(keys=self._tier_keys(tier)[:1], args=[max(0, round(seconds * 1000))])
        return int(left_ms) / 1000

    def cooldown_left(self, tier: str) -> float:
        """Seconds left of the tier's cooldown or open circuit."""
        return self.pause(tier)[0]

    def pause(self, tier: str) -> tuple[float, bool]:
        """(seconds left of the tier's cooldown or open circuit, whether its circuit is open): a read only."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hmget(self.keys.limiter(tier, "state"), "cool", "circ")
        (seconds, micros), (cool, circ) = pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) / 1000
        return max(0.0, (float(cool or 0) - now_ms) / 1000), circ == b"open"

    def report(self, tier: str, ok: bool, probe: str, *, failures_to_open: int, first_open_s: float,
               max_open_s: float) -> float:
        """A call ended: its success closes the circuit, a transient failure counts toward opening it.
        Returns the open period just set (s), 0 when the circuit did not open, -1 when it closed."""
        args = ["ok" if ok else "fail", probe, failures_to_open, round(first_open_s * 1000), round(max_open_s * 1000)]
        return int(self._circuit(keys=self._tier_keys(tier)[:1], args=args)) / 1000

    def in_flight(self, tier: str) -> int:
        """Leases currently held on the tier (expired ones included until the next acquire sweeps them)."""
        return int(self.redis.zcard(self.keys.limiter(tier, "leases")))
