"""SLO logic without clocks or I/O: rolling shares over recent observations, and detectors that fire and clear.

A detector watches one rolling value (a pipeline tier's escalation rate, a pipeline's cost share, its shadow
agreement) against a baseline. It gives no verdict on fewer than `min_sample` observations, fires once when
the value leaves its band and clears once when the value is back inside a narrower one (hysteresis), so a
value that hovers at the edge pages nobody twice. Without a baseline it learns one from its first
`min_sample` observations. Only transitions are returned: never a repeat while an alert is active.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cascade.worker.config.schema import AlertsConfig

FIRED = "fired"
CLEARED = "cleared"
EPSILON = 1e-9      # "more than 5 points" means more: 0.35 - 0.30 is not a 5.000000001-point move


class Rolling:
    """The ratio sum(part) / sum(whole) over the last `size` observations (integers: no drift in the sums)."""

    def __init__(self, size: int):
        self.size = size
        self._items: deque[tuple[int, int]] = deque()
        self.part = 0
        self.whole = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, part: int, whole: int = 1) -> None:
        """Observe one (part, whole): (1, 1) an escalated attempt, (cost, counterfactual) a job."""
        self._items.append((part, whole))
        self.part += part
        self.whole += whole
        if len(self._items) > self.size:
            old_part, old_whole = self._items.popleft()
            self.part -= old_part
            self.whole -= old_whole

    @property
    def value(self) -> float | None:
        """The ratio now, or None while the whole is zero."""
        return self.part / self.whole if self.whole else None


@dataclass(frozen=True, slots=True)
class Transition:
    """A detector fired or cleared: the value, the baseline it was judged against, over how many observations."""

    state: str                  # fired | cleared
    value: float
    baseline: float
    observed: int               # observations in the window when it happened
    learned: bool               # the baseline was learned from the first observations


Judge = Callable[[float, float], bool]      # (value, baseline) -> the condition holds


class Detector:
    """Fires when `fires(value, baseline)` holds and clears when `clears(value, baseline)` holds, once each."""

    def __init__(self, window: int, min_sample: int, fires: Judge, clears: Judge, baseline: float | None = None,
                 active: bool = False):
        self.rolling = Rolling(window)
        self.min_sample = min(min_sample, window)   # a window smaller than the sample could never judge
        self.fires = fires
        self.clears = clears
        self.baseline = baseline
        self.learned = False
        self.active = active

    def observe(self, part: int, whole: int = 1) -> Transition | None:
        """Take one observation; a Transition when the alert fires or clears with it, else None."""
        self.rolling.add(part, whole)
        if len(self.rolling) < self.min_sample:
            return None
        value = self.rolling.value
        if value is None:
            return None
        if self.baseline is None:       # no baseline given: the first full sample is the baseline
            self.baseline, self.learned = value, True
            return None
        if not self.active and self.fires(value, self.baseline):
            self.active = True
            return Transition(FIRED, value, self.baseline, len(self.rolling), self.learned)
        if self.active and self.clears(value, self.baseline):
            self.active = False
            return Transition(CLEARED, value, self.baseline, len(self.rolling), self.learned)
        return None


def escalation_detector(config: AlertsConfig, baseline: float | None, active: bool = False) -> Detector:
    """Escalation rate of one pipeline tier: fires more than `escalation_points` from the baseline (either way:
    up is cost, down is verifiers grown lenient), clears back within `clear_points`."""
    fire, clear = config.escalation_points / 100, config.clear_points / 100
    return Detector(config.window_attempts, config.min_sample,
                    fires=lambda value, base: abs(value - base) > fire + EPSILON,
                    clears=lambda value, base: abs(value - base) <= clear + EPSILON,
                    baseline=baseline, active=active)


def cost_detector(config: AlertsConfig, active: bool = False) -> Detector:
    """Cascade cost / last-tier-alone cost over recent jobs: fires above `cost_share`, clears below the clear
    share. The baseline is the share itself (what the value is compared with)."""
    clear = config.cost_clear
    return Detector(config.window_attempts, config.min_sample,
                    fires=lambda value, share: value > share + EPSILON,
                    clears=lambda value, _share: value < clear,
                    baseline=config.cost_share, active=active)


def agreement_detector(config: AlertsConfig, baseline: float | None, active: bool = False) -> Detector:
    """Shadow agreement of one pipeline: fires more than `agreement_points` below its baseline, clears back
    within `clear_points` of it."""
    fire, clear = config.agreement_points / 100, config.clear_points / 100
    return Detector(config.shadow_window, config.min_shadow,
                    fires=lambda value, base: base - value > fire + EPSILON,
                    clears=lambda value, base: base - value <= clear + EPSILON,
                    baseline=baseline, active=active)
