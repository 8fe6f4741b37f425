import dataclasses
import datetime as dt

import numpy as np
import pytest
from conftest import CATALOG
from pyspark.sql import Window
from pyspark.sql import functions as F

from spark_app.contract import TableSpec, facts_spec, features_spec, read_table, validate
from spark_app.generate import (
    CONVERGENT,
    FEATURE_CATEGORICAL,
    FEATURE_NUMERIC,
    PREPAID,
    PROFILES,
    SEGMENT_SHARE,
    SEGMENTS,
    PanelSpec,
    ProfileColumns,
    generate_panel,
    panel_table,
    uniform,
)
from spark_app.months import month_range

FACTS_SPEC = facts_spec(CATALOG)

SMALL = PanelSpec(subscribers=400, months=14, start=dt.date(2023, 1, 1), seed=3)


def rows_of(df):
    return sorted(tuple(r) for r in df.collect())


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("table", ["features", "facts"])
def test_same_seed_same_panel_whatever_the_partitioning(spark, table, profile):
    spec = dataclasses.replace(SMALL, profile=profile)
    two = panel_table(spark, spec, table, partitions=2)
    five = panel_table(spark, spec, table, partitions=5)
    assert two.count() > 0
    assert two.exceptAll(five).count() == 0 and five.exceptAll(two).count() == 0


def test_another_seed_gives_another_panel(spark):
    other = PanelSpec(SMALL.subscribers, SMALL.months, SMALL.start, seed=4)
    a = panel_table(spark, SMALL, "facts", 2).select("subscriber_id", "report_month", "data_gb")
    b = panel_table(spark, other, "facts", 2).select("subscriber_id", "report_month", "data_gb")
    assert a.exceptAll(b).count() > 0


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("table", ["features", "facts"])
def test_no_value_depends_on_a_later_month(spark, table, profile):
    """Cutting the panel short changes nothing before the cut: no feature looks into the future."""
    spec = dataclasses.replace(SMALL, profile=profile)
    short = dataclasses.replace(spec, months=8, acquisition_months=SMALL.months)
    cut = F.col("report_month") < F.lit(dt.date(2023, 9, 1))
    full = panel_table(spark, spec, table, 3).where(cut)
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


# ------------------------------------------------------------------ the prepaid profile
PREPAID_SPEC = PanelSpec(subscribers=2000, months=30, start=dt.date(2023, 1, 1), seed=5, profile="prepaid")
KEYS = ["subscriber_id", "report_month"]


def all_columns(columns: ProfileColumns) -> set[str]:
    return {*columns.numeric, *columns.categorical, *columns.facts}


@pytest.fixture(scope="module")
def prepaid(spark, tmp_path_factory):
    """A 2,000-subscriber prepaid panel written by `generate_panel`: (summary, features, facts)."""
    out = tmp_path_factory.mktemp("prepaid")
    summary = generate_panel(spark, str(out), PREPAID_SPEC, partitions=2)
    features = read_table(spark, str(out / "features"), "features").cache()
    facts = read_table(spark, str(out / "facts"), "facts").cache()
    yield summary, features, facts
    features.unpersist()
    facts.unpersist()


def test_prepaid_column_names_differ_from_the_convergent_ones_but_for_the_keys(prepaid):
    _, features, facts = prepaid
    assert not all_columns(PREPAID) & all_columns(CONVERGENT)
    convergent = {*CONVERGENT.numeric, *CONVERGENT.categorical, *CONVERGENT.facts, *KEYS}
    assert (set(features.columns) | set(facts.columns)) & convergent == set(KEYS)
    # Hive partitioning moves report_month last when read back
    assert features.columns == ["subscriber_id", *PREPAID.categorical, *PREPAID.numeric, "report_month"]
    assert facts.columns == ["subscriber_id", *PREPAID.facts, "report_month"]


def test_prepaid_panel_has_unique_keys_binary_flags_and_every_month(prepaid):
    _, features, facts = prepaid
    from spark_app.months import add_months, month_range

    months = month_range(PREPAID_SPEC.start, add_months(PREPAID_SPEC.start, PREPAID_SPEC.months - 1))
    validate(features, features_spec(PREPAID.numeric, PREPAID.categorical), months)
    columns = {"subscriber_id": "string", "report_month": "date", **dict.fromkeys(PREPAID.facts, "numeric")}
    validate(facts, TableSpec("facts", columns, PREPAID.fact_flags), months)
    assert dict(facts.dtypes)[PREPAID.paid_flag] == dict(facts.dtypes)[PREPAID.active_flag] == "int"
    assert features.select(KEYS).exceptAll(facts.select(KEYS)).count() == 0
    assert facts.select(KEYS).exceptAll(features.select(KEYS)).count() == 0


def test_prepaid_amounts_are_not_negative_but_for_a_few_slightly_negative_margins(prepaid):
    _, _, facts = prepaid
    row = facts.agg(
        *[F.min(c).alias(c) for c in PREPAID.fact_amounts],
        F.avg((F.col("margin_prepaid") < 0).cast("double")).alias("negative_share"),
        F.avg(F.when(F.col("margin_prepaid") < 0, F.col("margin_prepaid"))).alias("mean_negative"),
        F.avg(F.when(F.col("margin_prepaid") > 0, F.col("margin_prepaid"))).alias("mean_positive"),
    ).first()
    assert all(row[c] >= 0 for c in PREPAID.fact_amounts if c != "margin_prepaid")
    assert row["negative_share"] < 0.1  # months spending last month's credit: its cost, no revenue
    assert -0.1 * row["mean_positive"] < row["mean_negative"] < 0


def test_prepaid_margin_is_zero_in_about_half_the_base(prepaid):
    """Zero-inflated: most of what a model sees in a month without a top-up is an exact zero."""
    summary, _, facts = prepaid
    zero = facts.agg(F.avg((F.col("margin_prepaid") == 0).cast("double"))).first()[0]
    assert 0.35 < zero < 0.65
    assert summary["zero_margin_share"] == pytest.approx(zero)


def test_panel_summary_counts_the_profiles_paid_flag(prepaid):
    summary, _, facts = prepaid
    row = facts.agg(F.avg("is_paying").alias("paid"), F.avg("is_live").alias("live")).first()
    assert summary["paid_share"] == pytest.approx(row["paid"])
    assert summary["active_share"] == pytest.approx(row["live"])
    assert 0.3 < row["paid"] < row["live"] < 0.95
    assert 0.02 < summary["monthly_churn"] < 0.08


def test_prepaid_has_long_spells_in_the_base_without_revenue(prepaid):
    """Dormant SIMs: live (incoming calls) for three months or more in a row without any revenue."""
    _, features, facts = prepaid
    by_sub = Window.partitionBy("subscriber_id").orderBy("report_month")
    quiet = F.col("is_live") == 1
    quiet &= F.col("is_revenue_month") == 0
    rows = (
        features.select(*KEYS, "is_revenue_month")
        .join(facts.select(*KEYS, "is_live", "margin_prepaid"), KEYS)
        .withColumn("quiet", quiet.cast("int"))
        .withColumn("quiet_3m", F.sum("quiet").over(by_sub.rowsBetween(-2, 0)))
    )
    per_sub = rows.groupBy("subscriber_id").agg(F.max("quiet_3m").alias("longest"))
    share = per_sub.agg(F.avg((F.col("longest") >= 3).cast("double"))).first()[0]
    assert share > 0.05
    silent = rows.agg(F.avg((F.col("is_live") == 0).cast("double"))).first()[0]
    assert silent > 0.05  # and often no traffic at all, not even incoming


def test_prepaid_churn_is_mostly_silent(prepaid):
    """A SIM that leaves the base has mostly gone months without a top-up first."""
    _, features, _ = prepaid
    last_month = features.agg(F.max("report_month")).first()[0]
    last_rows = (
        features.groupBy("subscriber_id")
        .agg(
            F.max_by("months_since_last_topup", "report_month").alias("since"),
            F.max("report_month").alias("m"),
        )
        .where(F.col("m") < F.lit(last_month))
    )
    assert last_rows.agg(F.avg((F.col("since") >= 3).cast("double"))).first()[0] > 0.6


def test_prepaid_dealers_are_paid_in_the_first_two_months(prepaid):
    _, features, facts = prepaid
    joined = facts.join(features.select(*KEYS, "sim_age_months"), KEYS)
    by_age = {
        r["early"]: r["fee"]
        for r in joined.groupBy((F.col("sim_age_months") <= 1).alias("early"))
        .agg(F.avg("dealer_commission").alias("fee"))
        .collect()
    }
    assert by_age[True] > 1.0 and by_age[False] == 0.0


def test_prepaid_spend_has_a_heavy_right_tail(prepaid):
    _, features, _ = prepaid
    p50, p99 = features.where("topup_value_1m > 0").approxQuantile("topup_value_1m", [0.5, 0.99], 0.001)
    assert p99 > 8 * p50


def test_a_top_up_this_month_predicts_paying_next_month(prepaid):
    """What makes the prepaid panel learnable: recent top-ups and incoming calls predict the next month."""
    _, features, facts = prepaid
    nxt = facts.select(
        "subscriber_id",
        F.add_months("report_month", -1).alias("report_month"),
        F.col("is_paying").alias("next"),
    )
    last = facts.agg(F.max("report_month")).first()[0]
    rows = (
        features.where(F.col("report_month") < last)
        .join(nxt, KEYS, "left")
        .withColumn("next", F.coalesce("next", F.lit(0)).cast("double"))
    )
    rates = {
        r["t"]: r["p"]
        for r in rows.groupBy(F.col("is_revenue_month").alias("t")).agg(F.avg("next").alias("p")).collect()
    }
    assert rates[1] > 1.5 * rates[0]
    quiet = rows.where("months_since_last_topup >= 2")
    rates = {
        r["c"]: r["p"]
        for r in quiet.groupBy((F.col("voice_in_min_1m") > 0).alias("c"))
        .agg(F.avg("next").alias("p"))
        .collect()
    }
    assert rates[True] > 1.5 * rates[False]  # a SIM still called is resting, not abandoned


def test_profiles_are_the_cli_choices_and_unknown_ones_are_refused():
    from spark_app.cli import PANEL_PROFILES, build_parser

    assert set(PANEL_PROFILES) == set(PROFILES)
    args = build_parser().parse_args(["generate", "--out", "x", "--subscribers", "1", "--months", "1"])
    assert args.profile == "convergent"
    with pytest.raises(ValueError, match="unknown panel profile 'postpaid'"):
        PanelSpec(10, 2, dt.date(2024, 1, 1), profile="postpaid")
