"""The amounts' seasonal index from the facts history: recovered, applied at fit and forecast, carried."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from conftest import make_settings
from test_models import fast, frame

from spark_app.models import Learner
from spark_app.months import add_months
from spark_app.seasonality import SeasonalIndex, fit_seasonal_index, fit_seasons, monthly_means

SEASON = np.array([0.88, 0.95, 0.97, 1.0, 1.0, 1.05, 1.08, 1.06, 1.0, 0.95, 0.97, 1.15])


def series(months: int, trend_per_year: float, noise: float = 0.0, seed: int = 0):
    start = dt.date(2023, 1, 1)
    dates = [add_months(start, k) for k in range(months)]
    rng = np.random.default_rng(seed)
    growth = (1 + trend_per_year) ** (np.arange(months) / 12)
    season = SEASON / np.exp(np.log(SEASON).mean())
    values = 5.0 * growth * season[[d.month - 1 for d in dates]] * np.exp(rng.normal(0, noise, months))
    return dates, values, season


@pytest.mark.parametrize("months", [13, 24, 36])
def test_the_season_is_recovered_apart_from_a_trend(months):
    """A base growing 30 % a year with a December peak: the index is the season, not season + growth."""
    dates, values, season = series(months, 0.30)
    index = fit_seasonal_index(dates, values)
    assert index is not None
    got = np.array([index.factors[m] for m in range(1, 13)])
    np.testing.assert_allclose(got, season, rtol=1e-6)
    assert index.trend_per_year == pytest.approx(0.30, rel=1e-6)
    assert index.months == months


def test_a_noisy_small_base_gets_its_season_within_noise():
    dates, values, season = series(36, 0.0, noise=0.01, seed=3)
    index = fit_seasonal_index(dates, values)
    got = np.array([index.factors[m] for m in range(1, 13)])
    np.testing.assert_allclose(got, season, atol=0.02)


def test_under_twelve_months_there_is_no_index_and_unknown_months_get_one():
    dates, values, _ = series(11, 0.1)
    assert fit_seasonal_index(dates, values) is None
    index = SeasonalIndex({1: 0.9, 12: 1.2})
    np.testing.assert_allclose(index.apply(np.array([1, 12, 6, np.nan])), [0.9, 1.2, 1.0, 1.0])


def test_the_monthly_means_come_from_the_facts_in_daily_units(spark):
    rows = [
        ("a", dt.date(2025, 1, 1), 31.0),
        ("b", dt.date(2025, 1, 1), None),
        ("a", dt.date(2025, 2, 1), 56.0),
    ]
    facts = spark.createDataFrame(rows, "subscriber_id string, report_month date, sm_mobile double")
    got = {r["report_month"]: (r["rows"], r["m"]) for r in monthly_means(facts, {"m": "sm_mobile"}).collect()}
    assert got == {dt.date(2025, 1, 1): (2, 1.0), dt.date(2025, 2, 1): (1, 2.0)}


def test_a_learner_fits_on_the_deseasoned_target_and_forecasts_the_season(frames_with_season, tmp_path):
    """Targets × the index of their calendar month: with the index the forecast follows the season (which a
    few early-stopped trees do not learn from the calendar feature), without it they miss it; the
    forecast is the trees' output × the index exactly, and a bundle carries it."""
    train_surv, train_reg, val, oot = frames_with_season
    dates, values, season = series(36, 0.0)
    history = {
        "months": [d.isoformat() for d in dates],
        "rows": [1] * 36,
        "sums": {"sm_mobile": list(values)},
    }
    settings = make_settings(tmp_path, models=fast(40))
    seasoned = Learner.from_settings(settings)
    seasoned.seasons = fit_seasons(history, ["sm_mobile", "data_gb"])
    assert set(seasoned.seasons) == {"sm_mobile"}  # data_gb has no history: no index
    seasoned.fit(train_surv, train_reg, val)
    plain = Learner.from_settings(settings).fit(train_surv, train_reg, val)
    truth = season[11] / season[0]

    def december_over_january(learner: Learner) -> float:
        dec = learner.predict(oot.assign(target_calendar_month=12))["sm_mobile"].sum()
        return dec / learner.predict(oot.assign(target_calendar_month=1))["sm_mobile"].sum()

    assert abs(december_over_january(seasoned) - truth) < abs(december_over_january(plain) - truth)
    assert december_over_january(seasoned) == pytest.approx(truth, rel=0.05)
    with_index = seasoned.predict(oot, calibrated=False)["sm_mobile"]
    index, seasoned.seasons = seasoned.seasons, {}
    trees = seasoned.predict(oot, calibrated=False)["sm_mobile"]
    seasoned.seasons = index
    months = oot["target_calendar_month"].to_numpy()
    np.testing.assert_allclose(with_index, trees * index["sm_mobile"].apply(months), rtol=1e-12)
    again = Learner.from_bundle(seasoned.save_bundle(tmp_path / "b"))
    np.testing.assert_allclose(again.predict(oot)["sm_mobile"], seasoned.predict(oot)["sm_mobile"])
    assert again.seasons["sm_mobile"].factors == seasoned.seasons["sm_mobile"].factors


@pytest.fixture(scope="module")
def frames_with_season():
    out = []
    for n, seed in ((1500, 1), (1500, 2), (500, 3), (500, 4)):
        f = frame(n, seed)
        f["target_calendar_month"] = (f["horizon"] % 12) + 1
        f["sm_mobile_fact"] = f["sm_mobile_fact"] * SEASON[f["target_calendar_month"] - 1]
        out.append(f)
    return out
