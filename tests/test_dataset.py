"""Properties of the training set (issue #3) on the small generated panel: lags, slotting, targets,
splits, validation before any write, determinism, and a plan that does not grow with the window."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest
from conftest import AMOUNT_MODELS, CATALOG, make_settings
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.stats import chisquare

from spark_app.config import DatasetConfig
from spark_app.contract import ID, MONTH, InputContractError, read_table
from spark_app.dataset import (
    FEATURE_MONTH,
    HORIZON,
    SPLITS,
    TARGET_MONTH,
    DatasetNotFoundError,
    DatasetPlan,
    build_dataset,
    read_dataset,
    read_fact_keys,
    read_feature_keys,
    training_rows,
    with_slot,
)
from spark_app.layout import LATEST
from spark_app.months import add_months, month_range

TARGET_END = dt.date(2025, 4, 1)  # panel spans 2022-01..2025-04: T1 = 2024-04, T1 − 24 = 2022-04
WINDOW = month_range(dt.date(2024, 4, 1), TARGET_END)
SMALL = {"target_months": 3, "horizons": [1, 2, 3]}  # for tests about inputs, not about the window


def all_rows(splits: dict[str, DataFrame]) -> DataFrame:
    frames = [df.withColumn("split", F.lit(name)) for name, df in splits.items()]
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


@pytest.fixture(scope="module")
def built(spark, panel_dir, tmp_path_factory):
    """The default (13 months × 24 horizons) training set of the shared panel, built once."""
    settings = make_settings(tmp_path_factory.mktemp("ds"), panel_dir)
    result = build_dataset(spark, settings, TARGET_END)
    _, manifest, splits = read_dataset(spark, settings)
    rows = all_rows(splits).cache()
    yield settings, result, manifest, rows
    rows.unpersist()


@pytest.fixture(scope="module")
def small_rows(spark, panel_dir, tmp_path_factory):
    """The 3-month × 3-horizon training set of the shared panel, built once, all splits in one frame."""
    settings = make_settings(tmp_path_factory.mktemp("small"), panel_dir, dataset=SMALL)
    rows = all_rows(read_dataset(spark, settings, build_dataset(spark, settings, TARGET_END).dataset_id)[2])
    yield rows.cache()
    rows.unpersist()


@pytest.fixture(scope="module")
def tables(spark, panel_dir):
    return read_table(spark, str(panel_dir / "features"), "features"), read_table(
        spark, str(panel_dir / "facts"), "facts"
    )


def test_every_row_has_features_from_t_minus_h_and_a_target_in_the_window(built, tables):
    settings, _, manifest, rows = built
    features, _ = tables
    assert rows.count() > 1000
    bounds = rows.agg(F.min(HORIZON), F.max(HORIZON), F.min(TARGET_MONTH), F.max(TARGET_MONTH)).first()
    assert bounds[0] >= 1 and bounds[1] <= 24
    assert bounds[2] >= WINDOW[0] and bounds[3] == WINDOW[-1]
    assert rows.where(F.col(FEATURE_MONTH) != F.add_months(TARGET_MONTH, -F.col(HORIZON))).count() == 0
    assert rows.where(F.month(TARGET_MONTH) != F.col("target_calendar_month")).count() == 0
    # Leakage: every feature value is the features table's value at (subscriber, T − h), none later.
    feature_cols = settings.models.catalog().input_columns()
    source = features.select(
        F.col(ID), F.col(MONTH).alias(FEATURE_MONTH), *[F.col(c).alias(f"src_{c}") for c in feature_cols]
    )
    matched = rows.join(source, [ID, FEATURE_MONTH], "left")
    differs = F.lit(False)
    for c in feature_cols:
        differs = differs | ~F.col(c).eqNullSafe(F.col(f"src_{c}"))
    assert matched.where(differs).count() == 0
    assert manifest["feature_columns"][:3] == ["horizon", "target_calendar_month", "feature_calendar_month"]
    assert manifest["categorical_columns"] == ["segment", "tariff", "region", "device_type"]


def test_no_subscriber_twice_and_slots_are_uniform(spark, built, tables):
    _, _, _, rows = built
    features, _ = tables
    assert rows.groupBy(ID).count().where("count > 1").count() == 0
    plan = DatasetPlan(tuple(WINDOW), tuple(range(1, 25)), "cltv", 1.0, "base", 0.1, 0.1, 0.5)
    slots = (
        features.select(ID)
        .distinct()
        .transform(with_slot, plan=plan)
        .groupBy(TARGET_MONTH, HORIZON)
        .count()
        .collect()
    )
    counts = [r["count"] for r in slots] + [0] * (plan.n_slots - len(slots))
    assert len(counts) == plan.n_slots
    assert chisquare(counts).pvalue > 0.001
    # every target month and every horizon is used by the dataset itself
    assert rows.select(TARGET_MONTH).distinct().count() == 13
    assert rows.select(HORIZON).distinct().count() == 24


def test_targets_are_daily_averages_of_the_facts_of_t_and_zero_when_absent(built, tables):
    _, _, _, rows = built
    _, facts = tables
    source = facts.select(
        F.col(ID),
        F.col(MONTH).alias(TARGET_MONTH),
        *[F.col(c).alias(f"src_{c}") for c in facts.columns if c not in (ID, MONTH)],
    )
    matched = rows.join(source, [ID, TARGET_MONTH], "left").cache()
    days = F.dayofmonth(F.last_day(TARGET_MONTH))
    present = matched.where(F.col("src_in_paid_base").isNotNull())
    absent = matched.where(F.col("src_in_paid_base").isNull())
    assert present.count() > 500 and absent.count() > 20  # both cases are exercised
    assert (
        present.where(
            (F.col("paid_fact") != F.col("src_in_paid_base"))
            | (F.col("active_fact") != F.col("src_in_active_base"))
        ).count()
        == 0
    )
    for amount in AMOUNT_MODELS:
        assert (
            present.where(F.abs(F.col(f"{amount}_fact") - F.col(f"src_{amount}") / days) > 1e-9).count() == 0
        )
    fact_cols = ["paid_fact", "active_fact", *[f"{a}_fact" for a in AMOUNT_MODELS]]
    assert absent.where(" OR ".join(f"{c} != 0" for c in fact_cols)).count() == 0
    assert dict(rows.dtypes)["paid_fact"] == "int" and dict(rows.dtypes)["sm_mobile_fact"] == "double"
    matched.unpersist()


def test_splits_oot_is_the_last_target_month_and_ratios_hold(built):
    _, result, manifest, rows = built
    per_split = {
        r["split"]: r
        for r in rows.groupBy("split")
        .agg(F.count(F.lit(1)).alias("n"), F.min(TARGET_MONTH).alias("lo"), F.max(TARGET_MONTH).alias("hi"))
        .collect()
    }
    assert set(per_split) == set(SPLITS)
    assert per_split["oot"]["lo"] == per_split["oot"]["hi"] == TARGET_END
    assert all(per_split[s]["hi"] < TARGET_END for s in SPLITS if s != "oot")
    rest = sum(per_split[s]["n"] for s in SPLITS if s != "oot")
    for name, share in {"val": 0.1, "test": 0.1, "train_reg": 0.4, "train_surv": 0.4}.items():
        assert abs(per_split[name]["n"] / rest - share) < 0.04, name
    assert rows.groupBy(ID).agg(F.countDistinct("split").alias("k")).where("k > 1").count() == 0
    # the manifest agrees with the data
    assert manifest == result.manifest
    assert manifest["rows"] == rows.count()
    for name in SPLITS:
        info = manifest["splits"][name]
        assert info["rows"] == per_split[name]["n"] == sum(info["rows_by_horizon"].values())
        mean = rows.where(F.col("split") == name).agg(F.avg("sm_mobile_fact")).first()[0]
        assert info["target_means"]["sm_mobile_fact"] == pytest.approx(mean)


def test_manifest_names_inputs_config_and_version(built):
    settings, result, manifest, _ = built
    assert manifest["dataset_id"] == result.dataset_id == f"ds-202504-{settings.config_hash()[:8]}"
    assert manifest["config_hash"] == settings.config_hash()
    assert (
        manifest["package_version"]
        == (Path(__file__).parent.parent / "spark_app" / "VERSION").read_text().strip()
    )
    assert manifest["inputs"]["features"]["months"][0] == "2022-04"
    assert manifest["inputs"]["features"]["months"][-1] == "2025-03"
    assert manifest["inputs"]["facts"]["months"] == [m.strftime("%Y-%m") for m in WINDOW]
    assert manifest["inputs"]["features"]["path"].endswith("features")
    root = Path(settings.paths.datasets)
    assert (root / LATEST).read_text().strip() == result.dataset_id
    assert (root / result.dataset_id / "split=oot").is_dir()
    assert not [p for p in root.iterdir() if p.name.startswith("_")]  # no staging leftovers


def test_rebuild_on_repartitioned_input_gives_the_same_rows(spark, panel_dir, tmp_path, small_rows):
    copy = tmp_path / "panel"
    for table in ("features", "facts"):
        df = read_table(spark, str(panel_dir / table), table)
        df.repartition(7, F.rand(seed=3)).write.partitionBy(MONTH).parquet(str(copy / table))
    other = make_settings(tmp_path / "other", copy, dataset=SMALL)
    rows = small_rows
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    try:
        again = build_dataset(spark, other, TARGET_END)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    rebuilt = all_rows(read_dataset(spark, other, again.dataset_id)[2])
    assert rows.count() > 100
    assert rebuilt.exceptAll(rows).count() == 0 and rows.exceptAll(rebuilt).count() == 0
    # a rerun with the same config replaces the same id, and leaves nothing else behind
    third = build_dataset(spark, other, TARGET_END)
    assert third.dataset_id == again.dataset_id
    listing = sorted(p.name for p in Path(other.paths.datasets).iterdir() if not p.name.startswith("."))
    assert listing == [again.dataset_id, LATEST]


def _plan_text(df: DataFrame) -> str:
    text = df._jdf.queryExecution().executedPlan().toString()
    return re.sub(r"\d+", "N", text)


@pytest.mark.parametrize("axis", ["horizons", "target_months"])
def test_plan_does_not_grow_with_horizons_or_target_months(spark, built, tables, axis):
    settings, _, _, _ = built
    features, facts = tables
    small = {"horizons": list(range(1, 4)), "target_months": 13}
    large = {"horizons": list(range(1, 25)), "target_months": 13}
    if axis == "target_months":
        small, large = (
            {"horizons": [1, 2, 3], "target_months": 2},
            {"horizons": [1, 2, 3], "target_months": 13},
        )
    texts = []
    for cfg in (small, large):
        plan = DatasetPlan.from_config(settings.dataset.model_copy(update=cfg), TARGET_END, CATALOG)
        texts.append(_plan_text(training_rows(features, facts, plan=plan, catalog=settings.models.catalog())))
    assert texts[0].count("FileScan") == texts[1].count("FileScan") == 2
    assert texts[0] == texts[1]


def test_population_active_keeps_only_the_active_base_at_t_minus_h(
    spark, panel_dir, tmp_path, tables, small_rows
):
    _, facts = tables
    settings = make_settings(
        tmp_path, panel_dir, dataset={**SMALL, "population": "active"}, models={"enabled": ["paid", "active"]}
    )
    result = build_dataset(spark, settings, TARGET_END)
    _, manifest, splits = read_dataset(spark, settings)
    rows = all_rows(splits)
    assert [c for c in rows.columns if c.endswith("_fact")] == ["paid_fact", "active_fact"]
    flags = facts.select(F.col(ID), F.col(MONTH).alias(FEATURE_MONTH), "in_active_base")
    matched = rows.join(flags, [ID, FEATURE_MONTH], "left")
    assert matched.count() > 200
    assert matched.where(F.coalesce(F.col("in_active_base"), F.lit(0)) != 1).count() == 0
    assert manifest["inputs"]["facts"]["months"][0] == "2024-11"  # the population reads facts at T − h
    assert rows.count() < small_rows.count()
    # the same subscribers keep the same slot, split and features; only the population differs
    assert rows.exceptAll(small_rows.select(*rows.columns)).count() == 0
    assert result.manifest["population"] == "active"


def test_sample_rate_keeps_a_hash_chosen_share_of_the_same_rows(spark, panel_dir, tmp_path, small_rows):
    full_rows = small_rows
    half = make_settings(tmp_path / "half", panel_dir, dataset={**SMALL, "sample_rate": 0.5})
    half_rows = all_rows(read_dataset(spark, half, build_dataset(spark, half, TARGET_END).dataset_id)[2])
    assert 0.4 < half_rows.count() / full_rows.count() < 0.6
    assert half_rows.exceptAll(full_rows).count() == 0  # same slot and split for a sampled subscriber


def _copy_panel(panel_dir: Path, dest: Path) -> Path:
    shutil.copytree(panel_dir, dest)
    return dest


def _assert_nothing_written(settings) -> None:
    root = Path(settings.paths.datasets)
    assert not root.exists() or not list(root.iterdir())


def test_missing_month_is_named_and_nothing_is_written(spark, panel_dir, tmp_path):
    panel = _copy_panel(panel_dir, tmp_path / "panel")
    shutil.rmtree(panel / "features" / "report_month=2025-01-01")
    shutil.rmtree(panel / "facts" / "report_month=2025-03-01")
    settings = make_settings(tmp_path, panel, dataset=SMALL)
    with pytest.raises(InputContractError, match=r"features: months missing \[2025-01\]") as err:
        build_dataset(spark, settings, TARGET_END)
    assert "target window 2025-02..2025-04, horizons 1..3" in str(err.value)
    _assert_nothing_written(settings)
    shutil.rmtree(panel / "features")
    shutil.copytree(panel_dir / "features", panel / "features")
    with pytest.raises(InputContractError, match=r"facts: months missing \[2025-03\]"):
        build_dataset(spark, settings, TARGET_END)
    _assert_nothing_written(settings)


def test_wrong_column_type_is_refused_and_nothing_is_written(spark, panel_dir, tmp_path, tables):
    features, _ = tables
    panel = _copy_panel(panel_dir, tmp_path / "panel")
    shutil.rmtree(panel / "features")
    features.withColumn("price", F.col("price").cast("string")).write.partitionBy(MONTH).parquet(
        str(panel / "features")
    )
    settings = make_settings(tmp_path, panel, dataset=SMALL)
    with pytest.raises(
        InputContractError,
        match=r"features: column 'price' is string, expected numeric "
        r"\(read by models.profiles.paid.feature_cols\), in \d+ files of months "
        r"\[2024-11, 2024-12, 2025-01, 2025-02, 2025-03\]",
    ):
        build_dataset(spark, settings, TARGET_END)
    _assert_nothing_written(settings)


def test_duplicate_keys_are_refused_and_nothing_is_written(spark, panel_dir, tmp_path, tables):
    """Duplicates in rows the build reads are refused; elsewhere only with dataset.validate_all_rows."""
    features, facts = tables
    plan = DatasetPlan.from_config(DatasetConfig(**SMALL), TARGET_END, CATALOG)
    read_features = read_feature_keys(features, plan=plan).select(ID, MONTH).orderBy(ID).limit(1)
    read_facts = read_fact_keys(facts, plan=plan).select(ID, MONTH).orderBy(ID).limit(3).collect()
    dupes = facts.join(spark.createDataFrame(read_facts[:2]), [ID, MONTH])
    bad_flag = (F.col(ID) == read_facts[2][ID]) & (F.col(MONTH) == read_facts[2][MONTH])
    panel = tmp_path / "panel"
    features.unionByName(features.join(read_features, [ID, MONTH])).write.partitionBy(MONTH).parquet(
        str(panel / "features")
    )
    broken = facts.withColumn("in_paid_base", F.when(bad_flag, F.lit(2)).otherwise(F.col("in_paid_base")))
    broken.unionByName(dupes).write.partitionBy(MONTH).parquet(str(panel / "facts"))
    settings = make_settings(tmp_path, panel, dataset=SMALL)
    with pytest.raises(InputContractError) as err:
        build_dataset(spark, settings, TARGET_END)
    assert "features: 1 duplicate (subscriber_id, report_month) keys" in str(err.value)
    assert "facts: 2 duplicate (subscriber_id, report_month) keys" in str(err.value)
    assert "facts: column 'in_paid_base' has 1 values other than 0/1" in str(err.value)
    _assert_nothing_written(settings)

    # a duplicate in a row no training row reads cannot reach the set: refused only by validate_all_rows
    shutil.rmtree(panel)
    unread = facts.join(read_fact_keys(facts, plan=plan).select(ID, MONTH), [ID, MONTH], "left_anti")
    unread = unread.where(F.col(MONTH) == F.lit(dt.date(2025, 3, 1))).orderBy(ID).limit(3)
    facts.unionByName(unread).write.partitionBy(MONTH).parquet(str(panel / "facts"))
    shutil.copytree(panel_dir / "features", panel / "features")
    build_dataset(spark, make_settings(tmp_path / "lenient", panel, dataset=SMALL), TARGET_END)
    strict = make_settings(tmp_path / "strict", panel, dataset={**SMALL, "validate_all_rows": True})
    with pytest.raises(InputContractError, match=r"facts: 3 duplicate \(subscriber_id, report_month\) keys"):
        build_dataset(spark, strict, TARGET_END)
    _assert_nothing_written(strict)


def test_read_dataset_without_any_dataset_is_a_clear_error(spark, tmp_path):
    settings = make_settings(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"no training set under paths\.datasets"):
        read_dataset(spark, settings)
    with pytest.raises(DatasetNotFoundError, match="'ds-nope' not found"):
        read_dataset(spark, settings, "ds-nope")


def test_dataset_plan_reads_only_the_months_it_needs():
    plan = DatasetPlan.from_config(DatasetConfig(), TARGET_END, CATALOG)
    assert plan.target_months == tuple(WINDOW)
    assert plan.feature_months[0] == add_months(WINDOW[0], -24) and plan.feature_months[-1] == add_months(
        TARGET_END, -1
    )
    assert plan.fact_months == list(WINDOW)
    assert plan.n_slots == 13 * 24
