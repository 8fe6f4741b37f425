import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_app.contract import FACTS_SPEC, features_spec, read_table, validate
from spark_app.generate import (
    FEATURE_CATEGORICAL,
    FEATURE_NUMERIC,
    SEGMENT_SHARE,
    SEGMENTS,
    PanelSpec,
    panel_table,
    uniform,
)
from spark_app.months import month_range

SMALL = PanelSpec(subscribers=400, months=14, start=dt.date(2023, 1, 1), seed=3)


def rows_of(df):
    return sorted(tuple(r) for r in df.collect())


@pytest.mark.parametrize("table", ["features", "facts"])
def test_same_seed_same_panel_whatever_the_partitioning(spark, table):
    two = panel_table(spark, SMALL, table, partitions=2)
    five = panel_table(spark, SMALL, table, partitions=5)
    assert two.count() > 0
    assert two.exceptAll(five).count() == 0 and five.exceptAll(two).count() == 0


def test_another_seed_gives_another_panel(spark):
    other = PanelSpec(SMALL.subscribers, SMALL.months, SMALL.start, seed=4)
    a = panel_table(spark, SMALL, "facts", 2).select("subscriber_id", "report_month", "data_gb")
    b = panel_table(spark, other, "facts", 2).select("subscriber_id", "report_month", "data_gb")
    assert a.exceptAll(b).count() > 0


@pytest.mark.parametrize("table", ["features", "facts"])
def test_no_value_depends_on_a_later_month(spark, table):
    """Cutting the panel short changes nothing before the cut: no feature looks into the future."""
    short = PanelSpec(SMALL.subscribers, 8, SMALL.start, SMALL.seed, acquisition_months=SMALL.months)
    cut = F.col("report_month") < F.lit(dt.date(2023, 9, 1))
    full = panel_table(spark, SMALL, table, 3).where(cut)
    truncated = panel_table(spark, short, table, 3)
    assert full.count() == truncated.count() > 0
    assert full.exceptAll(truncated).count() == 0


def test_uniform_draws_are_uniform_and_independent_of_batching():
    ids = np.arange(200_000)
    u = uniform(1, ids, 5, 2)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005
    np.testing.assert_array_equal(uniform(1, ids[1000:1010], 5, 2), u[1000:1010])
    assert np.corrcoef(u, uniform(1, ids, 5, 3))[0, 1] < 0.01


@pytest.fixture(scope="module")
def panel(spark, panel_dir):
    return read_table(spark, str(panel_dir / "features"), "features"), read_table(
        spark, str(panel_dir / "facts"), "facts"
    )


def test_generated_panel_meets_the_input_contract(panel, panel_spec):
    features, facts = panel
    from spark_app.months import add_months

    months = month_range(panel_spec.start, add_months(panel_spec.start, panel_spec.months - 1))
    validate(features, features_spec(FEATURE_NUMERIC, FEATURE_CATEGORICAL), months)
    validate(facts, FACTS_SPEC, months)
    assert features.select("report_month").distinct().count() == panel_spec.months


def test_features_and_facts_cover_the_same_subscriber_months(panel):
    features, facts = panel
    keys = ["subscriber_id", "report_month"]
    assert features.select(keys).exceptAll(facts.select(keys)).count() == 0
    assert facts.select(keys).exceptAll(features.select(keys)).count() == 0


def test_monthly_churn_is_in_a_telecom_band(panel):
    _, facts = panel
    nxt = facts.select(
        "subscriber_id", F.add_months("report_month", -1).alias("report_month"), F.lit(1).alias("next")
    )
    last = facts.agg(F.max("report_month")).first()[0]
    stats = (
        facts.where(F.col("report_month") < last)
        .join(nxt, ["subscriber_id", "report_month"], "left")
        .agg(F.avg(F.col("next").isNull().cast("double")).alias("churn"))
        .first()
    )
    assert 0.01 < stats["churn"] < 0.05


def test_segment_shares_follow_the_design(panel):
    features, _ = panel
    first = features.groupBy("subscriber_id").agg(F.first("segment").alias("segment"))
    counts = {r["segment"]: r["count"] for r in first.groupBy("segment").count().collect()}
    total = sum(counts.values())
    for segment, share in zip(SEGMENTS, SEGMENT_SHARE, strict=True):
        assert abs(counts[segment] / total - share) < 0.04


def test_dormant_and_idle_subscribers_exist(panel):
    _, facts = panel
    row = facts.agg(
        F.avg(((F.col("in_active_base") == 1) & (F.col("in_paid_base") == 0)).cast("double")).alias(
            "dormant"
        ),
        F.avg((F.col("in_active_base") == 0).cast("double")).alias("idle"),
    ).first()
    assert 0.002 < row["dormant"] < 0.1
    assert 0.001 < row["idle"] < 0.1


def test_data_usage_is_seasonal_and_grows(panel):
    _, facts = panel
    per_month = {
        r["report_month"]: r["gb_per_day"]
        for r in facts.where("in_paid_base = 1")
        .groupBy("report_month")
        .agg(F.avg(F.col("data_gb") / F.dayofmonth(F.last_day("report_month"))).alias("gb_per_day"))
        .collect()
    }
    aug, feb = per_month[dt.date(2023, 8, 1)], per_month[dt.date(2023, 2, 1)]
    assert aug > 1.1 * feb
    assert per_month[dt.date(2024, 2, 1)] > per_month[dt.date(2022, 2, 1)] * 1.2


def test_sac_is_paid_in_the_first_months(panel):
    features, facts = panel
    joined = facts.join(
        features.select("subscriber_id", "report_month", "tenure_months"), ["subscriber_id", "report_month"]
    )
    by_tenure = {
        r["early"]: r["sac"]
        for r in joined.groupBy((F.col("tenure_months") <= 2).alias("early"))
        .agg(F.avg("sac").alias("sac"))
        .collect()
    }
    assert by_tenure[True] > 10 * by_tenure[False]


def test_churn_depends_on_observable_features(panel):
    """Subscribers with falling usage or complaints leave more often: the signal the survival models learn."""
    features, facts = panel
    nxt = facts.select(
        "subscriber_id", F.add_months("report_month", -3).alias("report_month"), F.lit(1).alias("stay")
    )
    last = features.agg(F.max("report_month")).first()[0]
    rows = (
        features.where(F.col("report_month") <= F.add_months(F.lit(last), -3))
        .where("is_paid = 1")
        .join(nxt, ["subscriber_id", "report_month"], "left")
        .withColumn("gone", F.col("stay").isNull().cast("double"))
    )
    falling = rows.groupBy((F.col("data_trend_3m") < 0.7).alias("falling")).agg(F.avg("gone").alias("g"))
    rates = {r["falling"]: r["g"] for r in falling.collect()}
    assert rates[True] > 1.5 * rates[False]
    complaints = rows.groupBy((F.col("complaints_3m") > 0).alias("c")).agg(F.avg("gone").alias("g"))
    rates = {r["c"]: r["g"] for r in complaints.collect()}
    assert rates[True] > 1.15 * rates[False]


def test_generate_replaces_the_output_whole(spark, tmp_path):
    from spark_app.generate import generate_panel

    spec = PanelSpec(200, 3, dt.date(2024, 1, 1), seed=1)
    generate_panel(spark, str(tmp_path), spec, partitions=2)
    generate_panel(spark, str(tmp_path), PanelSpec(100, 2, dt.date(2024, 1, 1), seed=1), partitions=2)
    months = spark.read.parquet(str(tmp_path / "facts")).select("report_month").distinct().count()
    assert months == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts", "features"]
