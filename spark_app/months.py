"""Month arithmetic: every table is keyed by the first day of a month."""

from __future__ import annotations

import calendar
import datetime as dt
import re

import numpy as np

_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")


def parse_month(text: str) -> dt.date:
    """'2025-06' → date(2025, 6, 1). Exactly that form — ASCII digits, no day, no spaces — so that one month
    has one spelling: the Argo mutex and the lock of a month's partition key on it."""
    m = _MONTH.fullmatch(text)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"not a month: {text!r} (expected YYYY-MM, e.g. 2025-06)")
    return dt.date(int(m.group(1)), int(m.group(2)), 1)


def add_months(month: dt.date, n: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + n
    return dt.date(index // 12, index % 12 + 1, 1)


def month_range(first: dt.date, last: dt.date) -> list[dt.date]:
    """Inclusive list of month starts from `first` to `last`."""
    n = months_between(first, last)
    return [add_months(first, i) for i in range(n + 1)]


def months_between(earlier: dt.date, later: dt.date) -> int:
    return (later.year - earlier.year) * 12 + later.month - earlier.month


def days_in_month(month: dt.date) -> int:
    return calendar.monthrange(month.year, month.month)[1]


def fmt(month: dt.date) -> str:
    return month.strftime("%Y-%m")


def month_index(month: dt.date) -> int:
    """Months since year 0: makes month offsets plain integer arithmetic in numpy."""
    return month.year * 12 + month.month - 1


def days_in_month_index(index: np.ndarray) -> np.ndarray:
    """Vectorized days-in-month for month indices (see `month_index`)."""
    index = np.asarray(index, dtype=np.int64)
    year, month0 = np.divmod(index, 12)
    days = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)[month0]
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    return days + ((month0 == 1) & leap)


def describe_months(months: list[dt.date]) -> str:
    return "[" + ", ".join(fmt(m) for m in months) + "]"


def forecast_days(score_month_index: int, months: int) -> np.ndarray:
    """Days of the forecast months T+1..T+months: daily forecasts × days = monthly amounts."""
    return days_in_month_index(score_month_index + np.arange(1, months + 1)).astype(np.float64)
