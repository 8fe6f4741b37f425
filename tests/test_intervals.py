"""Intervals of cumulative value and CLTV: the conformal table on known residuals, its use in a scoring
batch, and the coverage the backtest measures — on numbers worked out by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from test_transforms import FORMULA, T_MONTH

from spark_app.backtest import VALUE_CUM, aggregate_backtest, backtest_rows, coverage_checks, forecast_rows
from spark_app.batch import VALUE_BOUNDS_H, BatchPlan, interval_columns
from spark_app.checks import FAIL, OK, SKIPPED, WARN
from spark_app.cltv import Extrapolation
from spark_app.config import MonitoringConfig, ScoringConfig
from spark_app.intervals import (
    IntervalTable,
    cltv_bounds,
    conformal_offsets,
    cumulative_values,
    fit_intervals,
)

D = dt.date


def test_known_residuals_give_the_exact_conformal_interval():
    # residuals 1..99 (n = 99), level 0.8: ranks ⌊100 · 0.1⌋ = 10 and ⌈100 · 0.9⌉ = 90
    assert conformal_offsets(np.arange(1, 100), 0.8) == (10.0, 90.0)
    assert conformal_offsets(np.arange(1, 100), 0.9) == (5.0, 95.0)
    assert conformal_offsets(np.arange(1, 100), 0.5) == (25.0, 75.0)
    # too few residuals for the level: clamped to the extremes
    assert conformal_offsets(np.array([3.0, 1.0, 2.0]), 0.95) == (1.0, 3.0)
    table = fit_intervals(np.zeros((99, 1)), np.arange(1, 100, dtype=float)[:, None], feature_month="2025-01")
    lower, upper = table.bounds(1, np.array([0.0, 5.0]), 0.8)
    np.testing.assert_array_equal(lower, [10.0, 15.0])
    np.testing.assert_array_equal(upper, [90.0, 95.0])


def test_each_forecast_decile_gets_its_own_offsets():
    # small forecasts err by ±1, large ones by ±100: one interval for all would be wrong for both
    rng = np.random.default_rng(0)
    small, large = np.full(500, 10.0), np.full(500, 1000.0)
    f = np.concatenate([small, large])
    a = f + np.concatenate([rng.uniform(-1, 1, 500), rng.uniform(-100, 100, 500)])
    table = fit_intervals(f[:, None], a[:, None], feature_month="2025-01")
    lower, upper = table.bounds(1, np.array([10.0, 1000.0]), 0.8)
    assert upper[0] - lower[0] == pytest.approx(1.6, abs=0.15)
    assert upper[1] - lower[1] == pytest.approx(160, abs=15)
    assert table.horizons[0].rows == (500, 500)  # tied forecasts: one edge, two bins


def test_table_round_trips_through_json_and_scales_beyond_the_fitted_horizons():
    f = np.tile(np.arange(100, dtype=float)[:, None], (1, 2))
    a = f + np.arange(100)[:, None] % 7 - 3.0
    table = fit_intervals(f, a, feature_month="2024-03")
    again = IntervalTable.from_json(table.to_json())
    assert again == table and again.fitted == 2
    assert IntervalTable.from_json(None) is None and IntervalTable.from_json({}) is None
    # h = 4 > 2 fitted: the h = 2 bands with edges and offsets doubled
    lo2, hi2 = table.bounds(2, np.array([50.0]), 0.8)
    lo4, hi4 = table.bounds(4, np.array([100.0]), 0.8)
    assert (lo4[0] - 100.0, hi4[0] - 100.0) == pytest.approx((2 * (lo2[0] - 50.0), 2 * (hi2[0] - 50.0)))


def test_cltv_bounds_carry_the_24_month_deviation_in_proportion():
    cltv, value = np.array([300.0, 300.0, -50.0, 1000.0]), np.array([150.0, 100.0, 20.0, 100.0])
    lower, upper = cltv_bounds(cltv, value, value - 10.0, value + 20.0)
    # k = cltv / value_24m: 2.0, 3.0 → 2.5 (cap), not positive → 1, 10 → 2.5
    np.testing.assert_allclose(lower, [280.0, 275.0, -60.0, 975.0])
    np.testing.assert_allclose(upper, [340.0, 350.0, -30.0, 1050.0])


def test_interval_level_must_be_a_stored_level():
    assert ScoringConfig(interval_level=0.9).interval_level == 0.9
    with pytest.raises(ValueError, match="interval_level"):
        ScoringConfig(interval_level=0.85)


def batch_plan(table: IntervalTable | None, detail: bool) -> BatchPlan:
    return BatchPlan(
        release_key="t", release_version=1, models=("paid", "sm"), amounts=frozenset({"sm"}),
        input_cols=(), categorical=(), horizons=24, score_month=T_MONTH, formula=FORMULA,
        extrapolation=Extrapolation(), detail=detail, intervals=table, interval_level=0.8,
    )  # fmt: skip


def test_a_scoring_batch_gets_value_and_cltv_bounds_from_the_release_table():
    n = 3
    forecasts = {"paid": np.full((n, 24), 0.5), "sm": np.tile(np.arange(1.0, 4.0)[:, None], (1, 24))}
    value = cumulative_values(forecasts, FORMULA)  # monthly value sm − 2 × paid = sm − 1
    np.testing.assert_allclose(value[:, 11], 12 * np.array([0.0, 1.0, 2.0]))
    rng = np.random.default_rng(1)
    f_cal = np.tile(np.arange(1, 25, dtype=float), (400, 1))
    table = fit_intervals(f_cal, f_cal + rng.normal(0, 1, f_cal.shape), feature_month="2024-01")
    cltv = np.array([10.0, 40.0, 80.0])
    cols = interval_columns(forecasts, cltv, batch_plan(table, detail=True))
    for k in (12, 24):
        lo, hi = table.bounds(k, value[:, k - 1], 0.8)
        np.testing.assert_array_equal(cols[f"value_{k}m"], value[:, k - 1])
        np.testing.assert_array_equal(cols[f"value_{k}m_lower"], lo)
        np.testing.assert_array_equal(cols[f"value_{k}m_upper"], hi)
    expected = cltv_bounds(cltv, value[:, 23], cols["value_24m_lower"], cols["value_24m_upper"])
    np.testing.assert_array_equal(cols["cltv_lower"], expected[0])
    assert cols[VALUE_BOUNDS_H[0]].shape == (n, 24)
    np.testing.assert_array_equal(cols[VALUE_BOUNDS_H[1]][:, 11], cols["value_12m_upper"])
    np.testing.assert_array_equal(cols["interval_level"], 0.8)
    # a release without a table: the values, NaN bounds and level
    bare = interval_columns(forecasts, cltv, batch_plan(None, detail=False))
    np.testing.assert_array_equal(bare["value_24m"], value[:, 23])
    assert np.isnan(bare["cltv_upper"]).all() and np.isnan(bare["interval_level"]).all()
    assert VALUE_BOUNDS_H[0] not in bare


def test_backtest_coverage_counts_realized_values_inside_the_bounds(spark):
    # four subscribers scored at T−1 with value bounds [5, 15] at h = 1; realized values at T below
    scores = spark.createDataFrame(
        [(s, D(2025, 3, 1), "1", flag, [1.0], [sm], [5.0], [15.0], 0.8)
         for s, flag, sm in [("a", False, 12.0), ("b", False, 12.0), ("c", True, 12.0), ("d", False, 12.0)]],
        "subscriber_id string, score_month date, release_version string, holdout boolean, "
        "paid_h array<double>, sm_h array<double>, value_cum_lower_h array<double>, "
        "value_cum_upper_h array<double>, interval_level double",
    )  # fmt: skip
    forecasts = forecast_rows(scores, T_MONTH, models=["paid", "sm"], formula=FORMULA, max_horizon=1)
    # realized value of T = sm − 2 × paid: a 10 (in), b 16 (out), c 5 (in: bounds inclusive), d none (0: out)
    realized = spark.createDataFrame(
        [("a", 1.0, 12.0, [10.0]), ("b", 1.0, 18.0, [16.0]), ("c", 1.0, 7.0, [5.0])],
        "subscriber_id string, a_paid double, a_sm double, a_value_by_k array<double>",
    )
    rows = backtest_rows(forecasts, realized, models=["paid", "sm"])
    table = aggregate_backtest(rows, models=["paid", "sm"], dimensions=[])
    value = table[(table["model_id"] == VALUE_CUM) & (table["dimension"] == "all")].set_index("population")
    assert value.loc["all", ["bounded", "covered"]].tolist() == [4, 2]
    assert value.loc["all", "coverage"] == 0.5 and value.loc["holdout", "coverage"] == 1.0
    assert value.loc["rest", "coverage"] == pytest.approx(1 / 3)
    assert value.loc["all", "interval_width_mean"] == 10.0 and value.loc["all", "interval_level"] == 0.8
    assert table.loc[table["model_id"] == "sm", "coverage"].isna().all()  # amounts have no interval


def test_coverage_checks_judge_the_gap_to_the_level():
    base = {"score_month": D(2025, 3, 1), "population": "all", "dimension": "all", "value": "all",
            "model_id": VALUE_CUM, "interval_level": 0.8}  # fmt: skip
    backtest = pd.DataFrame(
        [
            {**base, "horizon": 1, "bounded": 1000, "coverage": 0.79},  # ok
            {**base, "horizon": 2, "bounded": 1000, "coverage": 0.73},  # 7 points off: warn
            {**base, "horizon": 3, "bounded": 1000, "coverage": 0.95},  # 15 points off: fail
            {**base, "horizon": 4, "bounded": 10, "coverage": 0.2},  # too few to judge
            {**base, "horizon": 5, "bounded": 1000, "coverage": 0.2, "dimension": "segment"},  # shown only
        ]
    )
    got = coverage_checks(backtest, MonitoringConfig(coverage_min_rows=100))
    assert got["status"].tolist() == [OK, WARN, FAIL, SKIPPED]
    assert got["gap"].round(2).tolist() == [-0.01, -0.07, 0.15, -0.6]
    with pytest.raises(ValueError, match="coverage_fail"):
        MonitoringConfig(coverage_warn=0.1, coverage_fail=0.05)


def test_a_segment_with_its_own_residuals_gets_its_own_bands_and_a_small_one_falls_back():
    """Mondrian by segment: 'fmc' deviates ten times more than 'mobile'; with one pooled table its interval
    would under-cover it and over-cover mobile. 'tiny' has too few residuals and uses the overall bands."""
    rng = np.random.default_rng(3)
    n = 4000
    segment = np.array(["mobile"] * 3000 + ["fmc"] * 950 + ["tiny"] * 50)
    forecast = rng.uniform(10, 20, n)
    realized = forecast + rng.normal(0, np.where(segment == "fmc", 10.0, 1.0))
    table = fit_intervals(forecast[:, None], realized[:, None], feature_month="2025-01",
                          segments=[segment], segment_column="segment", min_segment_rows=500)  # fmt: skip
    assert table.segment_column == "segment" and set(table.segments) == {"mobile", "fmc"}
    lower, upper = table.bounds(1, forecast, 0.8, segment)
    inside = (realized >= lower) & (realized <= upper)
    for value in ("mobile", "fmc"):
        assert abs(inside[segment == value].mean() - 0.8) < 0.04, value
    overall_l, _overall_u = table.bounds(1, forecast, 0.8)
    tiny = segment == "tiny"
    np.testing.assert_array_equal(lower[tiny], overall_l[tiny])
    again = IntervalTable.from_json(table.to_json())
    np.testing.assert_array_equal(again.bounds(1, forecast, 0.8, segment)[0], lower)
    # a horizon beyond the fitted ones scales the segment's own bands
    np.testing.assert_allclose(table.at(2, "fmc").upper[0.8], np.asarray(table.at(1, "fmc").upper[0.8]) * 2)
