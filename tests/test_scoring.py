"""The monthly scoring job against a real (tiny) release registered in MLflow and a generated panel."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ALL_MODELS, AMOUNT_MODELS, make_settings
from pyspark.sql import functions as F
from releases import register_release

from spark_app.batch import _LEARNERS, cached_learner, output_schema
from spark_app.cltv import Extrapolation, ValueFormula, cltv_columns, value_at_risk
from spark_app.contract import InputContractError
from spark_app.layout import scores_dir
from spark_app.months import add_months, days_in_month_index, month_index
from spark_app.registry import forecast_frame, load_release
from spark_app.scoring import make_plan, model_files, score_month
from spark_app.storage import Storage

MONTH = dt.date(2025, 4, 1)  # the panel's last month (2022-01 + 39)


@pytest.fixture(scope="module")
def release_env(spark, panel_dir, tmp_path_factory):
    """Settings in a tmp dir, a features table we can tamper with, and a tiny release registered in MLflow."""
    work = tmp_path_factory.mktemp("scoring")
    panel = work / "panel"
    shutil.copytree(panel_dir / "features", panel / "features")
    shutil.copytree(panel_dir / "facts", panel / "facts")
    small = {"iterations": 25, "depth": 4}
    settings = make_settings(
        work,
        panel,
        models={"profiles": {m: {"params": small} for m in ALL_MODELS}},
        scoring={"arrow_batch_rows": 500},
    )
    version = register_release(spark, settings, panel, MONTH, work)
    return settings, version, panel


def tamper_with_month(panel: Path, spark) -> dict[str, int]:
    """Nulls in a numeric and a categorical column and a tariff never seen in training, for 3 subscribers."""
    path = panel / "features" / f"report_month={MONTH:%Y-%m-%d}"
    month = spark.read.parquet(str(path)).toPandas()
    month.loc[:2, "price"] = np.nan
    month.loc[3:4, "region"] = None
    month.loc[5:7, "tariff"] = "M_BRAND_NEW"
    shutil.rmtree(path)
    path.mkdir()
    month.to_parquet(path / "part-0.parquet", index=False)
    return {"rows": len(month)}


def read_scores(settings, month=MONTH) -> pd.DataFrame:
    scores = pd.read_parquet(scores_dir(settings.paths, month))
    return scores.sort_values("subscriber_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def scored(spark, release_env):
    """The month scored once with --detail, after some inputs were spoiled."""
    settings, version, panel = release_env
    info = tamper_with_month(panel, spark)
    summary = score_month(spark, settings, MONTH, release="challenger", detail=True)
    return settings, version, panel, info, summary, read_scores(settings)


def test_scores_equal_the_releases_own_predictions_and_cltv_recomputes_from_detail(scored):
    settings, version, panel, info, summary, scores = scored
    assert summary.rows == len(scores) == info["rows"] == scores["subscriber_id"].nunique()
    assert (scores["release_version"] == version).all() and summary.release_version == version
    assert (scores["score_month"] == MONTH).all()
    assert Path(scores_dir(settings.paths, MONTH), "_SUCCESS").exists()
    # bad inputs are scored, and counted
    assert summary.missing_values == {"price": 3, "region": 2}
    assert summary.unseen_categorical == {"tariff": 3}
    assert set(summary.cltv_quantiles) >= {"p01", "p50", "p99"}
    assert np.isfinite(scores["cltv"]).all()

    # the release's in-process Learner on the same rows, through the registry's own horizon expansion
    release = load_release(settings, str(version))
    features = pd.read_parquet(panel / "features" / f"report_month={MONTH:%Y-%m-%d}")
    features["report_month"] = MONTH
    features = features.sort_values("subscriber_id").reset_index(drop=True)
    expected = forecast_frame(release.learner(), features, list(range(1, 25)))
    days = days_in_month_index(month_index(MONTH) + np.arange(1, 25))
    for model_id in ALL_MODELS:
        got = np.stack(scores[f"{model_id}_h"].to_numpy())
        want = expected[model_id].to_numpy().reshape(len(features), 24)
        if model_id in AMOUNT_MODELS:
            want = want * days[None, :]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=model_id)

    # CLTV from the detail arrays alone, with the same code
    forecasts = {m: np.stack(scores[f"{m}_h"].to_numpy()) for m in ALL_MODELS}
    cfg = settings.scoring
    ext = Extrapolation(months=60, trend_floor=cfg.trend_floor, trend_cap=cfg.trend_cap)
    formula = ValueFormula.from_catalog(release.learner().catalog, settings.costs)
    cols = cltv_columns(forecasts, month_index(MONTH), formula, ext)
    for name, values in cols.items():
        np.testing.assert_allclose(scores[name].to_numpy(), values, rtol=1e-9, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(scores["value_at_risk"], value_at_risk(forecasts, formula), rtol=1e-9)
    assert (scores["value_at_risk"] > 0).mean() > 0.5  # churn takes value away from most subscribers
    parts = scores[["sm_mobile_60m", "sm_fmc_60m", "sm_fttb_60m"]].sum(axis=1) - scores[
        ["sac_60m", "data_cost_60m", "voice_cost_60m", "overheads_60m"]
    ].sum(axis=1)
    np.testing.assert_allclose(scores["cltv"], parts, rtol=1e-9, atol=1e-9)
    assert scores[["p_paid_12m", "p_paid_24m", "p_paid_60m"]].apply(np.isfinite).all().all()
    assert (scores["p_paid_60m"] <= scores["p_paid_24m"] + 1e-12).all()


def test_rerun_is_identical_and_a_failed_write_keeps_the_previous_partition(spark, scored):
    settings, version, _, _, _, first = scored
    score_month(spark, settings, MONTH, release=str(version), detail=True)
    second = read_scores(settings)
    pd.testing.assert_frame_equal(first, second)
    share = second["holdout"].mean()
    assert 0.0 < share < 0.15  # holdout_share 0.05 of ~1.5k subscribers

    # a write that dies inside the staged block: the month keeps the previous rows, no staging left
    target = scores_dir(settings.paths, MONTH)

    @F.udf("double")
    def explode(x):
        raise RuntimeError("executor lost")

    broken = spark.read.parquet(target).withColumn("cltv", explode(F.col("cltv")))
    with pytest.raises(Exception, match="executor lost"), Storage(spark).staged(target) as staging:
        broken.write.parquet(staging)
    pd.testing.assert_frame_equal(read_scores(settings), second)
    leftovers = [p.name for p in Path(target).parent.iterdir() if p.name.startswith("_")]
    assert leftovers == []


def test_a_duplicated_id_fails_the_month_and_its_previous_scores_stay(spark, scored):
    settings, version, panel, _, _, _ = scored
    before = read_scores(settings)
    path = panel / "features" / f"report_month={MONTH:%Y-%m-%d}"
    month = pd.read_parquet(path)
    extra = path / "part-duplicate.parquet"  # a second file repeating one subscriber: no task sees both
    month.tail(1).to_parquet(extra, index=False)
    try:
        duplicate = r"1 duplicate \(subscriber_id, report_month\) keys in 2025-04"
        with pytest.raises(InputContractError, match=duplicate):
            score_month(spark, settings, MONTH, release=str(version))
    finally:
        extra.unlink()
    pd.testing.assert_frame_equal(read_scores(settings), before)


def test_missing_month_is_a_clear_error_before_anything_is_written(spark, release_env):
    settings, version, _ = release_env
    later = add_months(MONTH, 1)
    with pytest.raises(InputContractError, match=r"features: months missing \[2025-05\]"):
        score_month(spark, settings, later, release=str(version))
    assert not Path(scores_dir(settings.paths, later)).exists()


def test_release_columns_come_from_the_manifest_and_workers_cache_one_learner(release_env):
    settings, version, _ = release_env
    release = load_release(settings, str(version))
    files = model_files(release.files)
    assert "reference.parquet" not in files and "release.json" in files
    plan = make_plan(settings, release.manifest, version, "digest-a", MONTH, detail=False)
    assert plan.models == ALL_MODELS and plan.horizons == 24
    names = output_schema(plan).names
    assert names[:6] == ["subscriber_id", "score_month", "release_version", "release_digest", "cltv",
                         "cltv_24m"]  # fmt: skip
    assert "overheads_60m" in names and "p_active_60m" in names and "paid_h" not in names
    assert "sac_h" in output_schema(replace(plan, detail=True)).names
    assert set(plan.categorical) == {"segment", "tariff", "region", "device_type"}
    assert "horizon" not in plan.input_cols and "p_paid" not in plan.input_cols
    _LEARNERS.clear()
    first = cached_learner(plan, files)
    assert cached_learner(plan, files) is first
    other = make_plan(settings, release.manifest, version, "digest-b", MONTH, detail=False)
    assert cached_learner(other, files) is not first and len(_LEARNERS) == 1


def test_null_and_duplicate_ids_are_one_error_before_scoring_whatever_the_partitions(spark):
    from spark_app.scoring import check_ids

    rows = [(f"s{i}", float(i)) for i in range(40)] + [("s7", 1.0), ("s7", 2.0), ("s30", 3.0), (None, 4.0)]
    month = dt.date(2025, 4, 1)
    # the repeats land in other partitions than their first rows: no task sees both
    features = spark.createDataFrame(rows, "subscriber_id string, arpu double").repartition(4)
    with pytest.raises(InputContractError) as err:
        check_ids(features, month)
    message = str(err.value)
    assert "column 'subscriber_id' has 1 null values" in message
    assert "2 duplicate (subscriber_id, report_month) keys in 2025-04 (3 extra rows), e.g. 's30'" in message
    check_ids(spark.createDataFrame(rows[:40], "subscriber_id string, arpu double"), month)  # clean: passes
