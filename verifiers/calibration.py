"""Calibration maps: a raw confidence score to P(correct), fitted offline, stored as JSON points.

A map is monotone and piecewise linear through its points (clamped outside them), so applying it
needs nothing but this module. `fit_isotonic` is pool-adjacent-violators in pure Python.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

#: the "format" field of a calibration file
FORMAT = "cascade-calibration/1"
#: how sure the fitted target must be on the training rows: a 90% one-sided bound, the usual choice
#: (80% met the targets on 4 of the 6 recorded figures in benchmarks.recorded, 90% on 5, 95% escalated
#: every date-mot job)
CONFIDENCE_DEFAULT = 0.9
#: slope added to the fitted map (per unit of raw score): far below any meaningful probability difference
TIE_SLOPE = 1e-6


@dataclass(frozen=True)
class CalibrationMap:
    """Monotone piecewise-linear map through `points` (x ascending, y non-decreasing)."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a calibration map needs at least one point")
        xs = [x for x, _ in self.points]
        ys = [y for _, y in self.points]
        if any(b < a for a, b in itertools.pairwise(xs)) or any(b < a for a, b in itertools.pairwise(ys)):
            raise ValueError("calibration points must be sorted by x with non-decreasing y")
        object.__setattr__(self, "_xs", tuple(xs))    # bisected on every attempt

    def __call__(self, x: float) -> float:
        """P(correct) for raw score `x`."""
        xs = self._xs
        i = bisect.bisect_right(xs, x)
        if i == 0:
            return self.points[0][1]
        if i == len(xs):
            return self.points[-1][1]
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def fit_isotonic(scores: Sequence[float], correct: Sequence[bool], centered: bool = False) -> CalibrationMap:
    """The least-squares non-decreasing fit of `correct` on `scores` (pool adjacent violators).

    `centered`: centred isotonic regression (Oron & Flournoy 2017): each pooled block becomes one point at
    its rows' mean score, linear between them, so a block's edge rows take values between its neighbours'."""
    if not scores or len(scores) != len(correct):
        raise ValueError("fitting needs as many labels as scores, and at least one")
    groups: dict[float, list[float]] = {}      # distinct score -> [sum of labels, count]
    for x, y in zip(scores, correct):
        group = groups.setdefault(x, [0.0, 0.0])
        group[0] += float(y)
        group[1] += 1
    blocks: list[list[float]] = []    # [sum of labels, count, lowest x, highest x, sum of x]
    for x in sorted(groups):
        # tied scores are one point: pooling decisions are made on their mean, never on a part of it
        blocks.append([groups[x][0], groups[x][1], x, x, x * groups[x][1]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, count, _, high, xs = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][3] = high
            blocks[-1][4] += xs
    if centered:
        centres = [(xs / count, total / count) for total, count, _, _, xs in blocks]
        ends = [(blocks[0][2], centres[0][1])] if blocks[0][2] < centres[0][0] else []
        tail = [(blocks[-1][3], centres[-1][1] + TIE_SLOPE)] if blocks[-1][3] > centres[-1][0] else []
        return CalibrationMap(tuple(ends + centres + tail))
    # A vanishing slope keeps the map strictly increasing, so a threshold can fall between any two
    # raw scores even inside a pooled block (where isotonic regression alone would be flat).
    points: list[tuple[float, float]] = []
    for total, count, low, high, _ in blocks:
        value = total / count
        points.append((low, value + TIE_SLOPE * low))
        if high != low:
            points.append((high, value + TIE_SLOPE * high))
    return CalibrationMap(tuple(points))


@dataclass(frozen=True)
class TierCalibration:
    """One tier's entry of a calibration file: its map, and the threshold the fit chose (if any)."""

    map: CalibrationMap
    threshold: float | None = None
    samples: int = 0


def load_calibration(path: Path) -> dict[str, TierCalibration]:
    """The entries of a calibration file by key (tier name); ValueError says what is wrong."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tiers"), dict):
        raise ValueError(f"{path} is not a calibration file (expected {{\"format\": \"{FORMAT}\", \"tiers\": {{...}}}})")
    out = {}
    for key, entry in data["tiers"].items():
        try:
            points = tuple((float(x), float(y)) for x, y in entry["points"])
            threshold = entry.get("threshold")
            out[key] = TierCalibration(CalibrationMap(points), None if threshold is None else float(threshold),
                                       int(entry.get("samples", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: tiers.{key}: bad entry ({type(e).__name__}: {e})") from None
    return out


def skipped_tiers(path: Path, pipeline: str) -> tuple[str, ...]:
    """The tiers a calibration file's fit skips for `pipeline` (`"skip": {pipeline: [tier, ...]}`), else ().

    An unreadable file skips nothing here: the verifier that reads it reports the problem.
    """
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return ()
    skip = data.get("skip") if isinstance(data, dict) else None
    tiers = skip.get(pipeline) if isinstance(skip, dict) else None
    return tuple(t for t in tiers if isinstance(t, str)) if isinstance(tiers, list) else ()


def dump_calibration(entries: Mapping[str, TierCalibration], meta: Mapping[str, Any] | None = None) -> bytes:
    """The JSON text of a calibration file (what `load_calibration` reads back)."""
    tiers = {
        key: {"points": [list(p) for p in entry.map.points], "threshold": entry.threshold, "samples": entry.samples}
        for key, entry in entries.items()
    }
    return orjson.dumps({"format": FORMAT, **(meta or {}), "tiers": tiers}, option=orjson.OPT_INDENT_2) + b"\n"


class CalibratedDecision:
    """A score verifier's decision: raw score -> calibrated P(correct) (per key) -> threshold.

    `calibration` is a file path relative to the config dir (None: the raw score is compared);
    `threshold` None takes the threshold the calibration file holds for the key.
    """

    def __init__(self, calibration: str | None, key: str | None, threshold: float | None, config_dir: Path):
        self.file = calibration
        self.key = key
        self.threshold = threshold
        self.entries: dict[str, TierCalibration] = {}
        if calibration is not None:
            self.entries = load_calibration(config_dir / calibration)   # ValueError: the caller names the key
        elif threshold is None:
            raise ValueError("a threshold is required without a calibration file")

    def problem(self, tier: str) -> str | None:
        """Why this decision cannot run on `tier` (no entry, no threshold), or None."""
        if self.file is None:
            return None
        key = self.key or tier
        entry = self.entries.get(key)
        if entry is None:
            return f"calibration {self.file} has no entry '{key}' (has: {', '.join(self.entries) or 'none'})"
        if self.threshold is None and entry.threshold is None:
            return f"no threshold: set `threshold` or fit one into {self.file} with `cascade calibrate`"
        return None

    def decide(self, raw: float, tier: str) -> tuple[bool, float, str]:
        """(passed, calibrated score, "0.912 (raw 0.9981) < 0.95"-style description) for the attempt's tier."""
        entry = self.entries.get(self.key or tier) if self.file is not None else None
        if self.file is not None and entry is None:
            return False, raw, f"no calibration entry '{self.key or tier}' in {self.file}"
        score = entry.map(raw) if entry is not None else raw
        threshold = self.threshold if self.threshold is not None else entry.threshold
        text = f"{score:.3f}" + (f" (raw {raw:.4f})" if entry is not None else "")
        passed = score >= threshold
        return passed, score, text + (f" >= {threshold:g}" if passed else f" < {threshold:g}")
