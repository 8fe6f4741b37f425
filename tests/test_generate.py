import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CATALOG
from pyspark.sql import Window
from pyspark.sql import functions as F

from spark_app.contract import TableSpec, facts_spec, features_spec, read_table, validate
from spark_app.generate import (
    BURN_IN,
    CONVERGENT,
    DISCONNECT_AFTER,
    FEATURE_CATEGORICAL,
    FEATURE_NUMERIC,
    HOUSEHOLD_LINES,
    MAX_NUMBER_CHANGES,
    PREPAID,
    PROFILES,
    SEGMENT_SHARE,
    SEGMENTS,
    SIMULATORS,
    PanelSpec,
    ProfileColumns,
    generate_panel,
    panel_rows,
    panel_table,
    replay_with_effect,
    uniform,
)
from spark_app.months import add_months, month_range, months_between
from spark_app.parties import continuation_roots, validate_parties

FACTS_SPEC = facts_spec(CATALOG)

SMALL = PanelSpec(subscribers=400, months=14, start=dt.date(2023, 1, 1), seed=3)


def rows_of(df):
    return sorted(tuple(r) for r in df.collect())


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("table", ["features", "facts", "parties"])
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
@pytest.mark.parametrize("table", ["features", "facts", "parties"])
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
    """Subscribers with falling usage or complaints leave more often: the signal the survival models learn.
    Leaving is the customer's (a number change is no exit: the customer carries on under its new id)."""
    features, facts = panel
    customer = F.substring("subscriber_id", 1, 10).alias("customer")  # what `customers` reads in pandas
    nxt = facts.select(
        customer, F.add_months("report_month", -3).alias("report_month"), F.lit(1).alias("stay")
    ).distinct()
    last = features.agg(F.max("report_month")).first()[0]
    rows = (
        features.where(F.col("report_month") <= F.add_months(F.lit(last), -3))
        .where("is_paid = 1")
        .withColumn("customer", customer)
        .join(nxt, ["customer", "report_month"], "left")
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts", "features", "parties"]
    (tmp_path / "_effect.json").write_text("{}")  # a replay's truth: void for the new panel
    smaller = PanelSpec(100, 2, dt.date(2024, 1, 1), seed=1, parties=False)
    generate_panel(spark, str(tmp_path), smaller, partitions=2)
    months = spark.read.parquet(str(tmp_path / "facts")).select("report_month").distinct().count()
    assert months == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts", "features"]  # no parties of another panel


# ------------------------------------------------------------------ the prepaid profile
PREPAID_SPEC = PanelSpec(subscribers=2000, months=30, start=dt.date(2023, 1, 1), seed=5, profile="prepaid")
KEYS = ["subscriber_id", "report_month"]


def all_columns(columns: ProfileColumns) -> set[str]:
    return {*columns.numeric, *columns.categorical, *columns.facts}


@pytest.fixture(scope="module")
def prepaid_dir(spark, tmp_path_factory):
    """A 2,000-subscriber prepaid panel written by `generate_panel`: (its directory, its summary)."""
    out = tmp_path_factory.mktemp("prepaid")
    return out, generate_panel(spark, str(out), PREPAID_SPEC, partitions=2)


@pytest.fixture(scope="module")
def prepaid(spark, prepaid_dir):
    """The prepaid panel read back: (summary, features, facts)."""
    out, summary = prepaid_dir
    features = read_table(spark, str(out / "features"), "features").cache()
    facts = read_table(spark, str(out / "facts"), "facts").cache()
    yield summary, features, facts
    features.unpersist()
    facts.unpersist()


def test_prepaid_column_names_differ_from_the_convergent_ones_but_for_the_keys_and_consent(prepaid):
    _, features, facts = prepaid
    assert all_columns(PREPAID) & all_columns(CONVERGENT) == {"marketing_consent"}  # what campaigns select on
    convergent = {*CONVERGENT.numeric, *CONVERGENT.categorical, *CONVERGENT.facts, *KEYS}
    assert (set(features.columns) | set(facts.columns)) & convergent == {*KEYS, "marketing_consent"}
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
    assert args.profile == "convergent" and args.parties is True
    without = ["generate", "--out", "x", "--subscribers", "1", "--months", "1", "--no-parties"]
    assert build_parser().parse_args(without).parties is False
    with pytest.raises(ValueError, match="unknown panel profile 'postpaid'"):
        PanelSpec(10, 2, dt.date(2024, 1, 1), profile="postpaid")


# ------------------------------------------------------------------ what retention campaigns need
CAMPAIGN_COLUMNS = {
    "convergent": ("marketing_consent", "has_personal_manager"),
    "prepaid": ("marketing_consent",),
}
DIGEST_SPEC = PanelSpec(subscribers=300, months=14, start=dt.date(2023, 1, 1), seed=3, parties=False)
# existing_columns_digest(DIGEST_SPEC) as computed by running generate.py before the campaign columns were
# added (2026-12, convergent and prepaid): those columns must keep their values for the same seed
DIGEST_BEFORE_CAMPAIGN_COLUMNS = {"convergent": "76432485d36a9a36", "prepaid": "f2255a883f9a8036"}
# existing_columns_digest(DIGEST_SPEC, skip=()) and spark_digest(SPARK_DIGEST_SPEC) as computed by running
# generate.py before persons and households existed (issue 22 step 6): parties=False is that panel
DIGEST_BEFORE_PARTIES = {"convergent": "8ca7f38291eace5f", "prepaid": "0160e0904dfc13d4"}
SPARK_DIGEST_SPEC = PanelSpec(subscribers=200, months=6, start=dt.date(2023, 1, 1), seed=3, parties=False)
SPARK_DIGEST_BEFORE_PARTIES = {"convergent": "62240a0827a429a3", "prepaid": "3ac865eccec0024b"}


def existing_columns_digest(spec: PanelSpec, skip: tuple[str, ...] | None = None) -> str:
    """sha256 over both tables' rows of every column but `skip` (default: the campaign ones), floats to 6
    decimals."""
    skip = CAMPAIGN_COLUMNS[spec.profile] if skip is None else skip
    sim = SIMULATORS[spec.profile].simulate(np.arange(spec.subscribers, dtype=np.int64), spec)
    digest = hashlib.sha256()
    for table in ("features", "facts"):
        rows = panel_rows(sim, spec, table)
        for name in rows.columns:
            if name in skip:
                continue
            values = rows[name].to_numpy()
            if values.dtype.kind == "f":
                values = np.round(values, 6) + 0.0  # + 0.0: no -0.0
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_campaign_columns_left_every_other_column_as_it_was(profile):
    spec = dataclasses.replace(DIGEST_SPEC, profile=profile)
    assert existing_columns_digest(spec) == DIGEST_BEFORE_CAMPAIGN_COLUMNS[profile]


def spark_digest(spark, spec: PanelSpec) -> str:
    """sha256 over both tables as Spark yields them (types, then rows sorted by key, floats to 6 decimals)."""
    digest = hashlib.sha256()
    for table in ("features", "facts"):
        df = panel_table(spark, spec, table, 2)
        digest.update(str(df.dtypes).encode())
        for r in sorted(df.collect(), key=lambda r: (r[0], r[1])):
            digest.update(repr(tuple(round(v, 6) if isinstance(v, float) else v for v in r)).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_without_parties_the_panel_is_the_one_before_them_bit_for_bit(spark, profile):
    """parties=False runs none of the household, joint-exit and number-change code: every column of both
    tables, and what Spark makes of them (ids, labels, types), are as generate.py wrote them before."""
    assert (
        existing_columns_digest(dataclasses.replace(DIGEST_SPEC, profile=profile), skip=())
        == (DIGEST_BEFORE_PARTIES[profile])
    )
    spec = dataclasses.replace(SPARK_DIGEST_SPEC, profile=profile)
    assert spark_digest(spark, spec) == SPARK_DIGEST_BEFORE_PARTIES[profile]


@pytest.mark.parametrize("parties", [False, True])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_a_churn_factor_of_one_is_the_simulation_without_one(profile, parties):
    spec = dataclasses.replace(DIGEST_SPEC, profile=profile, parties=parties)
    simulate = SIMULATORS[profile].simulate
    ids = np.arange(spec.subscribers, dtype=np.int64)
    plain = simulate(ids, spec)
    ones = simulate(ids, spec, np.ones((len(ids), BURN_IN + spec.months)))
    assert plain.keys() == ones.keys()
    for name, values in plain.items():
        np.testing.assert_array_equal(ones[name], values, err_msg=name)
    with pytest.raises(ValueError, match="does not broadcast"):
        simulate(ids, spec, np.ones(spec.months))


def campaign_flags(features, profile: str, attributes: list[str]) -> pd.DataFrame:
    """One row per subscriber with its campaign flags and `attributes`, each one value over all its rows."""
    cols = [*CAMPAIGN_COLUMNS[profile], *attributes]
    per_sub = (
        features.groupBy("subscriber_id")
        .agg(*[F.countDistinct(c).alias(f"n_{c}") for c in cols], *[F.first(c).alias(c) for c in cols])
        .toPandas()
    )
    assert (per_sub[[f"n_{c}" for c in cols]] == 1).all().all(), "a campaign flag changed over time"
    for c in CAMPAIGN_COLUMNS[profile]:
        assert dict(features.dtypes)[c] == "int"
        assert set(per_sub[c]) <= {0, 1}
    return per_sub


def test_convergent_consent_and_personal_manager_are_static_flags_in_their_shares(panel):
    features, _ = panel
    subs = campaign_flags(features, "convergent", ["segment", "tariff", "device_type"])
    assert 0.76 < subs["marketing_consent"].mean() < 0.84
    by_phone = subs.groupby(subs["device_type"] == "feature_phone")["marketing_consent"].mean()
    assert by_phone[True] < by_phone[False] - 0.1
    managed = subs[subs["has_personal_manager"] == 1]
    assert 0.17 < len(managed) / len(subs) < 0.24
    assert managed["segment"].isin(["fmc", "fttb"]).mean() > 0.6
    assert (managed["segment"].isin(["fmc", "fttb"]) | managed["tariff"].isin(["M_L", "M_UNL"])).mean() > 0.85


def test_prepaid_consent_is_a_static_flag_lower_on_basic_handsets(prepaid):
    _, features, _ = prepaid
    subs = campaign_flags(features, "prepaid", ["handset_tier"])
    assert 0.66 < subs["marketing_consent"].mean() < 0.74
    by_tier = subs.groupby(subs["handset_tier"] == "basic")["marketing_consent"].mean()
    assert by_tier[True] < by_tier[False] - 0.1


# replays: the treated are every other subscriber in the base the month before the window
WINDOW = {"convergent": (dt.date(2023, 9, 1), 6), "prepaid": (dt.date(2024, 1, 1), 6)}
TABLES = ("features", "facts", "parties")


def read_sorted(spark, out: Path, table: str) -> pd.DataFrame:
    return read_table(spark, str(out / table), table).toPandas().sort_values(KEYS, ignore_index=True)


def copy_panel(src: Path, dst: Path) -> Path:
    for table in TABLES:
        shutil.copytree(src / table, dst / table)
    return dst


def treated_ids(facts: pd.DataFrame, month: dt.date) -> list[str]:
    return sorted(facts.loc[facts["report_month"] == add_months(month, -1), "subscriber_id"])[::2]


def customers(ids: pd.Series | list[str]) -> pd.Series:
    """The simulated customer of panel ids: S%09d, which a successor id S%09d-yyyymm continues (checked
    against `continuation_roots` below)."""
    return pd.Series(ids, dtype="string").str.slice(0, 10).to_numpy()


def split(df: pd.DataFrame, treated: list[str], first_month: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows a replay keeps: untreated or before the window, the treated customers' rows from the window
    on, under whichever of their ids)."""
    mine = pd.Series(customers(df["subscriber_id"])).isin(set(customers(treated))).to_numpy()
    replayed = mine & (df["report_month"] >= first_month).to_numpy()
    return df[~replayed].reset_index(drop=True), df[replayed].reset_index(drop=True)


@pytest.fixture(scope="module")
def convergent_spec(panel_spec) -> PanelSpec:
    """The shared panel's spec with persons and households (the shared panel itself has none)."""
    return dataclasses.replace(panel_spec, parties=True)


@pytest.fixture(scope="module")
def convergent_dir(spark, convergent_spec, tmp_path_factory) -> Path:
    """The shared panel's subscribers with persons, households and number changes (`cltv generate`'s
    default), written once for this module."""
    out = tmp_path_factory.mktemp("convergent-parties")
    generate_panel(spark, str(out), convergent_spec, partitions=3)
    return out


@pytest.fixture(scope="module")
def convergent_replays(spark, convergent_dir, convergent_spec, tmp_path_factory):
    """A copy of the convergent panel replayed with churn x 1, then x 0: its tables before and after each."""
    panel_spec = convergent_spec
    out = copy_panel(convergent_dir, tmp_path_factory.mktemp("replay"))
    first_month, months = WINDOW["convergent"]
    original = {t: read_sorted(spark, out, t) for t in TABLES}
    treated = treated_ids(original["facts"], first_month)
    result = {"original": original, "treated": treated, "out": out}
    for factor in (1.0, 0.0):
        truth = replay_with_effect(spark, str(out), panel_spec, treated, first_month, months, factor)
        result[factor] = truth, {t: read_sorted(spark, out, t) for t in TABLES}
    return result


def test_a_replay_with_churn_factor_one_rewrites_the_panel_as_it_was(spark, convergent_replays, convergent_dir):  # noqa: E501
    panel_dir = convergent_dir
    truth, after = convergent_replays[1.0]
    for table, before in convergent_replays["original"].items():
        pd.testing.assert_frame_equal(after[table], before, check_exact=True)
        written = spark.read.parquet(str(convergent_replays["out"] / table)).dtypes
        assert written == spark.read.parquet(str(panel_dir / table)).dtypes  # column order and types
    assert truth.retained_with == truth.retained_without and truth.retention_effect == 0.0
    pd.testing.assert_frame_equal(truth.facts_with, truth.facts_without, check_exact=True)


def test_a_replay_without_churn_keeps_the_treated_in_the_base_and_every_other_row(convergent_replays):
    original, treated = convergent_replays["original"], convergent_replays["treated"]
    first_month, months = WINDOW["convergent"]
    _, after = convergent_replays[0.0]
    for table in TABLES:
        kept, replayed = split(after[table], treated, first_month)
        pd.testing.assert_frame_equal(kept, split(original[table], treated, first_month)[0], check_exact=True)
        assert not replayed.equals(split(original[table], treated, first_month)[1])
    window = month_range(first_month, add_months(first_month, months - 1))
    facts = after["facts"]
    mine = facts[pd.Series(customers(facts["subscriber_id"])).isin(set(customers(treated))).to_numpy()]
    in_base = mine.groupby("report_month")["subscriber_id"].agg(lambda ids: len(set(customers(ids))))
    assert (in_base[window] == len(set(customers(treated)))).all()  # all in the base before: nobody left
    keys = ["subscriber_id", "report_month"]
    assert after["features"][keys].equals(facts[keys]) and after["parties"][keys].equals(facts[keys])


def test_the_effect_truth_is_what_the_rewritten_facts_hold(convergent_replays):
    truth, after = convergent_replays[0.0]
    original, treated = convergent_replays["original"], convergent_replays["treated"]
    first_month, months = WINDOW["convergent"]
    last = add_months(first_month, months - 1)
    mine = set(customers(treated))

    def treated_window(facts: pd.DataFrame) -> pd.DataFrame:
        rows = pd.Series(customers(facts["subscriber_id"])).isin(mine).to_numpy()
        rows &= facts["report_month"].between(first_month, last).to_numpy()
        return facts.loc[rows, ["subscriber_id", "report_month", *CONVERGENT.facts]].reset_index(drop=True)

    def retained(facts: pd.DataFrame) -> int:
        """Customers in the active base in the last month (an overlap month holds two of a customer's ids)."""
        rows = facts[(facts["report_month"] == last) & (facts[CONVERGENT.active_flag] == 1)]
        return len(set(customers(rows["subscriber_id"])))

    pd.testing.assert_frame_equal(truth.facts_with, treated_window(after["facts"]), check_exact=True)
    pd.testing.assert_frame_equal(truth.facts_without, treated_window(original["facts"]), check_exact=True)
    assert truth.treated == len(mine) and truth.last_month == last
    assert truth.retained_with == retained(treated_window(after["facts"]))
    assert truth.retained_without == retained(treated_window(original["facts"]))
    assert truth.retention_effect == (truth.retained_with - truth.retained_without) / len(mine) > 0.05
    written = json.loads((convergent_replays["out"] / "_effect.json").read_text())
    assert written == {**truth.summary(), "panel": {"profile": "convergent", "seed": 11, "subscribers": 3000}}


def test_a_replay_rewrites_the_parties_of_the_months_it_rewrites(spark, convergent_replays, panel_spec):
    """The treated customers' parties rows follow their replayed base: the table keeps its contract and one
    row per features row; their persons and households are the ones they had."""
    original, treated = convergent_replays["original"], convergent_replays["treated"]
    first_month, _ = WINDOW["convergent"]
    _, after = convergent_replays[0.0]
    parties = read_table(spark, str(convergent_replays["out"] / "parties"), "parties")
    validate_parties(
        parties, month_range(panel_spec.start, add_months(panel_spec.start, panel_spec.months - 1))
    )
    replayed = split(after["parties"], treated, first_month)[1]
    before = split(original["parties"], treated, first_month)[1]
    assert len(replayed) > len(before)  # months the treated now stay in the base
    people = ["person_id", "household_id"]
    by_customer = before.assign(c=customers(before["subscriber_id"])).groupby("c")[people].first()
    now = replayed.assign(c=customers(replayed["subscriber_id"])).groupby("c")[people].first()
    shared = by_customer.index.intersection(now.index)
    pd.testing.assert_frame_equal(now.loc[shared], by_customer.loc[shared])


def test_a_prepaid_replay_without_churn_leaves_only_the_operators_disconnections(
    spark, prepaid_dir, tmp_path
):
    """No treated SIM is abandoned, ported out or moves away with its household in the window; those quiet
    for six months are still cut."""
    out = copy_panel(prepaid_dir[0], tmp_path)
    first_month, months = WINDOW["prepaid"]
    before = {t: read_sorted(spark, out, t) for t in TABLES}
    treated = treated_ids(before["facts"], first_month)
    truth = replay_with_effect(spark, str(out), PREPAID_SPEC, pd.Series(treated), first_month, months, 0.0)
    after = {t: read_sorted(spark, out, t) for t in TABLES}
    for table in TABLES:
        kept = split(after[table], treated, first_month)[0]
        pd.testing.assert_frame_equal(kept, split(before[table], treated, first_month)[0], check_exact=True)
    mine = set(customers(treated))

    def exits(features: pd.DataFrame) -> pd.DataFrame:
        """Treated customers' rows of the month before the window up to its last but one, the customer
        gone the month after (under any id: a number change is no exit)."""
        who = customers(features["subscriber_id"])
        present = set(zip(who, features["report_month"], strict=True))
        rows = features[pd.Series(who).isin(mine).to_numpy()]
        rows = rows[
            rows["report_month"].between(add_months(first_month, -1), add_months(first_month, months - 2))
        ]
        after_month = [
            (c, add_months(m, 1)) not in present
            for c, m in zip(customers(rows["subscriber_id"]), rows["report_month"], strict=True)
        ]
        return rows[np.array(after_month, dtype=bool)]

    gone = exits(after["features"])
    assert (gone["months_since_last_topup"] == DISCONNECT_AFTER - 1).all()
    assert len(gone) < len(exits(before["features"]))
    assert truth.retention_effect > 0
    last = add_months(first_month, months - 1)
    facts = after["facts"]
    live = facts[(facts["report_month"] == last) & (facts[PREPAID.active_flag] == 1)]
    assert truth.retained_with == len(mine & set(customers(live["subscriber_id"])))


def test_a_replay_refuses_what_it_cannot_replay(spark, panel_dir, panel_spec):
    first = dt.date(2023, 9, 1)
    with pytest.raises(ValueError, match="not panel subscriber ids"):
        replay_with_effect(spark, str(panel_dir), panel_spec, ["42"], first, 3, 0.5)
    with pytest.raises(ValueError, match="not panel subscriber ids"):
        replay_with_effect(spark, str(panel_dir), panel_spec, ["S000000001-2023"], first, 3, 0.5)
    with pytest.raises(ValueError, match="not inside the panel"):
        replay_with_effect(spark, str(panel_dir), panel_spec, ["S000000001"], dt.date(2025, 3, 1), 3, 0.5)
    with pytest.raises(ValueError, match="not the spec's"):
        other = dataclasses.replace(panel_spec, months=panel_spec.months - 1)
        replay_with_effect(spark, str(panel_dir), other, ["S000000001"], first, 3, 0.5)


# ------------------------------------------------------------------ persons, households, number changes
TENURE = {"convergent": "tenure_months", "prepaid": "sim_age_months"}
PLAN = {"convergent": "tariff", "prepaid": "plan_code"}
COST = {"convergent": ("sac", "sac_6m"), "prepaid": ("dealer_commission", "dealer_fee_6m")}
TRAILING = {  # (1-month, 3-month) pairs: a new id's trailing windows start at its number change
    "convergent": [("data_gb_1m", "data_gb_3m"), ("margin_1m", "margin_6m")],
    "prepaid": [("topup_value_1m", "topup_value_3m"), ("credit_used_1m", "credit_used_3m")],
}
JOINT_EXIT_RATIO = {"convergent": 3.0, "prepaid": 1.8}  # 5.3 and 2.6 here, 5.3 and 2.7 on 20k x 40 (docs)


def months_of(spec: PanelSpec) -> list[dt.date]:
    return month_range(spec.start, add_months(spec.start, spec.months - 1))


@pytest.fixture(scope="module")
def parties_panels(spark, convergent_dir, convergent_spec, prepaid_dir):
    """Both profiles' shared panels (generated with parties, the default), read back whole in pandas:
    profile -> (spec, directory, {table: rows sorted by key})."""
    panels = {"convergent": (convergent_spec, convergent_dir), "prepaid": (PREPAID_SPEC, prepaid_dir[0])}
    return {
        p: (spec, out, {t: read_sorted(spark, out, t) for t in TABLES}) for p, (spec, out) in panels.items()
    }


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_parties_table_meets_its_contract_with_one_row_per_features_row(spark, parties_panels, profile):
    spec, out, frames = parties_panels[profile]
    validate_parties(read_table(spark, str(out / "parties"), "parties"), months_of(spec))
    assert frames["parties"][KEYS].equals(frames["features"][KEYS])  # both sorted, keys unique


@pytest.mark.parametrize("profile", list(PROFILES))
def test_continuation_roots_lead_every_successor_id_to_its_first_id(spark, parties_panels, profile):
    _, out, _ = parties_panels[profile]
    roots = continuation_roots(read_table(spark, str(out / "parties"), "parties")).toPandas()
    successors = roots[roots["generation"] > 0]
    assert len(successors) and not successors["subscriber_id"].str.fullmatch(r"S[0-9]{9}").any()
    assert (successors["customer_id"].to_numpy() == customers(successors["subscriber_id"])).all()
    assert successors["generation"].max() <= MAX_NUMBER_CHANGES
    firsts = roots[roots["generation"] == 0]
    assert (firsts["customer_id"] == firsts["subscriber_id"]).all()


def by_customer(parties: pd.DataFrame) -> pd.DataFrame:
    return parties.assign(customer=customers(parties["subscriber_id"]))


@pytest.mark.parametrize("profile", list(PROFILES))
def test_households_hold_one_to_five_customers_and_persons_one_or_two(parties_panels, profile):
    _, _, frames = parties_panels[profile]
    parties = by_customer(frames["parties"])
    households = parties.dropna(subset=["household_id"]).groupby(["household_id", "report_month"])["customer"]
    sizes = households.nunique()
    assert sizes.min() == 1 and sizes.max() == max(HOUSEHOLD_LINES)
    mix = sizes.value_counts(normalize=True)
    assert mix[1] > mix[2] > mix[3] and mix[[3, 4, 5]].sum() > 0.05  # many single lines, some families
    persons = parties.groupby(["person_id", "report_month"])["customer"].nunique()
    assert persons.max() == 2 and 0.03 < (persons == 2).mean() < 0.3
    unknown = parties["household_id"].isna().mean()  # persons whose household the operator does not know
    assert {"convergent": 0.02 < unknown < 0.12, "prepaid": 0.1 < unknown < 0.4}[profile], unknown


def test_convergent_households_have_one_home_internet_line_beside_their_mobile_lines(parties_panels):
    _, _, frames = parties_panels["convergent"]
    rows = by_customer(frames["parties"]).assign(segment=frames["features"]["segment"])
    known = rows.dropna(subset=["household_id"])
    lines = known.groupby("household_id")["customer"].nunique()
    fixed = known[known["segment"].isin(["fmc", "fttb"])].groupby("household_id")["customer"].nunique()
    assert fixed.max() == 1  # one home internet line a household
    assert 0.45 < len(fixed) / len(lines) < 0.8  # households with home internet
    assert (lines[fixed.index] > 1).mean() > 0.3  # FMC households: home internet plus mobile lines
    assert rows.loc[rows["household_id"].isna(), "segment"].eq("mobile").all()  # no address, no fixed line
    segments = rows.groupby("customer")["segment"].first().value_counts(normalize=True)
    for segment, target in zip(SEGMENTS, SEGMENT_SHARE, strict=True):
        assert abs(segments[segment] - target) < 0.04


@pytest.mark.parametrize("profile", list(PROFILES))
def test_a_number_change_continues_the_customer_under_a_new_id(parties_panels, profile):
    """The old id leaves, the new one carries on with the same customer (tariff, base, person, household)
    from the same month (overlap) or the next; its tenure and trailing windows restart, with no
    acquisition cost."""
    spec, _, frames = parties_panels[profile]
    parties, features, facts = frames["parties"], frames["features"], frames["facts"]
    links = (
        parties.dropna(subset=["previous_subscriber_id"])
        .groupby(["subscriber_id", "previous_subscriber_id"], as_index=False)["report_month"]
        .min()
    )
    per_month = len(links) / spec.months / (len(features) / spec.months)
    assert 0.001 < per_month < 0.006, per_month  # ~0.3 % of the base a month
    span = features.groupby("subscriber_id")["report_month"].agg(["min", "max"])
    seen = links[links["previous_subscriber_id"].isin(span.index)]  # the old id had rows in the panel
    old_last = span.loc[seen["previous_subscriber_id"], "max"].to_numpy()
    gap = [months_between(a, b) for a, b in zip(old_last, seen["report_month"], strict=True)]
    assert set(gap) == {0, 1}  # an overlap month, or the next month

    key = ["subscriber_id", "report_month"]
    row = features.set_index(key)
    old = row.loc[list(zip(seen["previous_subscriber_id"], old_last, strict=True))]
    new = row.loc[list(zip(seen["subscriber_id"], seen["report_month"], strict=True))]
    assert (old[PLAN[profile]].to_numpy() == new[PLAN[profile]].to_numpy()).all()
    since = pd.to_datetime(features["subscriber_id"].str.slice(11), format="%Y%m", errors="coerce").dt.date
    successor = since.notna()
    months = features.loc[successor, "report_month"]
    tenure = [months_between(a, b) for a, b in zip(since[successor], months, strict=True)]
    assert (features.loc[successor, TENURE[profile]].to_numpy() == tenure).all()  # 0 at the change
    started = new[new[TENURE[profile]] == 0]
    assert len(started) > 5
    for one, longer in TRAILING[profile]:
        np.testing.assert_allclose(started[longer], started[one])
    cost, cost_6m = COST[profile]
    assert (facts.loc[successor.to_numpy(), cost] == 0).all() and (
        features.loc[successor, cost_6m] == 0
    ).all()
    who = parties.set_index(key)[["person_id", "household_id"]]
    before = who.loc[list(zip(seen["previous_subscriber_id"], old_last, strict=True))].to_numpy()
    after = who.loc[list(zip(seen["subscriber_id"], seen["report_month"], strict=True))].to_numpy()
    assert (pd.DataFrame(before).fillna("-") == pd.DataFrame(after).fillna("-")).all().all()
    if profile == "convergent":  # a paying customer changes its number
        assert (facts.set_index(key).loc[started.index, CONVERGENT.paid_flag] == 1).all()


@pytest.mark.parametrize("profile", list(PROFILES))
def test_household_members_leave_together_far_more_often_than_independently(parties_panels, profile):
    """Of households with two or more customers in the base, the share losing every one of them the next
    month, against what independent exits at the members' monthly exit rate would give."""
    spec, _, frames = parties_panels[profile]
    rows = by_customer(frames["parties"])
    present = rows[["customer", "report_month"]].drop_duplicates()
    nxt = present.assign(report_month=present["report_month"].map(lambda m: add_months(m, -1)), stays=True)
    last = add_months(spec.start, spec.months - 1)
    members = (
        rows[(rows["report_month"] < last) & rows["household_id"].notna()][
            ["household_id", "customer", "report_month"]
        ]
        .drop_duplicates()
        .merge(nxt, on=["customer", "report_month"], how="left")
    )
    members["gone"] = members["stays"].isna()
    households = members.groupby(["household_id", "report_month"])["gone"].agg(["size", "all"])
    households = households[households["size"] >= 2]
    rate = members.set_index(["household_id", "report_month"]).loc[households.index, "gone"].mean()
    observed = households["all"].mean()
    independent = (rate ** households["size"]).mean()
    assert observed > JOINT_EXIT_RATIO[profile] * independent, (observed, independent, len(households))
