"""A stand-in for cascade.ops.monitor.Monitor, for dry runs of benchmarks.drift only (`--stub-monitor`).

Same interface and the [alerts] settings' meaning (rolling window, minimum sample, hysteresis, agreement over
the last min_shadow pairs); the real Monitor (the alerts helper's) replaces it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Alert:
    """The fields of ops.alerts.Alert the benchmark reads."""

    kind: str
    state: str
    pipeline: str
    tier: str
    baseline: float
    value: float
    window: str
    message: str
    check: str = ""


class Monitor:
    """Escalation drift per pipeline and tier, and shadow agreement per pipeline."""

    def __init__(self, settings: Any, sinks: Iterable[Any] = (), ledger: Any = None):
        self.cfg = settings.alerts
        self.windows: dict[tuple[str, str], deque[int]] = {}
        self.pairs: dict[str, deque[int]] = {}
        self.agreement_base: dict[str, float] = {}
        self.active: set[tuple[str, str, str]] = set()

    def _judge(self, kind: str, pipeline: str, tier: str, base: float, value: float, off: float, n: int
               ) -> list[Alert]:
        key = (kind, pipeline, tier)
        fire = off > self.cfg.escalation_points / 100 if kind == "escalation_drift" else off > self.cfg.agreement_points / 100
        clear = off <= self.cfg.clear_points / 100
        window = f"last {n} {'attempts' if kind == 'escalation_drift' else 'shadow pairs'}"
        if key not in self.active and fire:
            self.active.add(key)
            return [Alert(kind, "fired", pipeline, tier, base, value, window,
                          f"{kind} {pipeline}/{tier}: {value:.1%} against a baseline of {base:.1%}")]
        if key in self.active and clear:
            self.active.discard(key)
            return [Alert(kind, "cleared", pipeline, tier, base, value, window, f"{kind} {pipeline}/{tier} is back")]
        return []

    def observe_records(self, records: Iterable[dict]) -> list[Alert]:
        """Count each attempt as escalated (a later attempt followed it) or not, per tier."""
        out: list[Alert] = []
        for record in records:
            attempts = record.get("attempts", [])
            for i, attempt in enumerate(attempts):
                key = (record["pipeline"], attempt["tier"])
                base = self.cfg.baselines.get(f"{key[0]}.{key[1]}")
                if base is None:
                    continue
                window = self.windows.setdefault(key, deque(maxlen=self.cfg.window_attempts))
                window.append(int(i < len(attempts) - 1))
                if len(window) >= self.cfg.min_sample:
                    value = sum(window) / len(window)
                    out += self._judge("escalation_drift", key[0], key[1], base, value, abs(value - base), len(window))
        return out

    def observe_shadow(self, pairs: Iterable[dict]) -> list[Alert]:
        """Agreement over the last min_shadow pairs against the configured (or first min_shadow pairs') baseline."""
        out: list[Alert] = []
        for pair in pairs:
            pipeline = pair["pipeline"]
            window = self.pairs.setdefault(pipeline, deque(maxlen=self.cfg.min_shadow))
            window.append(int(pair["agree"]))
            if len(window) < self.cfg.min_shadow:
                continue
            value = sum(window) / len(window)
            base = self.agreement_base.setdefault(pipeline, self.cfg.agreement_baseline or value)
            out += self._judge("shadow_agreement", pipeline, "", base, value, base - value, len(window))
        return out
