"""Per-subscriber intervals for cumulative value and CLTV: split-conformal, Mondrian by forecast decile.

At training, held-out subscribers (the training set's `test` split, never fitted on) are forecast from one
feature month F0 exactly as scoring does, and their realized value over F0+1..F0+h is set beside the
forecast of it for every cumulative horizon h (value as the backtest defines it: the value formula of
spark_app.cltv on monthly amounts and base flags, undiscounted, a month without facts worth 0). Per h the
forecasts are cut into up to ten quantile bins, and per bin the residuals (realized − forecast) give the
interval's offsets with the finite-sample conformal ranks, so a new subscriber's interval covers its
realized value with probability ≥ the level whenever the new month is exchangeable with F0.

The table is stored in the release (release.json, `intervals`); scoring looks each subscriber's forecast
up in it (`IntervalTable.bounds`), monitoring checks the coverage every month against what happened.
docs/scoring.md explains the method, its assumptions and the measured coverage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_app.catalog import INTERVAL_LEVELS
from spark_app.cltv import ValueFormula

MAX_BINS = 10  # forecast deciles
MIN_BIN_ROWS = 50  # fewer residuals than this per bin → fewer bins
METHOD = "split-conformal, Mondrian by forecast decile per cumulative horizon"
SEGMENT_METHOD = "split-conformal, Mondrian by segment × forecast decile per cumulative horizon"


def cumulative_values(forecasts: Mapping[str, np.ndarray], formula: ValueFormula) -> np.ndarray:
    """(n, H) forecast value of months 1..h for every h: the backtest's `value_cum`, from (n, H) monthly
    forecasts (amounts in monthly units, survival probabilities)."""
    monthly = formula.monthly_value(lambda m: forecasts[m], set(forecasts))
    first = next(iter(forecasts.values()))
    return np.cumsum(np.broadcast_to(np.asarray(monthly, dtype=np.float64), first.shape), axis=1)


def conformal_offsets(residuals: np.ndarray, level: float) -> tuple[float, float]:
    """(lower, upper) residual quantiles at the finite-sample ranks ⌊(n+1)α/2⌋ and ⌈(n+1)(1−α/2)⌉ (1-based)
    of the sorted residuals, α = 1 − level; ranks outside 1..n are clamped to the extremes (then the
    guarantee weakens: a bin that small gets fewer bins upstream)."""
    r = np.sort(np.asarray(residuals, dtype=np.float64))
    n = len(r)
    if not n:
        return math.nan, math.nan
    alpha = 1.0 - level
    lo = math.floor((n + 1) * alpha / 2.0 + 1e-9)  # 1e-9: 1 − 0.8 is 0.19999999999999996 in floats
    hi = math.ceil((n + 1) * (1.0 - alpha / 2.0) - 1e-9)
    return float(r[min(max(lo, 1), n) - 1]), float(r[min(max(hi, 1), n) - 1])


@dataclass(frozen=True)
class HorizonBands:
    """One cumulative horizon: inner edges of the forecast bins and each bin's residual offsets."""

    edges: tuple[float, ...]  # len = bins − 1, ascending; bin = number of edges ≤ forecast
    rows: tuple[int, ...]  # residuals per bin
    lower: dict[float, tuple[float, ...]]  # level → offset per bin
    upper: dict[float, tuple[float, ...]]

    def bounds(self, forecast: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(forecast, dtype=np.float64)
        bin_ = np.searchsorted(np.asarray(self.edges), f, side="right")
        return f + np.asarray(self.lower[level])[bin_], f + np.asarray(self.upper[level])[bin_]

    def scaled(self, factor: float) -> HorizonBands:
        """The bands of a horizon `factor` times as long (edges and offsets scaled alike)."""
        return HorizonBands(
            edges=tuple(e * factor for e in self.edges),
            rows=self.rows,
            lower={lv: tuple(o * factor for o in v) for lv, v in self.lower.items()},
            upper={lv: tuple(o * factor for o in v) for lv, v in self.upper.items()},
        )


def fit_bands(forecast: np.ndarray, realized: np.ndarray, levels: tuple[float, ...]) -> HorizonBands:
    f = np.asarray(forecast, dtype=np.float64)
    residual = np.asarray(realized, dtype=np.float64) - f
    bins = max(1, min(MAX_BINS, len(f) // MIN_BIN_ROWS))
    edges = np.unique(np.quantile(f, np.linspace(0, 1, bins + 1)[1:-1])) if bins > 1 else np.array([])
    while len(edges):  # tied forecasts leave bins empty or small: merge each into its left neighbour
        which = np.searchsorted(edges, f, side="right")
        small = np.nonzero(np.bincount(which, minlength=len(edges) + 1) < MIN_BIN_ROWS)[0]
        if not len(small):
            break
        edges = np.delete(edges, max(small[0] - 1, 0))
    which = np.searchsorted(edges, f, side="right")
    parts = [residual[which == b] for b in range(len(edges) + 1)]
    offsets = {lv: [conformal_offsets(p, lv) for p in parts] for lv in levels}
    return HorizonBands(
        edges=tuple(float(e) for e in edges),
        rows=tuple(len(p) for p in parts),
        lower={lv: tuple(o[0] for o in offsets[lv]) for lv in levels},
        upper={lv: tuple(o[1] for o in offsets[lv]) for lv in levels},
    )


@dataclass(frozen=True)
class IntervalTable:
    """The release's intervals: bands for cumulative horizons 1..fitted (from F0 = `feature_month`).

    Horizons beyond `fitted` (a history shorter than 24 months after F0) take the bands of the last
    fitted horizon scaled by h / fitted: a subscriber's deviation from its forecast assumed to accrue
    at the same rate per month — stated, not verified, until monitoring has seen those horizons."""

    levels: tuple[float, ...]
    horizons: tuple[HorizonBands, ...]  # index h − 1
    feature_month: str  # the feature months the residuals come from, e.g. "2023-08..2025-12"
    subscribers: int  # residuals of the horizon with the most
    method: str = METHOD
    # Mondrian by segment too: each segment value with enough residuals at a horizon has its own bands
    # (None: too few there, the segment falls back to the overall bands of that horizon)
    segment_column: str | None = None
    segments: Mapping[str, tuple[HorizonBands | None, ...]] = field(default_factory=dict)

    @property
    def fitted(self) -> int:
        return len(self.horizons)

    def at(self, h: int, segment: str | None = None) -> HorizonBands:
        own = self.segments.get(segment) if segment is not None else None
        if own is not None:
            k = min(h, len(own))
            if own[k - 1] is not None:
                return own[k - 1] if h <= len(own) else own[k - 1].scaled(h / k)
        if h <= self.fitted:
            return self.horizons[h - 1]
        return self.horizons[-1].scaled(h / self.fitted)

    def bounds(
        self, h: int, forecast: np.ndarray, level: float, segment: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of each row at horizon h: its segment's bands where there are some, else the overall."""
        lower, upper = self.at(h).bounds(forecast, level)
        if segment is None or not self.segments:
            return lower, upper
        for value in self.segments:
            rows = segment == value
            if rows.any():
                lower[rows], upper[rows] = self.at(h, value).bounds(forecast[rows], level)
        return lower, upper

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "levels": list(self.levels),
            "feature_month": self.feature_month,
            "subscribers": self.subscribers,
            "horizons": [_bands_json(b) for b in self.horizons],
            "segment_column": self.segment_column,
            "segments": {
                value: [None if b is None else _bands_json(b) for b in bands]
                for value, bands in self.segments.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> IntervalTable | None:
        """None for a release trained before intervals existed."""
        if not data or not data.get("horizons"):
            return None
        levels = tuple(float(lv) for lv in data["levels"])
        return cls(
            levels=levels,
            horizons=tuple(_bands_from_json(h) for h in data["horizons"]),
            feature_month=str(data.get("feature_month", "")),
            subscribers=int(data.get("subscribers", 0)),
            method=str(data.get("method", METHOD)),
            segment_column=data.get("segment_column"),
            segments={
                str(value): tuple(None if b is None else _bands_from_json(b) for b in bands)
                for value, bands in (data.get("segments") or {}).items()
            },
        )


def _bands_json(b: HorizonBands) -> dict[str, Any]:
    return {
        "edges": list(b.edges),
        "rows": list(b.rows),
        "lower": {str(lv): list(v) for lv, v in b.lower.items()},
        "upper": {str(lv): list(v) for lv, v in b.upper.items()},
    }


def _bands_from_json(h: Mapping[str, Any]) -> HorizonBands:
    return HorizonBands(
        edges=tuple(float(e) for e in h["edges"]),
        rows=tuple(int(r) for r in h["rows"]),
        lower={float(lv): tuple(float(o) for o in v) for lv, v in h["lower"].items()},
        upper={float(lv): tuple(float(o) for o in v) for lv, v in h["upper"].items()},
    )


MIN_SEGMENT_ROWS = 1000  # residuals a segment needs at a horizon for bands of its own


def fit_intervals(
    forecast_cum: np.ndarray | Sequence[np.ndarray],
    realized_cum: np.ndarray | Sequence[np.ndarray],
    *,
    feature_month: str,
    levels: tuple[float, ...] = INTERVAL_LEVELS,
    segments: Sequence[np.ndarray] | None = None,
    segment_column: str | None = None,
    min_segment_rows: int = MIN_SEGMENT_ROWS,
) -> IntervalTable:
    """The table from forecast and realized cumulative values of held-out subscribers: (n, H) matrices,
    or per horizon h = 1..H one array each (pooled over several feature months, of different lengths).
    With `segments` (per horizon, each row's segment value) every segment with at least
    `min_segment_rows` residuals at a horizon gets its own forecast-decile bands there: a segment whose
    residuals differ (FMC, home internet) is covered at the level too, not only the base as a whole."""
    f = [np.asarray(x, dtype=np.float64) for x in _columns(forecast_cum)]
    a = [np.asarray(x, dtype=np.float64) for x in _columns(realized_cum)]
    if not f or len(f) != len(a) or any(len(x) != len(y) or not len(x) for x, y in zip(f, a, strict=True)):
        raise ValueError("forecast and realized values must pair up, non-empty, for every horizon 1..H")
    by_segment: dict[str, list[HorizonBands | None]] = {}
    if segments is not None:
        labels = [np.asarray(x).astype(str) for x in segments]
        values = sorted({v for x in labels for v in np.unique(x)})
        for value in values:
            bands: list[HorizonBands | None] = []
            for x, y, lab in zip(f, a, labels, strict=True):
                rows = lab == value
                enough = rows.sum() >= min_segment_rows
                bands.append(fit_bands(x[rows], y[rows], tuple(levels)) if enough else None)
            if any(b is not None for b in bands):
                by_segment[value] = bands
    return IntervalTable(
        levels=tuple(levels),
        horizons=tuple(fit_bands(x, y, tuple(levels)) for x, y in zip(f, a, strict=True)),
        feature_month=feature_month,
        subscribers=max(len(x) for x in f),
        method=SEGMENT_METHOD if by_segment else METHOD,
        segment_column=segment_column if by_segment else None,
        segments={k: tuple(v) for k, v in by_segment.items()},
    )


def _columns(values: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return [values[:, h] for h in range(values.shape[1])]
    return list(values)


def cltv_bounds(
    cltv: np.ndarray, value_24m: np.ndarray, lower_24m: np.ndarray, upper_24m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CLTV bounds from the 24-month ones. Months 25..60 cannot be observed yet, so the interval assumes
    that a subscriber's deviation from its forecast over 24 months goes on in proportion to its value:
    bounds = cltv + k × (24-month bound − value_24m), k = cltv / value_24m (60-month discounted value per
    unit of 24-month value) bounded to [0.5, 2.5], and k = 1 where either is not positive."""
    ok = (cltv > 0) & (value_24m > 0)
    k = np.clip(np.where(ok, cltv / np.where(ok, value_24m, 1.0), 1.0), 0.5, 2.5)
    return cltv + k * (lower_24m - value_24m), cltv + k * (upper_24m - value_24m)
