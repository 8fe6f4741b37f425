"""The season of each amount, from the base-wide monthly means of the facts, so the trees need not learn it.

Gradient-boosted trees stopped early on a per-row loss spend their splits on subscribers, not on a season
that moves the base's mean by ±10 %: on the 1M prepaid panel the margin regressor's own error by target
calendar month ran from −7.5 % (January) to +10.7 % (December) on its training rows, and a calendar-month
factor fitted on `val` (2,300 rows a month) was as noisy as the season it was to correct. The base's mean
of each amount per month over the history before the OOT month (up to `training.season_months`) gives
each calendar month's index to a fraction of a percent, separated from the trend by one least-squares fit

    log mean(t) = a + b · t + s[month of t],   Σ s = 0 over the calendar months present,

and the regressors are fitted on target / exp(s) and forecast × exp(s): the trees see a target without
season, the release carries the season. A calendar month the history never had gets index 1. The trend
`b` is recorded (the release description shows it) but not extrapolated: the lagged features carry the
level, and the per-horizon calibration the rest.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_app.calibration import FACTOR_BOUNDS

log = logging.getLogger(__name__)

MIN_MONTHS = 12  # fewer months cannot tell a season from noise and trend
MIN_TREND_MONTHS = 13  # the trend is fitted once a calendar month repeats


@dataclass(frozen=True)
class SeasonalIndex:
    """Calendar month (1..12) → multiplicative index (geometric mean 1 over the months present)."""

    factors: Mapping[int, float]
    trend_per_year: float = 0.0  # exp(12 b) − 1, for the description; not applied
    months: int = 0  # history months it was fitted on

    def apply(self, calendar_months: np.ndarray) -> np.ndarray:
        """The index of each row's target calendar month (1 where unknown or not in the history)."""
        table = np.ones(13)
        for month, factor in self.factors.items():
            table[int(month)] = factor
        m = np.nan_to_num(np.asarray(calendar_months, dtype=np.float64), nan=0.0).astype(np.int64)
        return table[np.clip(m, 0, 12)]

    def describe(self) -> str:
        low = min(self.factors, key=self.factors.__getitem__)
        high = max(self.factors, key=self.factors.__getitem__)
        return (
            f"{self.months} months of facts: lowest {dt.date(2000, low, 1):%B} {self.factors[low]:.3f}, "
            f"highest {dt.date(2000, high, 1):%B} {self.factors[high]:.3f}, "
            f"trend {self.trend_per_year:+.1%} a year"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "factors": {str(k): v for k, v in self.factors.items()},
            "trend_per_year": self.trend_per_year,
            "months": self.months,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeasonalIndex:
        return cls(
            {int(k): float(v) for k, v in data["factors"].items()},
            float(data.get("trend_per_year", 0.0)),
            int(data.get("months", 0)),
        )


def fit_seasonal_index(months: list[dt.date], means: np.ndarray) -> SeasonalIndex | None:
    """The least-squares season (and trend) of a monthly series of base means; None under MIN_MONTHS
    positive months."""
    means = np.asarray(means, dtype=np.float64)
    ok = np.isfinite(means) & (means > 0)
    if ok.sum() < MIN_MONTHS:
        return None
    t = np.array([m.year * 12 + m.month - 1 for m in months], dtype=np.float64)[ok]
    calendar = np.array([m.month for m in months])[ok]
    present = sorted(set(int(c) for c in calendar))
    columns = [np.ones(len(t))]
    if len(t) >= MIN_TREND_MONTHS:
        columns.append(t - t.mean())
    last = present[-1]  # sum-to-zero contrasts: the last month's effect is minus the others'
    columns += [(calendar == c).astype(float) - (calendar == last).astype(float) for c in present[:-1]]
    design = np.column_stack(columns)
    coef, *_ = np.linalg.lstsq(design, np.log(means[ok]), rcond=None)
    trend = float(coef[1]) if len(t) >= MIN_TREND_MONTHS else 0.0
    effects = coef[len(columns) - len(present) + 1 :]
    s = np.append(effects, -effects.sum())
    low, high = FACTOR_BOUNDS
    factors = {c: float(np.clip(np.exp(v), low, high)) for c, v in zip(present, s, strict=True)}
    return SeasonalIndex(factors, float(np.expm1(12 * trend)), int(ok.sum()))


def monthly_means(facts: DataFrame, amounts: Mapping[str, str]) -> DataFrame:
    """Per report_month: the rows of the facts (the base) and Σ of each amount in daily units (the unit
    the regressors are trained in), as `rows` and one column per model id."""
    from spark_app.contract import MONTH  # here: a scoring worker imports this module, not the contract

    days = F.dayofmonth(F.last_day(F.col(MONTH))).cast("double")
    sums = [
        F.sum(F.coalesce(F.col(fact).cast("double"), F.lit(0.0)) / days).alias(m)
        for m, fact in amounts.items()
    ]
    return facts.groupBy(MONTH).agg(F.count(F.lit(1)).alias("rows"), *sums).orderBy(MONTH)


def fit_seasons(history: Mapping[str, Any] | None, model_ids: list[str]) -> dict[str, SeasonalIndex]:
    """Seasonal indices of `model_ids` from a training set's `fact_history` (manifest), where fitable."""
    if not history or not history.get("months"):
        return {}
    months = [dt.date.fromisoformat(m) for m in history["months"]]
    rows = np.asarray(history["rows"], dtype=np.float64)
    out: dict[str, SeasonalIndex] = {}
    for model_id in model_ids:
        sums = history.get("sums", {}).get(model_id)
        if sums is None:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            index = fit_seasonal_index(months, np.asarray(sums, dtype=np.float64) / rows)
        if index is not None:
            out[model_id] = index
    return out
