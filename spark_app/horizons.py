"""Horizon rows: a subscriber's features of month T as the models see them h months ahead.

The one definition of the features the project derives (catalog.DERIVED_FEATURES): `horizon` = h,
`target_calendar_month` = month of year of T + h and `feature_calendar_month` = month of year of T. Three
shapes of the same thing: Spark columns for the training-set build, numpy arrays for the scoring batches,
a pandas frame for the pyfunc and the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F

from spark_app.catalog import CALENDAR_MONTH, FEATURE_CALENDAR_MONTH, HORIZON


def calendar_months(feature_month_index: int | np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Month of year (1..12) of T + h, T given as months.month_index."""
    return (np.asarray(feature_month_index) + np.asarray(horizons)) % 12 + 1


def target_calendar_months(score_month_index: int, months: int) -> np.ndarray:
    """Month of year of T+1..T+months."""
    return calendar_months(score_month_index, np.arange(1, months + 1))


def target_calendar_month(target_month: Column) -> Column:
    """The Spark column of the training-set build, from the target month T + h itself."""
    return F.month(target_month)


def feature_calendar_month(feature_month: Column) -> Column:
    """The Spark column of the training-set build: the month of year of the features' month T."""
    return F.month(feature_month)


def horizon_columns(subscribers: int, score_month_index: int, horizons: int) -> dict[str, np.ndarray]:
    """The derived columns of subscribers × horizons rows, subscriber-major, as float32 model inputs
    (the input columns are repeated with `np.repeat(…, horizons)` beside them)."""
    return {
        HORIZON: np.tile(np.arange(1, horizons + 1, dtype=np.float32), subscribers),
        CALENDAR_MONTH: np.tile(
            target_calendar_months(score_month_index, horizons).astype(np.float32), subscribers
        ),
        FEATURE_CALENDAR_MONTH: np.full(subscribers * horizons, score_month_index % 12 + 1, dtype=np.float32),
    }


def horizon_frame(
    features: pd.DataFrame, feature_month_index: int | np.ndarray, horizons: list[int] | np.ndarray
) -> pd.DataFrame:
    """Every row of `features` once per horizon (row-major), with the derived columns; a column `row`
    keeps the input row's position. `feature_month_index`: one month for all rows, or one per row."""
    n, hs = len(features), np.asarray(horizons, dtype=np.int64)
    rows = np.repeat(np.arange(n), len(hs))
    frame = features.iloc[rows].reset_index(drop=True)
    month = np.broadcast_to(np.asarray(feature_month_index, dtype=np.int64), (n,))[rows]
    frame[HORIZON] = np.tile(hs, n)
    frame[CALENDAR_MONTH] = calendar_months(month, frame[HORIZON].to_numpy())
    frame[FEATURE_CALENDAR_MONTH] = month % 12 + 1
    frame.insert(0, "row", rows)
    return frame
