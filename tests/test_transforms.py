"""The Spark transforms one by one, on DataFrames of a few rows built here, against rows worked out by
hand (chispa's assert_df_equality): a failure names the transform, not the generated panel."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_app.backtest import VALUE_CUM, backtest_rows, forecast_rows, realized_rows, tenure_cohort
from spark_app.catalog import ModelCatalog, ModelEntry
from spark_app.cltv import ValueFormula, ValueTerm
from spark_app.contract import key_problem_counts
from spark_app.dataset import DatasetPlan, with_split, with_targets
from spark_app.horizons import target_calendar_month

D = dt.date
T_MONTH = D(2025, 4, 1)
# one amount (margin, +1 per unit) carried by `paid`, and an overhead of 2 per month in the paid base
FORMULA = ValueFormula(
    terms=(ValueTerm("sm", "margin", 1.0, 1.0, "paid"),),
    survival=("paid",),
    nesting=(),
    overhead_base="paid",
    overhead_per_month=2.0,
    annual_discount_rate=0.0,
)
CATALOG = ModelCatalog(
    (
        ModelEntry("paid", "classification", "in_paid_base", ("tenure",)),
        ModelEntry("sm", "regression", "sm_fact", ("tenure",), carrier="paid"),
    )
)


def equal(actual, expected, **kw) -> None:
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_column_order=True, **kw)


def test_target_calendar_month_is_the_month_of_the_target(spark):
    df = spark.createDataFrame([(D(2025, 12, 1),), (D(2026, 1, 1),)], "target_month date")
    got = df.withColumn("target_calendar_month", target_calendar_month(F.col("target_month")))
    expected = spark.createDataFrame(
        [(D(2025, 12, 1), 12), (D(2026, 1, 1), 1)], "target_month date, target_calendar_month int"
    )
    equal(got, expected)


def test_with_targets_daily_amounts_and_strict_flags(spark):
    rows = [
        ("a", D(2025, 2, 1), 1.0, 28.0),
        ("b", D(2025, 2, 1), None, None),
        ("c", D(2025, 3, 1), 2.0, 62.0),
    ]
    df = spark.createDataFrame(
        rows, "subscriber_id string, target_month date, in_paid_base double, sm double"
    )
    got = with_targets(df, targets={"y_paid": "in_paid_base", "y_sm": "sm"}, flags=("in_paid_base",))
    expected = spark.createDataFrame(
        [(*r, y_paid, y_sm) for r, y_paid, y_sm in zip(rows, (1, 0, -1), (1.0, 0.0, 2.0), strict=True)],
        "subscriber_id string, target_month date, in_paid_base double, sm double, y_paid int, y_sm double",
    )
    equal(got, expected, ignore_nullable=True)


def test_with_split_puts_the_last_target_month_out_of_time(spark):
    plan = DatasetPlan(
        target_months=(D(2025, 3, 1), D(2025, 4, 1)), horizons=(1, 2), salt="s", sample_rate=1.0,
        population="base", val_share=0.1, test_share=0.1, train_reg_share=0.5,
    )  # fmt: skip
    ids = [f"s{i}" for i in range(200)]
    df = spark.createDataFrame(
        [(i, m) for i in ids for m in (D(2025, 3, 1), D(2025, 4, 1))],
        "subscriber_id string, target_month date",
    )
    got = with_split(df, plan=plan)
    oot = got.where(F.col("target_month") == F.lit(D(2025, 4, 1)))
    equal(oot.select("subscriber_id", "split"), oot.select("subscriber_id", F.lit("oot").alias("split")),
          ignore_nullable=True)  # fmt: skip
    earlier = {r["split"] for r in got.where(F.col("target_month") < F.lit(D(2025, 4, 1))).collect()}
    assert earlier == {"train_surv", "train_reg", "val", "test"}
    again = with_split(df, plan=plan)
    equal(again, got)  # the split is a hash of the id: the same every run


def test_tenure_cohort_labels(spark):
    df = spark.createDataFrame([(0,), (5,), (6,), (47,), (48,), (None,)], "tenure int")
    got = df.select("tenure", tenure_cohort("tenure", [0, 6, 12, 48]).alias("cohort"))
    expected = spark.createDataFrame(
        [(0, "0-5"), (5, "0-5"), (6, "6-11"), (47, "12-47"), (48, "48+"), (None, "<null>")],
        "tenure int, cohort string",
    )
    equal(got, expected, ignore_nullable=True)


def test_forecast_rows_take_element_h_and_sum_the_value_since_the_forecast(spark):
    scores = spark.createDataFrame(
        [
            ("a", D(2025, 3, 1), [0.9, 0.8, 0.7], [10.0, 20.0, 30.0]),  # h = 1
            ("a", D(2025, 1, 1), [0.9, 0.8, 0.7], [10.0, 20.0, 30.0]),  # h = 3
            ("b", D(2024, 1, 1), [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]),  # h = 15: beyond max_horizon 3
        ],
        "subscriber_id string, score_month date, paid_h array<double>, sm_h array<double>",
    )
    got = forecast_rows(scores, T_MONTH, models=["paid", "sm"], formula=FORMULA, max_horizon=3)
    # value of a month = sm − 2 × paid: 10 − 1.8 = 8.2, 20 − 1.6 = 18.4, 30 − 1.4 = 28.6
    expected = spark.createDataFrame(
        [
            ("a", D(2025, 3, 1), 1, 0.9, 10.0, 8.2, None, None),
            ("a", D(2025, 1, 1), 3, 0.7, 30.0, 8.2 + 18.4 + 28.6, None, None),
        ],
        "subscriber_id string, score_month date, horizon int, f_paid double, f_sm double, "
        "f_value_cum double, f_value_cum_lower double, f_value_cum_upper double",  # no bounds: null
    )
    equal(got, expected, ignore_nullable=True, allow_nan_equality=True)


def test_realized_rows_and_the_join_count_a_missing_subscriber_as_out_of_base(spark):
    facts = spark.createDataFrame(
        [
            ("a", D(2025, 4, 1), 1.0, 12.0),  # T: value 12 − 2 = 10
            ("a", D(2025, 3, 1), 1.0, 7.0),  # T−1: value 5
            ("a", D(2025, 1, 1), 0.0, 3.0),  # T−3: value 3 (outside max_horizon 2 below)
        ],
        "subscriber_id string, report_month date, in_paid_base double, sm_fact double",
    )
    realized = realized_rows(facts, T_MONTH, models=["paid", "sm"], catalog=CATALOG, formula=FORMULA,
                             max_horizon=2)  # fmt: skip
    expected = spark.createDataFrame(
        [("a", 1.0, 12.0, [10.0, 15.0])],
        "subscriber_id string, a_paid double, a_sm double, a_value_by_k array<double>",
    )
    equal(realized, expected, ignore_nullable=True)

    forecasts = spark.createDataFrame(
        [("a", 2, 0.8, 20.0, 30.0), ("z", 1, 0.5, 5.0, 4.0)],
        "subscriber_id string, horizon int, f_paid double, f_sm double, f_value_cum double",
    )
    got = backtest_rows(forecasts, realized, models=["paid", "sm"])
    expected = spark.createDataFrame(
        [("a", 2, 0.8, 20.0, 30.0, 1.0, 12.0, 15.0), ("z", 1, 0.5, 5.0, 4.0, 0.0, 0.0, 0.0)],
        "subscriber_id string, horizon int, f_paid double, f_sm double, f_value_cum double, "
        f"a_paid double, a_sm double, a_{VALUE_CUM} double",
    )
    equal(got, expected, ignore_nullable=True)


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([("a", 1), ("b", 0)], {}),
        ([("a", 1), ("a", 0), (None, 1)], {"repeated ids": 1, "null ids": 1}),
        ([("a", -1), ("b", 1)], {"y_paid outside 0/1": 1}),
    ],
)
def test_key_problem_counts(spark, rows, expected):
    df = spark.createDataFrame(rows, "subscriber_id string, y_paid int")
    assert key_problem_counts(df, ["y_paid"]) == expected


def test_schema_of_the_transforms_is_stable(spark):
    """forecast_rows keeps the score columns it does not consume (holdout, breakdowns) for the
    aggregation, and drops the arrays."""
    scores = spark.createDataFrame(
        [("a", D(2025, 3, 1), True, "north", [0.9], [10.0])],
        "subscriber_id string, score_month date, holdout boolean, region string, paid_h array<double>, "
        "sm_h array<double>",
    )
    got = forecast_rows(scores, T_MONTH, models=["paid", "sm"], formula=FORMULA, max_horizon=1)
    assert got.columns == [
        "subscriber_id", "score_month", "holdout", "region", "horizon", "f_paid", "f_sm", f"f_{VALUE_CUM}",
        f"f_{VALUE_CUM}_lower", f"f_{VALUE_CUM}_upper",
    ]  # fmt: skip
    assert isinstance(got.schema["f_paid"].dataType, T.DoubleType)
