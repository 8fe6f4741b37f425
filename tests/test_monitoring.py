"""Monitoring: PSI and unseen shares flag exactly the shifted features; backtests give the figures computed
by hand; monitor_month writes its tables, logs an MLflow run and fails on a fail threshold."""

from __future__ import annotations

import datetime as dt
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import FACT_COLUMNS
from pyspark.sql import functions as F

from spark_app.backtest import run_backtest
from spark_app.checks import FAIL, OK, WARN
from spark_app.config import CostsConfig, MonitoringConfig
from spark_app.drift import (
    bin_counts,
    feature_drift,
    numeric_bin_counts,
    prediction_drift,
    psi,
    quantile_edges,
)
from spark_app.monitoring import monitor_month, read_monitoring

CFG = MonitoringConfig()


# ------------------------------------------------------------------ PSI and bins
def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    e = np.array([100, 100, 100, 100])
    assert psi(e, e * 3) == pytest.approx(0.0)
    small = psi(e, np.array([110, 100, 100, 90]))
    big = psi(e, np.array([200, 100, 60, 40]))
    assert 0 < small < 0.1 < big
    # by hand: Σ (a−e) ln(a/e) over shares
    a = np.array([0.5, 0.25, 0.15, 0.1])
    assert big == pytest.approx(float(np.sum((a - 0.25) * np.log(a / 0.25))))


def test_quantile_edges_give_one_bin_per_value_of_a_discrete_feature():
    x = np.array([0] * 30 + [1] * 70, dtype=float)
    edges = quantile_edges(x, 10)
    assert edges.tolist() == [0.0]
    assert bin_counts(x, edges).tolist() == [30, 70, 0]
    cont = np.random.default_rng(1).normal(size=10_000)
    counts = bin_counts(cont, quantile_edges(cont, 10))
    assert len(counts) == 11 and counts[-1] == 0
    assert np.allclose(counts[:-1], 1000, atol=2)


def test_spark_bin_counts_match_numpy_including_nulls(spark):
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 3.0, size=2000).round(1)
    pdf = pd.DataFrame({"x": values, "y": rng.integers(0, 4, size=2000).astype(float)})
    pdf.loc[::97, "x"] = np.nan
    df = spark.createDataFrame(pdf).withColumn("x", F.when(F.isnan("x"), None).otherwise(F.col("x")))
    edges = {"x": quantile_edges(values[:500], 10), "y": np.array([0.0, 1.0, 2.0])}
    got = numeric_bin_counts(df, edges)
    assert got["x"].tolist() == bin_counts(pdf["x"].to_numpy(), edges["x"]).tolist()
    assert got["y"].tolist() == bin_counts(pdf["y"].to_numpy(), edges["y"]).tolist()
    assert got["x"][-1] == len(range(0, 2000, 97))


# ------------------------------------------------------------------ feature drift on a generated panel
MONTH = dt.date(2024, 6, 1)


def _halves(spark, panel_dir: Path, month: dt.date):
    """Reference = one hash half of the month's subscribers, current = the other half: same distribution."""
    features = spark.read.parquet(str(panel_dir / "features")).where(F.col("report_month") == F.lit(month))
    half = F.pmod(F.xxhash64("subscriber_id"), F.lit(2))
    return features.where(half == 0).toPandas(), features.where(half == 1)


def _columns():
    from spark_app.generate import FEATURE_CATEGORICAL, FEATURE_NUMERIC

    return list(FEATURE_NUMERIC), list(FEATURE_CATEGORICAL)


def test_unshifted_month_raises_no_drift(spark, panel_dir):
    reference, current = _halves(spark, panel_dir, MONTH)
    numeric, categorical = _columns()
    drift = feature_drift(reference, current, numeric=numeric, categorical=categorical, cfg=CFG)
    assert set(drift["feature"]) == set(numeric) | set(categorical)
    assert (drift["status"] == OK).all(), drift.loc[drift["status"] != OK, ["feature", "psi", "unseen_share"]]


def test_injected_shift_warns_or_fails_on_exactly_the_shifted_features(spark, panel_dir):
    reference, current = _halves(spark, panel_dir, MONTH)
    u = F.pmod(F.xxhash64("subscriber_id", F.lit("inject")), F.lit(1000)) / 1000.0
    shifted = (
        current.withColumn("price", F.col("price") * 1.6)  # every price up 60%: PSI far above fail
        .withColumn("tariff", F.when(u < 0.03, F.lit("M_NEW")).otherwise(F.col("tariff")))  # 3% unseen: warn
        .withColumn("region", F.when(u > 0.88, F.lit("R99")).otherwise(F.col("region")))  # 12% unseen: fail
    )
    numeric, categorical = _columns()
    drift = feature_drift(reference, shifted, numeric=numeric, categorical=categorical, cfg=CFG)
    status = dict(zip(drift["feature"], drift["status"], strict=True))
    assert status.pop("price") == FAIL
    assert status.pop("tariff") == WARN
    assert status.pop("region") == FAIL
    assert set(status.values()) == {OK}, {k: v for k, v in status.items() if v != OK}
    tariff = drift.set_index("feature").loc["tariff"]
    assert 0.02 < tariff["unseen_share"] < 0.04
    assert "M_NEW" in tariff["unseen_values"]


def test_prediction_drift_flags_the_moved_score_column(spark):
    rng = np.random.default_rng(5)
    prev = pd.DataFrame({"cltv": rng.lognormal(5, 1, 5000), "p_paid_12m": rng.beta(8, 2, 5000)})
    cur = pd.DataFrame({"cltv": rng.lognormal(5.8, 1, 5000), "p_paid_12m": rng.beta(8, 2, 5000)})
    out = prediction_drift(
        spark.createDataFrame(prev), spark.createDataFrame(cur), columns=["cltv", "p_paid_12m"], cfg=CFG
    )
    row = out.set_index("column")
    assert row.loc["cltv", "status"] == FAIL
    assert row.loc["p_paid_12m", "status"] == OK
    # every row of a small month is compared: the quantiles are the months' own
    assert row.loc["cltv", "current_p50"] == pytest.approx(np.median(cur["cltv"]))
    assert row.loc["cltv", "previous_p50"] == pytest.approx(np.median(prev["cltv"]))
    assert row.loc["cltv", "current_subscribers"] == 5000


def test_prediction_drift_compares_the_same_hash_chosen_subscribers_of_a_large_month(spark):
    ids = [f"s{i}" for i in range(20_000)]
    rng = np.random.default_rng(6)
    prev = pd.DataFrame({"subscriber_id": ids, "cltv": rng.lognormal(5, 1, len(ids))})
    cur = prev.assign(cltv=prev["cltv"] * 1.01)  # the same subscribers, 1 % more each: no real drift
    out = prediction_drift(
        spark.createDataFrame(prev), spark.createDataFrame(cur), columns=["cltv"],
        cfg=MonitoringConfig(prediction_drift_rows=2_000),
    ).set_index("column")  # fmt: skip
    assert 1_700 < out.loc["cltv", "previous_rows"] < 2_300
    assert out.loc["cltv", "previous_subscribers"] == 20_000
    assert out.loc["cltv", "current_rows"] == out.loc["cltv", "previous_rows"]  # paired: the same ids
    assert out.loc["cltv", "psi"] < 0.01 and out.loc["cltv", "status"] == OK


# ------------------------------------------------------------------ backtest against hand-computed figures
T = dt.date(2024, 6, 1)
MODELS = ["paid", "active", "sm_mobile", "data_gb", "sac"]
SUBS = ["A", "B", "C", "D", "E"]
SEGMENT = {"A": "mobile", "B": "fmc", "C": "mobile", "D": "mobile", "E": "fttb"}
REGION = {"A": "R01", "B": "R01", "C": "R02", "D": "R02", "E": "R01"}
TENURE = {"A": 3, "B": 30, "C": 12, "D": 50, "E": 7}
HOLDOUT = {"A": True, "B": False, "C": False, "D": True, "E": False}
# who was scored when: (score month, subscribers)
SCORED = {dt.date(2024, 5, 1): ["A", "B", "C", "E"], dt.date(2024, 3, 1): ["A", "B", "D"]}
FACT_MONTHS = [dt.date(2024, 3, 1), dt.date(2024, 4, 1), dt.date(2024, 5, 1), T]
# (subscriber, month) pairs present in facts; B has churned by T, D is absent in April
PRESENT = {(s, m) for s in SUBS for m in FACT_MONTHS} - {("B", T), ("D", dt.date(2024, 4, 1))}


def _arrays(rng) -> dict[str, list[float]]:
    out = {}
    for m in MODELS:
        out[m] = (rng.uniform(0.5, 1.0, 24) if m in ("paid", "active") else rng.uniform(0, 50, 24)).round(3)
    return out


def _write_handmade(spark, root: Path):
    rng = np.random.default_rng(11)
    forecasts = {(s, sm): _arrays(rng) for sm, subs in SCORED.items() for s in subs}
    facts = {}
    for s, m in sorted(PRESENT):
        paid = float(rng.random() < 0.8)
        facts[(s, m)] = {
            "in_paid_base": int(paid),
            "in_active_base": 1,
            "sm_mobile": round(float(rng.uniform(0, 60)), 2),
            "sm_fmc": 0.0,
            "sm_fttb": 0.0,
            "data_gb": round(float(rng.uniform(0, 40)), 2),
            "voice_min": 100.0,
            "sac": round(float(rng.uniform(0, 20)), 2),
        }
    # features at every month for the breakdowns
    feat = pd.DataFrame(
        [
            {
                "subscriber_id": s,
                "report_month": m,
                "segment": SEGMENT[s],
                "region": REGION[s],
                "tenure_months": TENURE[s] + i,
            }
            for i, m in enumerate(FACT_MONTHS)
            for s in SUBS
        ]
    )
    spark.createDataFrame(feat).write.partitionBy("report_month").parquet(str(root / "panel" / "features"))
    fact_rows = [{"subscriber_id": s, "report_month": m, **v} for (s, m), v in facts.items()]
    fdf = spark.createDataFrame(pd.DataFrame(fact_rows)[["subscriber_id", "report_month", *FACT_COLUMNS]])
    fdf.write.partitionBy("report_month").parquet(str(root / "panel" / "facts"))
    for sm, subs in SCORED.items():
        rows = [
            {
                "subscriber_id": s,
                "release_version": "3",
                "cltv": 1.0,
                "holdout": HOLDOUT[s],
                **{f"{m}_h": forecasts[(s, sm)][m].tolist() for m in MODELS},
            }
            for s in subs
        ]
        spark.createDataFrame(pd.DataFrame(rows)).write.parquet(str(root / "scores" / f"score_month={sm}"))
    # a month scored without --detail: reported, not backtested
    spark.createDataFrame(
        pd.DataFrame({"subscriber_id": ["A"], "release_version": ["3"], "cltv": [1.0], "holdout": [True]})
    ).write.parquet(str(root / "scores" / "score_month=2024-04-01"))
    return forecasts, facts


FACT_OF = {"paid": "in_paid_base", "active": "in_active_base"}


def _value(get, costs: CostsConfig) -> float:
    overhead = costs.overhead_sb + costs.overhead_ga + costs.overhead_am
    return get("sm_mobile") - get("sac") - costs.cost_per_gb * get("data_gb") - overhead * get("paid")


def _expected(forecasts, facts, costs, *, score_month, population, segment=None) -> dict[str, dict]:
    """Plain-Python sums over the subscribers scored at `score_month`."""
    h = (T.year - score_month.year) * 12 + T.month - score_month.month
    subs = [
        s
        for s in SCORED[score_month]
        if (population == "all" or HOLDOUT[s] == (population == "holdout"))
        and (segment is None or SEGMENT[s] == segment)
    ]
    out = {}
    for m in [*MODELS, "value_cum"]:
        f_sum = a_sum = abs_sum = err = 0.0
        for s in subs:
            arr = forecasts[(s, score_month)]
            if m == "value_cum":
                f = sum(_value(lambda x, i=i, arr=arr: arr[x][i], costs) for i in range(h))
                months = [dt.date(T.year, T.month - j, 1) for j in range(h)]
                a = sum(
                    _value(lambda x, mm=mm, s=s: facts[(s, mm)][FACT_OF.get(x, x)], costs)
                    for mm in months
                    if (s, mm) in facts
                )
            else:
                f = arr[m][h - 1]
                a = facts[(s, T)][FACT_OF.get(m, m)] if (s, T) in facts else 0.0
            f_sum, a_sum, abs_sum, err = f_sum + f, a_sum + a, abs_sum + abs(a), err + abs(a - f)
        out[m] = {
            "n": len(subs),
            "forecast_sum": f_sum,
            "actual_sum": a_sum,
            "wape": err / abs_sum if abs_sum else math.nan,
            "bias": (f_sum - a_sum) / abs_sum if abs_sum else math.nan,
        }
    return out


def test_backtest_matches_figures_computed_by_hand(spark, tmp_path, settings_factory):
    forecasts, facts = _write_handmade(spark, tmp_path)
    settings = settings_factory(panel=tmp_path / "panel")
    table, notes = run_backtest(spark, settings, T)
    assert any("2024-04" in n and "--detail" in n for n in notes)
    assert sorted(table["horizon"].unique().tolist()) == [1, 3]
    assert set(table["population"]) == {"all", "holdout", "rest"}
    assert set(table["dimension"]) == {"all", "segment", "region", "tenure_cohort"}
    costs = settings.costs
    cases = [
        (sm, pop, seg) for sm in SCORED for pop in ("all", "holdout", "rest") for seg in (None, "mobile")
    ]
    checked = 0
    for sm, pop, seg in cases:
        exp = _expected(forecasts, facts, costs, score_month=sm, population=pop, segment=seg)
        sel = table[
            (table["score_month"] == sm)
            & (table["population"] == pop)
            & (table["dimension"] == ("all" if seg is None else "segment"))
            & (table["value"] == ("all" if seg is None else seg))
        ]
        if exp["paid"]["n"] == 0:
            assert sel.empty
            continue
        got = sel.set_index("model_id")
        for m, e in exp.items():
            assert got.loc[m, "n"] == e["n"], (sm, pop, seg, m)
            assert got.loc[m, "forecast_sum"] == pytest.approx(e["forecast_sum"]), (sm, pop, seg, m)
            assert got.loc[m, "actual_sum"] == pytest.approx(e["actual_sum"]), (sm, pop, seg, m)
            if not math.isnan(e["wape"]):
                assert got.loc[m, "wape"] == pytest.approx(e["wape"]), (sm, pop, seg, m)
                assert got.loc[m, "bias"] == pytest.approx(e["bias"]), (sm, pop, seg, m)
            checked += 1
    assert checked >= 8 * len(MODELS)
    # survival calibration: predicted share vs realized share in base
    paid = table[
        (table["model_id"] == "paid")
        & (table["dimension"] == "all")
        & (table["population"] == "all")
        & (table["horizon"] == 1)
    ].iloc[0]
    subs = SCORED[dt.date(2024, 5, 1)]
    realized = sum(facts.get((s, T), {}).get("in_paid_base", 0) for s in subs) / len(subs)
    assert paid["actual_mean"] == pytest.approx(realized)
    # tenure cohorts come from the tenure at the scoring month
    cohorts = table[
        (table["dimension"] == "tenure_cohort")
        & (table["score_month"] == dt.date(2024, 3, 1))
        & (table["population"] == "all")
        & (table["model_id"] == "paid")
    ]
    assert dict(zip(cohorts["value"], cohorts["n"], strict=True)) == {"0-5": 1, "24-47": 1, "48+": 1}


# ------------------------------------------------------------------ end to end (without a trained release)
@dataclass
class StoredRelease:
    """A release as registry.load_release returns it, reduced to what monitoring reads."""

    version: str
    run_id: str | None
    files: dict[str, bytes] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


def test_monitor_month_writes_tables_logs_a_run_and_fails_on_drift(
    spark, panel_dir, tmp_path, settings_factory
):
    reference, _ = _halves(spark, panel_dir, MONTH)
    buf = io.BytesIO()
    reference.drop(columns=["subscriber_id", "report_month"]).to_parquet(buf)
    release = StoredRelease(version="1", run_id=None, files={"reference.parquet": buf.getvalue()})
    settings = settings_factory(panel=panel_dir)
    clean = monitor_month(spark, settings, MONTH, release=release)
    assert not clean.failed, clean.failures
    assert any("prediction drift skipped" in w for w in clean.warnings)
    assert settings.paths.parties is None and not {"party_backtest", "party_coverage"} & set(clean.tables)

    # the same reference against a month whose prices moved: exit code 1
    shifted = tmp_path / "shifted"
    features = spark.read.parquet(str(panel_dir / "features")).where(F.col("report_month") == F.lit(MONTH))
    features.withColumn("price", F.col("price") * 2).write.partitionBy("report_month").parquet(
        str(shifted / "features")
    )
    settings = settings_factory(panel=shifted)
    result = monitor_month(spark, settings, MONTH, release=release)
    assert result.failed
    assert [f.split(":")[0] for f in result.failures] == ["feature price"]
    stored = read_monitoring(spark, settings, MONTH)
    assert stored["summary"]["status"] == FAIL and stored["summary"]["run_id"] == result.run_id
    assert "parties" not in stored["summary"] and stored["party_backtest"].empty  # without paths.parties
    assert set(stored["drift"]["feature"]) >= {"price", "tariff"}
    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result.run_id)
    assert run.data.metrics["drift.psi.price"] > CFG.psi_fail
    assert run.data.tags["status"] == FAIL


def test_survival_calibration_gets_a_status_per_horizon():
    """Predicted 88.1 % against 96.1 % realized at h = 1 fails (8 points beyond 5); 1 point at h = 6 is ok."""
    from spark_app.backtest import survival_checks

    rows = [
        {"model_id": "active", "score_month": dt.date(2025, 3, 1), "horizon": 1, "population": "all",
         "dimension": "all", "n": 5000, "forecast_mean": 0.881, "actual_mean": 0.961},
        {"model_id": "active", "score_month": dt.date(2024, 10, 1), "horizon": 6, "population": "all",
         "dimension": "all", "n": 5000, "forecast_mean": 0.81, "actual_mean": 0.80},
        {"model_id": "paid", "score_month": dt.date(2025, 1, 1), "horizon": 3, "population": "all",
         "dimension": "all", "n": 100, "forecast_mean": 0.5, "actual_mean": 0.9},
        {"model_id": "sm_mobile", "score_month": dt.date(2025, 3, 1), "horizon": 1, "population": "all",
         "dimension": "all", "n": 5000, "forecast_mean": 10.0, "actual_mean": 1.0},
    ]  # fmt: skip
    found = survival_checks(pd.DataFrame(rows), ["paid", "active"], MonitoringConfig())
    status = {(r.model_id, r.horizon): r.status for r in found.itertuples()}
    assert status == {("active", 1): "fail", ("active", 6): "ok", ("paid", 3): "skipped"}
    assert found.loc[found["horizon"] == 1, "gap"].iloc[0] == pytest.approx(-0.08)
