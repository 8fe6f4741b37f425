"""BdW extension of survival curves: the sBG as its c = 1 case, fit quality, speed, and forecasts of
simulated heterogeneous cohorts against the sBG's."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest
from conftest import CATALOG

from spark_app.cltv import (
    Extrapolation,
    ValueFormula,
    bdw_loglik,
    bdw_survival,
    cltv_columns,
    extend_survival,
    fit_bdw,
    fit_sbg,
    sbg_loglik,
    sbg_survival,
)
from spark_app.config import CostsConfig
from spark_app.months import month_index

DEC = month_index(dt.date(2025, 12, 1))


def _random_params(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(-2, 2, n)), np.exp(rng.uniform(-1, 4, n))


def _noisy_curves(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.clip(np.linspace(0.95, 0.6, 24)[None, :] + rng.normal(0, 0.03, (n, 24)), 0, 1)
    return np.minimum.accumulate(p, axis=1)


def cohort_survival(alpha: float, beta: float, c: float, n_subs: int, rng: np.random.Generator) -> np.ndarray:
    """Share still there after months 1..60 of simulated subscribers: each one churns as a discrete Weibull,
    P(T > t) = (1 - theta)^(t^c), with its own theta ~ Beta(alpha, beta)."""
    theta = rng.beta(alpha, beta, n_subs)
    life = np.ceil((np.log(rng.random(n_subs)) / np.log1p(-theta)) ** (1.0 / c))
    return (life[None, :] > np.arange(1, 61)[:, None]).mean(axis=1)


def test_bdw_with_c_one_is_the_sbg():
    alpha, beta = _random_params(300, 1)
    ones = np.ones(300)
    sbg = sbg_survival(alpha, beta, 60)
    np.testing.assert_allclose(bdw_survival(alpha, beta, ones, 60), sbg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        bdw_loglik(alpha, beta, ones, sbg[:, :24]), sbg_loglik(alpha, beta, sbg[:, :24]), rtol=1e-12
    )
    # an sBG curve is fitted as one: c = 1, the same (alpha, beta) and the same continuation
    fa, fb, fc = fit_bdw(sbg[:, :23])
    np.testing.assert_allclose(fc, 1.0, atol=1e-6)
    np.testing.assert_allclose(fa, alpha, rtol=1e-5)
    np.testing.assert_allclose(fb, beta, rtol=1e-5)
    np.testing.assert_allclose(extend_survival(sbg[:, :24], 60, method="bdw"), sbg, rtol=1e-6)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_bdw_fit_recovers_the_parameters_of_exact_bdw_curves(c):
    alpha, beta = _random_params(300, 2)
    fa, fb, fc = fit_bdw(bdw_survival(alpha, beta, np.full(300, c), 24))
    np.testing.assert_allclose(fa, alpha, rtol=1e-3)
    np.testing.assert_allclose(fb, beta, rtol=1e-3)
    np.testing.assert_allclose(fc, c, rtol=1e-3)


@pytest.mark.parametrize("steps", [5, 20, 40])
def test_bdw_likelihood_is_never_below_the_sbg_one_on_the_same_row(steps):
    alpha, beta = _random_params(200, 3)
    curves = np.vstack(
        [
            _noisy_curves(2000, 4),
            sbg_survival(alpha, beta, 24),
            bdw_survival(alpha, beta, np.full(200, 1.7), 24),
            0.97 ** np.arange(1, 25)[None, :],  # geometric
            np.ones((1, 24)),  # no losses
            np.r_[np.full(12, 0.9), np.full(12, 0.5)][None, :],  # step-shaped
        ]
    )
    fitted = bdw_loglik(*fit_bdw(curves, steps=steps), curves)
    sbg = sbg_loglik(*fit_sbg(curves, steps=steps), curves)
    assert np.isfinite(fitted).all()
    assert (fitted >= sbg - 1e-9).all()  # the sBG fit is BdW's start; only rounding may differ
    assert np.mean(fitted > sbg + 1e-6) > 0.5  # and the extra shape parameter is used


def test_bdw_survival_is_a_survival_curve_even_at_the_bounds():
    rng = np.random.default_rng(5)
    n = 2000
    alpha = np.exp(rng.uniform(-6, 10, n))
    beta = np.exp(rng.uniform(-6, 12, n))
    c = np.exp(rng.uniform(np.log(0.2), np.log(5.0), n))
    s = bdw_survival(alpha, beta, c, 60)
    assert np.isfinite(s).all()
    assert ((s >= 0) & (s <= 1)).all()
    assert (np.diff(s, axis=1) <= 0).all()


def test_bdw_extension_of_noisy_curves_gives_finite_non_increasing_tails():
    rng = np.random.default_rng(5)
    p = np.clip(np.linspace(0.95, 0.6, 24)[None, :] + rng.normal(0, 0.05, (200, 24)), 0, 1)
    ext = extend_survival(p, 60, method="bdw")
    np.testing.assert_array_equal(ext[:, :24], p)
    assert np.isfinite(ext).all()
    assert ((ext >= 0) & (ext <= 1)).all()
    assert (np.diff(ext[:, 23:], axis=1) <= 1e-12).all()
    assert (ext[:, 24] <= p[:, 23] + 1e-12).all()


def test_bdw_extension_of_a_flat_curve_stays_flat_and_of_a_geometric_one_geometric():
    r = 0.97
    curves = np.vstack([np.full((1, 24), 0.8), np.ones((1, 24)), r ** np.arange(1, 25)[None, :]])
    ext = extend_survival(curves, 60, method="bdw")
    np.testing.assert_allclose(ext[0, 24:], 0.8, rtol=1e-6)
    np.testing.assert_allclose(ext[1, 24:], 1.0, rtol=1e-6)
    np.testing.assert_allclose(ext[2, 24:], r ** np.arange(25, 61), rtol=2e-3)


def test_a_curve_with_gaps_stays_unknown_without_spoiling_the_batch():
    p = np.vstack([np.linspace(0.95, 0.6, 24), np.r_[np.full(5, np.nan), np.linspace(0.9, 0.6, 19)]])
    with np.errstate(invalid="ignore"):
        ext = extend_survival(p, 60, method="bdw")
    assert np.isfinite(ext[0]).all()
    assert np.isnan(ext[1, 24:]).all()


def test_bdw_fits_twenty_thousand_curves_quickly():
    """Production-sized batch, wide parameter range (the slow end: heterogeneity together with c > 1)."""
    rng = np.random.default_rng(6)
    n = 20_000
    alpha, beta = _random_params(n, 7)
    c = np.exp(rng.uniform(np.log(0.4), np.log(2.5), n))
    curves = bdw_survival(alpha, beta, c, 24)
    start = time.perf_counter()
    fa, fb, fc = fit_bdw(curves, steps=Extrapolation().newton_steps)
    elapsed = time.perf_counter() - start
    print(f"fit_bdw: {n} rows x 24 months in {elapsed:.2f} s")
    assert elapsed < 10.0
    assert np.isfinite(fa).all() and np.isfinite(fb).all() and np.isfinite(fc).all()


# Beta(alpha, beta) propensities of four cohorts per truth c: retention after two years between 0.3 and 0.6
COHORTS = {
    0.6: [(0.5, 3.0), (1.0, 8.0), (2.0, 10.0), (0.3, 2.0)],
    1.0: [(0.5, 6.0), (1.0, 15.0), (2.0, 30.0), (0.3, 3.0)],
    1.6: [(0.5, 30.0), (1.0, 80.0), (2.0, 200.0), (0.3, 15.0)],
}


def forecast_errors(c: float, seed: int = 2018, n_subs: int = 200_000) -> dict[str, float]:
    """Mean absolute error of S(25..60) of simulated cohorts, fitted on their S(1..24): directly (`sbg`,
    `bdw`) and through extend_survival, which conditions on month 1 as scoring does (`*_extend`)."""
    rng = np.random.default_rng(seed)
    truth = np.array([cohort_survival(a, b, c, n_subs, rng) for a, b in COHORTS[c]])
    seen, later = truth[:, :24], truth[:, 24:]
    forecasts = {
        "sbg": sbg_survival(*fit_sbg(seen), 60),
        "bdw": bdw_survival(*fit_bdw(seen), 60),
        "sbg_extend": extend_survival(seen, 60, method="sbg"),
        "bdw_extend": extend_survival(seen, 60, method="bdw"),
    }
    return {k: float(np.abs(f[:, 24:] - later).mean()) for k, f in forecasts.items()}


@pytest.mark.parametrize("c", [0.6, 1.6])
def test_bdw_forecasts_cohorts_with_tenure_dependent_churn_better_than_sbg(c):
    err = forecast_errors(c)
    print(f"c = {c}: {err}")
    assert err["bdw"] < 0.25 * err["sbg"]
    assert err["bdw"] < 0.005
    assert err["bdw_extend"] < 0.7 * err["sbg_extend"]


def test_bdw_forecasts_sbg_cohorts_about_as_well_as_sbg():
    err = forecast_errors(1.0)
    print(f"c = 1.0: {err}")
    assert abs(err["bdw"] - err["sbg"]) < 0.002
    assert abs(err["bdw_extend"] - err["sbg_extend"]) < 0.002


def test_extrapolation_method_is_checked_and_sbg_stays_the_default():
    with pytest.raises(ValueError, match=r"Extrapolation\.method: 'weibull'"):
        Extrapolation(method="weibull")
    with pytest.raises(ValueError, match="extend_survival: method 'weibull'"):
        extend_survival(np.full((1, 24), 0.9), 60, method="weibull")
    assert Extrapolation().method == "sbg"


def test_cltv_columns_use_the_configured_method():
    rng = np.random.default_rng(8)
    noisy = np.clip(np.linspace(0.97, 0.55, 24) + rng.normal(0, 0.01, (50, 24)), 0, 1)
    paid = np.minimum.accumulate(noisy, axis=1)
    forecasts = {"paid": paid, "active": np.minimum(1.0, paid + 0.02), "sm_mobile": 30.0 * paid}
    formula = ValueFormula.from_catalog(CATALOG, CostsConfig(overhead_base="paid"))
    default = cltv_columns(forecasts, DEC, formula, Extrapolation(months=60))
    sbg = cltv_columns(forecasts, DEC, formula, Extrapolation(months=60, method="sbg"))
    bdw = cltv_columns(forecasts, DEC, formula, Extrapolation(months=60, method="bdw"))
    assert default.keys() == sbg.keys() == bdw.keys()
    for name in default:
        np.testing.assert_array_equal(default[name], sbg[name])
    np.testing.assert_array_equal(default["cltv_24m"], bdw["cltv_24m"])  # forecast months untouched
    expected = extend_survival(paid, 60, steps=Extrapolation().newton_steps, method="bdw")[:, 59]
    np.testing.assert_array_equal(bdw["p_paid_60m"], expected)
    assert not np.array_equal(bdw["p_paid_60m"], sbg["p_paid_60m"])
