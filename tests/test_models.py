"""Learner (any subset of models, stacking, bundles) and the evaluation helpers, on small pandas frames."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ALL_MODELS, CATALOG, make_settings

from spark_app.evaluation import (
    NaiveBaseline,
    calibration_table,
    classification_metrics,
    is_better,
    metric_rows,
    metric_table,
    quality_table,
    regression_metrics,
    relative_worsening,
    roc_auc,
    tenure_band,
)
from spark_app.generate import FEATURE_NUMERIC
from spark_app.models import RELEASE_JSON, BundleError, Learner, horizon_and_month, rms_bias_by_group


def frame(n: int, seed: int) -> pd.DataFrame:
    """Rows in the training-set layout whose targets depend on the features (so models can learn)."""
    rng = np.random.default_rng(seed)
    data = {c: rng.gamma(2.0, 1.0, n) for c in FEATURE_NUMERIC}
    data["tenure_months"] = rng.integers(0, 80, n)
    data["is_active"] = rng.integers(0, 2, n)
    data["segment"] = rng.choice(["mobile", "fmc", "fttb"], n)
    data["tariff"] = rng.choice(["M_S", "M_L", "FMC_DUO"], n)
    data["region"] = rng.choice(["R01", "R02", None], n)
    data["device_type"] = rng.choice(["ios", "android_low"], n)
    df = pd.DataFrame(data)
    df["subscriber_id"] = [f"s{seed}-{i}" for i in range(n)]
    df["feature_month"] = pd.Timestamp("2025-01-01").date()
    df["horizon"] = rng.integers(1, 25, n)
    df["target_calendar_month"] = (df["horizon"] % 12) + 1
    df["feature_calendar_month"] = 1
    logit = 2.0 * df["is_active"] - 0.05 * df["horizon"] + 0.5 * (df["segment"] == "fmc") - 0.3
    p = 1 / (1 + np.exp(-logit))
    df["paid_fact"] = (rng.random(n) < p).astype(int)
    df["active_fact"] = np.maximum(df["paid_fact"], (rng.random(n) < 0.3).astype(int))
    for m in ("sm_mobile", "sm_fmc", "sm_fttb", "data_gb", "voice_min", "sac"):
        df[f"{m}_fact"] = df["paid_fact"] * (0.02 * df["margin_1m"] + 0.1 * (df["segment"] == "fmc"))
    return df


@pytest.fixture(scope="module")
def frames():
    return {
        "train_surv": frame(1500, 1),
        "train_reg": frame(1500, 2),
        "val": frame(500, 3),
        "oot": frame(500, 4),
    }


def fast(iterations: int = 30) -> dict:
    """models-section override: every profile with few iterations (deep-merged into conf/models.yaml)."""
    return {"profiles": {m: {"params": {"iterations": iterations}} for m in ALL_MODELS}}


@pytest.fixture(scope="module")
def fitted(frames, tmp_path_factory):
    s = make_settings(tmp_path_factory.mktemp("m"), models=fast())
    return Learner.from_settings(s).fit(frames["train_surv"], frames["train_reg"], frames["val"])


def test_learner_predicts_every_enabled_model_survival_first(fitted, frames):
    out = fitted.predict(frames["oot"])
    assert list(out) == list(ALL_MODELS)
    for model_id in ("paid", "active"):
        assert ((out[model_id] >= 0) & (out[model_id] <= 1)).all()
    assert all(len(v) == len(frames["oot"]) for v in out.values())
    # the model learnt the signal: paid probability is higher for active subscribers
    active = frames["oot"]["is_active"].to_numpy() == 1
    assert out["paid"][active].mean() > out["paid"][~active].mean() + 0.2


def test_regressors_are_stacked_on_the_survival_predictions(fitted, frames):
    names = fitted.models["data_gb"].feature_names_
    assert "p_paid" in names and "p_active" in names
    assert "p_paid" not in fitted.models["paid"].feature_names_
    # predict derives p_paid itself: a p_paid column in the input is overwritten, not trusted
    oot = frames["oot"]
    a = fitted.predict(oot)["data_gb"]
    b = fitted.predict(oot.assign(p_paid=0.0, p_active=0.0))["data_gb"]
    np.testing.assert_allclose(a, b)


def test_a_subset_of_models_fits_and_predicts_only_that_subset(settings_factory, frames):
    s = settings_factory(models={**fast(), "enabled": ["paid", "active", "voice_min"]})
    learner = Learner.from_settings(s).fit(frames["train_surv"], frames["train_reg"], frames["val"])
    assert list(learner.predict(frames["oot"])) == ["paid", "active", "voice_min"]
    assert set(learner.fit_reports) == {"paid", "active", "voice_min"}
    assert learner.fit_reports["voice_min"].rows == len(frames["train_reg"])
    assert learner.fit_reports["paid"].rows == len(frames["train_surv"])


def test_bundle_round_trip_from_dir_and_bytes_predicts_identically(fitted, frames, tmp_path):
    fitted.meta = {"horizons": list(range(1, 25)), "dataset_id": "ds-x"}
    fitted.save_bundle(tmp_path / "b", reference=frames["oot"][["tenure_months", "segment"]])
    manifest = json.loads((tmp_path / "b" / RELEASE_JSON).read_text())
    assert manifest["format"] == 2 and manifest["dataset_id"] == "ds-x"
    assert manifest["models"]["sm_fmc"]["file"] == "sm_fmc.cbm"
    assert manifest["models"]["paid"]["kind"] == "classification"
    assert "segment" in manifest["models"]["paid"]["feature_cols"] and "segment" in manifest["categorical"]
    assert (tmp_path / "b" / "reference.parquet").exists()
    files = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    expected = fitted.predict(frames["oot"])
    for learner in (Learner.from_bundle(tmp_path / "b"), Learner.from_bundle_bytes(files)):
        got = learner.predict(frames["oot"])
        assert list(got) == list(expected)
        for m in expected:
            np.testing.assert_allclose(got[m], expected[m], rtol=1e-6)


def test_bundle_missing_a_model_file_is_a_clear_error(fitted, tmp_path):
    fitted.save_bundle(tmp_path / "b")
    files = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.name != "sac.cbm"}
    with pytest.raises(BundleError, match=r"sac.*sac\.cbm"):
        Learner.from_bundle_bytes(files)
    with pytest.raises(BundleError, match=r"release\.json"):
        Learner.from_bundle_bytes({"paid.cbm": b""})


def test_missing_feature_column_is_named(fitted, frames):
    with pytest.raises(KeyError, match="complaints_3m"):
        fitted.predict(frames["oot"].drop(columns=["complaints_3m"]))


def test_unseen_and_missing_categories_are_scored(fitted, frames):
    oot = frames["oot"].head(20).copy()
    oot["tariff"] = "NEW_TARIFF"
    oot.loc[oot.index[:5], "segment"] = None
    out = fitted.predict(oot)
    assert all(np.isfinite(v).all() for v in out.values())


# ---------------------------------------------------------------- evaluation helpers
def test_roc_auc_matches_the_pairwise_definition():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])
    pairs = [(i, j) for i in range(6) for j in range(6) if y[i] == 1 and y[j] == 0]
    expected = np.mean([1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0 for i, j in pairs])
    assert roc_auc(y, p) == pytest.approx(expected)
    assert np.isnan(roc_auc(np.ones(3), np.ones(3)))


def test_regression_metrics_and_wape_definition():
    y = np.array([1.0, 2.0, 0.0, 3.0])
    f = np.array([1.5, 1.0, 0.5, 3.0])
    m = regression_metrics(y, f)
    assert m["wape"] == pytest.approx(2.0 / 6.0)
    assert m["mae"] == pytest.approx(0.5)
    assert m["bias"] == pytest.approx(0.0)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 1 + 0.25) / 4))
    c = classification_metrics(np.array([1, 0]), np.array([0.75, 0.25]))
    assert c["brier"] == pytest.approx(0.0625) and c["roc_auc"] == 1.0


def test_metric_direction_and_relative_worsening():
    assert is_better("roc_auc", 0.8, 0.7) and is_better("wape", 0.3, 0.4)
    assert relative_worsening("roc_auc", 0.79, 0.80) == pytest.approx(0.0125)
    assert relative_worsening("wape", 0.404, 0.4) == pytest.approx(0.01)
    assert relative_worsening("wape", 0.3, 0.4) < 0


def test_calibration_table_bins_and_rates():
    p = np.array([0.05, 0.07, 0.55, 0.95, 0.99])
    y = np.array([0, 0, 1, 1, 0])
    t = calibration_table(y, p, bins=10)
    assert list(t["bin"]) == [0, 5, 9]
    assert list(t["rows"]) == [2, 1, 2]
    assert t.loc[t["bin"] == 9, "observed"].item() == 0.5


def test_naive_baseline_is_last_value_times_survival_rate(frames):
    edges = [0, 12, 48]
    naive = NaiveBaseline.fit(CATALOG, frames["train_surv"], frames["train_reg"], edges)
    oot = frames["oot"]
    out = naive.predict(oot, list(ALL_MODELS))
    band = tenure_band(oot["tenure_months"], edges)
    # paid: base rate of the (horizon, tenure band) cell in train_surv
    ts = frames["train_surv"]
    ts_band = tenure_band(ts["tenure_months"], edges)
    i = 0
    h, b = oot["horizon"].iloc[i], band[i]
    cell = ts[(ts["horizon"] == h) & (ts_band == b)]["paid_fact"]
    expected_rate = cell.mean() if len(cell) else ts["paid_fact"].mean()
    assert out["paid"][i] == pytest.approx(expected_rate)
    # sm_fmc: margin_1m / 31 days (January) x the rate of its carrier (active), only for fmc subscribers
    expected = np.where(oot["segment"] == "fmc", oot["margin_1m"] / 31.0, 0.0) * out["active"]
    np.testing.assert_allclose(out["sm_fmc"], expected)
    np.testing.assert_allclose(out["data_gb"], oot["data_gb_1m"] / 31.0 * out["paid"])  # carried by paid


def test_a_missing_naive_baseline_column_is_an_error_not_a_zero(frames):
    naive = NaiveBaseline.fit(CATALOG, frames["train_surv"], frames["train_reg"], [0, 12])
    with pytest.raises(KeyError, match=r"naive baseline of sm_mobile: columns \['margin_1m'\]"):
        naive.predict(frames["oot"].drop(columns=["margin_1m"]), ["sm_mobile"])


def test_quality_table_says_who_beats_naive():
    y = np.array([0, 1, 0, 1, 1, 0])
    good = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3])
    bad = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.7])
    df = pd.DataFrame({"horizon": [1, 1, 2, 2, 3, 3], "paid_fact": y, "active_fact": y})
    rows = metric_rows(
        df,
        {"paid": good, "active": bad},
        {"paid": bad, "active": good},
        {"paid": y, "active": y},
        {"paid": "classification", "active": "classification"},
        "oot",
    )
    q = quality_table(metric_table(rows), {"classification": "roc_auc", "regression": "wape"})
    assert dict(zip(q["model_id"], q["beats_naive"], strict=True)) == {"paid": True, "active": False}


def test_bias_first_metrics_on_hand_made_numbers():
    from spark_app.evaluation import agg_bias, agg_bias_se, cumulative_bias, decile_table, normalized_gini

    y = np.array([0.0, 0.0, 1.0, 3.0])
    assert agg_bias(y, 1.1 * y) == pytest.approx(0.1) and agg_bias_se(y, 1.1 * y) == pytest.approx(0.0)
    assert agg_bias_se(y, np.array([1.0, 1.0, 1.0, 1.0])) > 0  # the residuals around Σf/Σy · y
    assert normalized_gini(y, y) == pytest.approx(1.0)
    assert normalized_gini(y, np.full(4, 7.0)) == pytest.approx(0.0)  # a constant forecast ranks nothing
    assert normalized_gini(y, -y) < 0
    table = decile_table(np.arange(100.0), np.arange(100.0))
    assert list(table["rows"]) == [10] * 10 and table["mean_actual"].iloc[0] == pytest.approx(4.5)
    # cumulative over two horizons: (mean f_1 + mean f_2) / (mean y_1 + mean y_2) - 1
    h = np.array([1, 1, 2, 2])
    bias, se = cumulative_bias(h, np.array([2.0, 2.0, 1.0, 3.0]), np.array([1.0, 3.0, 2.0, 2.0]), up_to=24)
    assert bias == pytest.approx((2 + 2) / (2 + 2) - 1) and se > 0


def test_decile_error_is_the_row_weighted_gap_of_the_decile_table():
    """decile_error sums by bincount (it runs ~1,700 times per release); it must say what the decile table
    shows, whatever the size and the ties."""
    from spark_app.evaluation import decile_error, decile_table

    rng = np.random.default_rng(3)
    for n in (1, 3, 9, 10, 11, 57, 2000):
        y = rng.gamma(2.0, 3.0, n) * (rng.random(n) > 0.3)
        for f in (y + rng.normal(0, 2, n), np.round(y), np.full(n, 4.0)):
            table = decile_table(y, f)
            gap = ((table["mean_pred"] - table["mean_actual"]).abs() * table["rows"]).sum() / n
            expected = gap / abs(y.mean()) if y.mean() != 0 else float("nan")
            assert decile_error(y, f) == pytest.approx(expected, rel=1e-12, nan_ok=True), (n, f[:3])
    assert np.isnan(decile_error(np.zeros(4), np.ones(4)))  # no scale
    assert np.isnan(decile_error(np.array([]), np.array([])))
    assert decile_error(np.arange(100.0), np.arange(100.0)) == 0.0


def test_calendar_months_the_window_never_had_are_scored_unknown_not_extrapolated(frames, tmp_path):
    """A window whose targets fall in months 1..4 only: the learner records them, fits a share of rows with
    the month unknown, and forecasts a never-seen month exactly as it forecasts an unknown one."""
    short = {k: v.assign(target_calendar_month=(v["horizon"] % 4) + 1) for k, v in frames.items()}
    s = make_settings(tmp_path, models=fast(20))
    learner = Learner.from_settings(s).fit(short["train_surv"], short["train_reg"], short["val"])
    assert learner.calendar_seen == (1, 2, 3, 4)
    rows = short["oot"].head(50)
    july = learner.predict(rows.assign(target_calendar_month=7))
    unknown = learner.predict(rows.assign(target_calendar_month=np.nan))
    april = learner.predict(rows.assign(target_calendar_month=4))
    for m in ALL_MODELS:
        np.testing.assert_allclose(july[m], unknown[m], err_msg=m)
    assert any(not np.allclose(july[m], april[m]) for m in ALL_MODELS)
    again = Learner.from_bundle(learner.save_bundle(tmp_path / "b"))
    assert again.calendar_seen == (1, 2, 3, 4)
    np.testing.assert_allclose(again.predict(rows.assign(target_calendar_month=7))["paid"], july["paid"])
    full = Learner.from_settings(s).fit(frames["train_surv"], frames["train_reg"], frames["val"])
    assert full.calendar_seen is None  # twelve months seen: nothing neutralized


def test_survival_forecasts_never_rise_with_the_horizon_for_the_same_subscriber(fitted, frames):
    """monotone_constraints {horizon: -1} in conf/models.yaml: for one subscriber and one target season a
    later month is never more likely in the base."""
    rows = frames["oot"].head(40)
    by_h = [fitted.predict(rows.assign(horizon=h, target_calendar_month=3)) for h in range(1, 25)]
    for m in ("paid", "active"):
        curve = np.stack([p[m] for p in by_h])
        assert (np.diff(curve, axis=0) <= 1e-9).all(), m


def test_an_amount_calibration_that_worsens_the_test_split_is_not_kept(fitted, frames):
    """Calibrated on val; kept whole, in part or not at all — whichever has the smallest bias per target
    calendar month (rms) on test."""
    val, test = frames["val"], frames["oot"]
    skewed = val.assign(sm_mobile_fact=val["sm_mobile_fact"] * 1.8)  # val says 'scale up by 1.8': noise
    learner = fitted
    learner.calibrate(skewed, test)
    report = learner.calibration_reports["sm_mobile"]
    raw = learner.predict(test, calibrated=False)["sm_mobile"]
    y = test["sm_mobile_fact"].to_numpy()
    month = horizon_and_month(test)[1]
    without = rms_bias_by_group(raw, y, month)
    assert report.after["monthly_rms_bias"] <= without + 1e-12
    assert report.before["monthly_rms_bias"] == pytest.approx(without)
    assert "kept:" in report.note
    learner.calibrate(val, test)  # back to the fixture's calibration


def test_the_rms_bias_by_group_weighs_each_month_by_its_rows():
    pred = np.array([2.0, 2.0, 1.0, 1.0, 1.0, 5.0])
    actual = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 0.0])
    group = np.array([1, 1, 2, 2, 2, 3])  # month 1: +100 %; month 2: −25 %; month 3 has no actual
    expected = np.sqrt((2 * 1.0**2 + 3 * 0.25**2) / 5)
    assert rms_bias_by_group(pred, actual, group) == pytest.approx(expected)


def test_random_bytes_behind_the_cbm_magic_are_refused_without_crashing_the_process(fitted, tmp_path):
    # CatBoost's own loader segfaults on some of these; the check runs in a child so a crash fails
    # this test instead of killing the suite
    good = tmp_path / "good.cbm"
    fitted.models["sm_fmc"].save_model(str(good))
    script = (
        "import os, sys\n"
        "from catboost import CatBoostError\n"
        "from spark_app.models import load_cbm\n"
        "refused = 0\n"
        "for i in range(3000):\n"
        "    try:\n"
        "        load_cbm(b'CBM1' + os.urandom(8 + i % 120), survival=i % 2 == 0)\n"
        "    except CatBoostError:\n"
        "        refused += 1\n"
        "load_cbm(open(sys.argv[1], 'rb').read(), survival=False)\n"
        "print(refused)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(good)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "3000"
