"""What a monthly check reports: a status against warn/fail thresholds, and the error when what a check
needs is missing. Shared by drift, the backtest and its coverage, the monitoring job and the report."""

from __future__ import annotations

import math

from spark_app.errors import UserError

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"


class MonitoringError(UserError):
    """Something monitoring needs is missing (a release's reference sample, a scores partition)."""


def status_of(value: float, warn: float, fail: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return SKIPPED
    if value >= fail:
        return FAIL
    return WARN if value >= warn else OK


def worst(*statuses: str) -> str:
    order = [SKIPPED, OK, WARN, FAIL]
    return max(statuses, key=order.index)
