"""Per-horizon calibration on hand-made numbers: exact factors, shrinkage of noisy horizons, recovered
logistic shifts, and the round trip through release.json."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spark_app import calibration
from spark_app.calibration import AmountScale, LogisticRecalibration, fit_amount_scale, fit_logistic


def test_factors_are_sum_actual_over_sum_forecast_per_horizon_when_horizons_clearly_differ():
    rng = np.random.default_rng(0)
    pred = rng.uniform(1, 2, 20_000)
    h = np.repeat([1, 2], 10_000)
    y = pred * np.where(h == 1, 1.2, 0.9) * rng.normal(1, 0.01, 20_000)  # barely noisy
    scale = fit_amount_scale(y, pred, h)
    assert scale.overall == pytest.approx(y.sum() / pred.sum())
    assert scale.factors[1] == pytest.approx(1.2, abs=0.002) and scale.factors[2] == pytest.approx(
        0.9, abs=0.002
    )
    calibrated = scale.apply(pred, h)
    for value in (1, 2):  # Σ calibrated forecast = Σ actual on every horizon
        assert calibrated[h == value].sum() == pytest.approx(y[h == value].sum(), rel=1e-3)


def test_a_sparse_noisy_target_keeps_the_overall_factor():
    """Acquisition cost: 1 % of rows non-zero; per-horizon ratios are noise, so they shrink to the overall."""
    rng = np.random.default_rng(1)
    n = 24 * 1_000
    h = np.tile(np.arange(1, 25), 1_000)
    pred = np.full(n, 0.5)
    y = np.where(rng.uniform(size=n) < 0.01, rng.exponential(60.0, n), 0.0)
    scale = fit_amount_scale(y, pred, h)
    raw = np.array([y[h == v].sum() / pred[h == v].sum() for v in range(1, 25)])
    shrunk = np.array([scale.factors[v] for v in range(1, 25)])
    assert np.abs(shrunk - scale.overall).max() < 0.5 * np.abs(raw - scale.overall).max()


def test_factors_stay_within_bounds_and_unseen_horizons_use_the_overall_factor():
    scale = fit_amount_scale(np.array([10.0, 10.0, 1.0]), np.array([1.0, 1.0, 1.0]), np.array([1, 1, 2]))
    assert max(scale.factors.values()) <= calibration.FACTOR_BOUNDS[1]
    assert scale.apply(np.array([3.0]), np.array([7]))[0] == pytest.approx(3.0 * scale.overall)


def test_logistic_recalibration_recovers_a_known_shift_per_horizon():
    rng = np.random.default_rng(2)
    n = 60_000
    h = rng.integers(1, 4, n)
    p = rng.uniform(0.05, 0.95, n)
    # the model is off by these log-odds per horizon (falling: a recalibration never makes a later month
    # more likely in the base, test_survival_intercepts_never_make_a_later_month_more_likely)
    shift = np.array([0.0, 0.7, 0.0, -0.5])[h]
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift)))).astype(float)
    fitted = fit_logistic(y, p, h, ridge=0.0)
    assert fitted.slope == pytest.approx(1.0, abs=0.05)
    assert [fitted.intercepts[k] for k in (1, 2, 3)] == pytest.approx([0.7, 0.0, -0.5], abs=0.06)
    brier = lambda q: np.mean((q - y) ** 2)  # noqa: E731
    assert brier(fitted.apply(p, h)) < brier(p)


def test_calibrations_round_trip_through_json():
    for original in (
        AmountScale({1: 1.1, 24: 0.9}, 1.0),
        LogisticRecalibration({1: -0.2, 2: 0.3}, slope=0.95, overall=0.05),
    ):
        again = calibration.from_json(original.to_json())
        x, hs = np.array([0.2, 0.7, 0.4]), np.array([1, 2, 24])
        np.testing.assert_allclose(again.apply(x, hs), original.apply(x, hs))


def test_a_season_the_model_under_learnt_gets_its_calendar_month_factor():
    """January forecasts 20 % too high on every horizon: the horizon factors stay ~1, January's is 1/1.2."""
    rng = np.random.default_rng(3)
    n = 48_000
    h = rng.integers(1, 25, n)
    month = rng.integers(1, 13, n)
    y = rng.uniform(1, 2, n)
    pred = y * np.where(month == 1, 1.2, 1.0) * rng.normal(1, 0.01, n)
    scale = fit_amount_scale(y, pred, h, month)
    # the horizon factors take the year's average (~1/1.017), January's month factor the rest
    total = scale.factor(h, month)
    assert total[month == 1].mean() == pytest.approx(1 / 1.2, abs=0.01)
    assert total[month != 1].mean() == pytest.approx(1.0, abs=0.01)
    calibrated = scale.apply(pred, h, month)
    for m in (1, 2, 7):
        assert calibrated[month == m].sum() == pytest.approx(y[month == m].sum(), rel=0.01)
    assert calibration.from_json(scale.to_json()).month_factors == scale.month_factors


def test_survival_intercepts_never_make_a_later_month_more_likely():
    from spark_app.calibration import non_increasing

    np.testing.assert_allclose(non_increasing(np.array([1.0, 2.0, 0.5, 0.7, 0.1]), np.ones(5)),
                               [1.5, 1.5, 0.6, 0.6, 0.1])  # fmt: skip
    rng = np.random.default_rng(0)
    h = rng.integers(1, 7, 20_000)
    logit_p = rng.normal(1.0, 1.0, 20_000)
    # true intercepts rise at horizon 4 (noise a free fit would follow): the fit keeps them non-increasing
    shift = np.array([0, 0.3, 0.2, 0.1, 0.25, 0.0, -0.1])[h]
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(logit_p + shift)))).astype(float)
    fitted = calibration.fit_logistic(y, 1 / (1 + np.exp(-logit_p)), h)
    intercepts = [fitted.intercepts[k] for k in sorted(fitted.intercepts)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(intercepts))
