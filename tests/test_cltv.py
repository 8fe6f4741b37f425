"""CLTV arithmetic: sBG fit and extrapolation, discounting, and the CLTV formula on hand-made forecasts."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from conftest import CATALOG

from spark_app.cltv import (
    Extrapolation,
    ValueFormula,
    cltv_columns,
    discount_factors,
    extend_amount,
    extend_survival,
    fit_sbg,
    sbg_survival,
)
from spark_app.config import CostsConfig
from spark_app.horizons import target_calendar_months
from spark_app.months import forecast_days, month_index

# Fader & Hardie (2007), "How to project customer retention", Table 1: % alive at the end of years 1..7.
REGULAR = [63.1, 46.8, 38.2, 32.6, 28.9, 26.2, 24.1]
HIGH_END = [86.9, 74.3, 65.3, 59.3, 55.1, 51.7, 49.1]
COSTS = CostsConfig(
    cost_per_gb=0.5,
    cost_per_minute=0.01,
    overhead_sb=1.0,
    overhead_ga=0.5,
    overhead_am=0.5,
    overhead_base="paid",
    annual_discount_rate=0.12,
)
RATES = ValueFormula.from_catalog(CATALOG, COSTS)
DEC = month_index(dt.date(2025, 12, 1))


def test_sbg_fit_reproduces_the_papers_regular_and_high_end_cohorts():
    alpha, beta = fit_sbg(np.array([REGULAR, HIGH_END]) / 100)
    # The paper reports alpha = 0.704, beta = 1.182 (regular) and alpha = 0.668, beta = 3.806 (high end).
    np.testing.assert_allclose(alpha, [0.704, 0.668], atol=2e-3)
    np.testing.assert_allclose(beta, [1.182, 3.806], atol=2e-3)


def test_sbg_fit_recovers_the_parameters_of_exact_sbg_curves():
    rng = np.random.default_rng(3)
    alpha = np.exp(rng.uniform(-2, 2, 500))
    beta = np.exp(rng.uniform(-1, 4, 500))
    fa, fb = fit_sbg(sbg_survival(alpha, beta, 23))
    np.testing.assert_allclose(fa, alpha, rtol=1e-5)
    np.testing.assert_allclose(fb, beta, rtol=1e-5)


def test_sbg_survival_closed_form():
    # alpha = beta = 1: theta ~ U(0,1), S(t) = 1 / (t + 1)
    s = sbg_survival(np.array([1.0]), np.array([1.0]), 10)
    np.testing.assert_allclose(s[0], 1.0 / np.arange(2, 12))


def test_extension_of_an_sbg_curve_is_its_own_continuation():
    alpha, beta = np.array([0.7, 2.0, 0.3]), np.array([1.2, 15.0, 40.0])
    truth = sbg_survival(alpha, beta, 60)
    extended = extend_survival(truth[:, :24], 60)
    np.testing.assert_array_equal(extended[:, :24], truth[:, :24])
    np.testing.assert_allclose(extended, truth, rtol=1e-6)


def test_extension_of_a_geometric_curve_stays_geometric_and_a_flat_one_flat():
    r = 0.97
    geometric = r ** np.arange(1, 25)[None, :]
    flat = np.full((1, 24), 0.8)
    ext = extend_survival(np.vstack([geometric, flat]), 60)
    np.testing.assert_allclose(ext[0, 24:], r ** np.arange(25, 61), rtol=2e-3)
    np.testing.assert_allclose(ext[1, 24:], 0.8, rtol=1e-3)


def test_heterogeneous_retention_gives_a_fatter_tail_than_a_geometric_one():
    truth = sbg_survival(np.array([0.7]), np.array([1.2]), 60)
    ext = extend_survival(truth[:, :24], 60)
    last_rate = truth[0, 23] / truth[0, 22]
    assert ext[0, 59] > truth[0, 23] * last_rate**36 * 1.05


def test_noisy_rising_curves_give_finite_non_increasing_tails():
    rng = np.random.default_rng(5)
    p = np.clip(np.linspace(0.95, 0.6, 24)[None, :] + rng.normal(0, 0.05, (200, 24)), 0, 1)
    ext = extend_survival(p, 60)
    assert np.isfinite(ext).all()
    assert (np.diff(ext[:, 23:], axis=1) <= 1e-12).all()
    assert (ext[:, 24] <= p[:, 23] + 1e-12).all()


def test_amount_extension_keeps_per_survivor_level_and_bounds_the_trend():
    p = np.vstack([np.linspace(0.9, 0.5, 24)] * 3)
    p_ext = extend_survival(p, 60)
    per_survivor = np.vstack([np.full(24, 2.0), np.where(np.arange(24) < 12, 1.0, 3.0), np.full(24, -1.0)])
    ext = extend_amount(per_survivor * p, p, p_ext, Extrapolation(months=60, trend_floor=0.8, trend_cap=1.25))
    np.testing.assert_allclose(ext[:, :24], per_survivor * p)
    np.testing.assert_allclose(ext[0, 24:], 2.0 * p_ext[0, 24:])  # flat level, no trend
    h = np.arange(25, 61)
    np.testing.assert_allclose(ext[1, 24:], 3.0 * 1.25 ** ((h - 18.5) / 12) * p_ext[1, 24:])  # capped trend
    np.testing.assert_allclose(ext[2, 24:], -1.0 * p_ext[2, 24:])  # negative level: no trend


def test_discounting_and_calendar():
    np.testing.assert_allclose(discount_factors(12, 0.1)[[0, 11]], [1.1 ** (-1 / 12), 1 / 1.1])
    jan = month_index(dt.date(2024, 1, 1))
    np.testing.assert_array_equal(forecast_days(jan, 3), [29, 31, 30])  # Feb 2024 is a leap month
    np.testing.assert_array_equal(target_calendar_months(month_index(dt.date(2024, 11, 1)), 3), [12, 1, 2])


def _two_subscribers() -> dict[str, np.ndarray]:
    """Constant forecasts: subscriber A stays for sure, B is in the paid base with probability 0.5."""
    paid = np.vstack([np.ones(24), np.full(24, 0.5)])
    active = np.vstack([np.ones(24), np.full(24, 0.6)])
    days = forecast_days(DEC, 24)
    daily = {
        "sm_mobile": [3.0, 1.0],
        "sm_fmc": [0.5, 0.0],
        "sm_fttb": [0.0, 2.0],
        "data_gb": [0.2, 0.1],
        "voice_min": [10.0, 4.0],
        "sac": [0.4, 0.0],
    }
    out = {"paid": paid, "active": active}
    for model_id, values in daily.items():
        out[model_id] = np.asarray(values)[:, None] * days[None, :]
    return out


def test_cltv_by_hand_over_24_months():
    forecasts = _two_subscribers()
    cols = cltv_columns(forecasts, DEC, RATES, Extrapolation(months=24))
    expected = []
    for i in range(2):
        total = 0.0
        for h in range(24):
            month = dt.date(2026 + h // 12, h % 12 + 1, 1)  # T+1 = 2026-01
            days = (dt.date(month.year + month.month // 12, month.month % 12 + 1, 1) - month).days
            d = 1.12 ** (-(h + 1) / 12)
            sm = sum(forecasts[m][i, h] for m in ("sm_mobile", "sm_fmc", "sm_fttb"))
            assert forecasts["sm_mobile"][i, h] == pytest.approx([3.0, 1.0][i] * days)
            costs = (
                forecasts["sac"][i, h]
                + forecasts["data_gb"][i, h] * 0.5
                + forecasts["voice_min"][i, h] * 0.01
                + 2.0 * forecasts["paid"][i, h]
            )
            total += d * (sm - costs)
        expected.append(total)
    np.testing.assert_allclose(cols["cltv"], expected, rtol=1e-12)
    np.testing.assert_allclose(cols["cltv_24m"], expected, rtol=1e-12)


def test_cltv_over_60_months_is_the_sum_of_its_discounted_components():
    forecasts = _two_subscribers()
    cols = cltv_columns(forecasts, DEC, RATES, Extrapolation(months=60))
    parts = cols["sm_mobile_60m"] + cols["sm_fmc_60m"] + cols["sm_fttb_60m"]
    parts -= cols["sac_60m"] + cols["data_cost_60m"] + cols["voice_cost_60m"] + cols["overheads_60m"]
    np.testing.assert_allclose(cols["cltv"], parts, rtol=1e-12)
    # flat survival stays flat, so subscriber A's overheads are 2.0 a month for 60 months, discounted
    np.testing.assert_allclose(cols["overheads_60m"][0], 2.0 * discount_factors(60, 0.12).sum(), rtol=1e-6)
    np.testing.assert_allclose(cols["p_paid_60m"], [1.0, 0.5], rtol=1e-6)
    # constant per-survivor margin: months 25..60 earn 3.0 a day
    expected = (3.0 * forecast_days(DEC, 60) * discount_factors(60, 0.12)).sum()
    np.testing.assert_allclose(cols["sm_mobile_60m"][0], expected, rtol=1e-6)
    assert (cols["cltv"] > cols["cltv_24m"]).all()


def test_absent_models_count_as_zero():
    forecasts = _two_subscribers()
    only_survival = {k: forecasts[k] for k in ("paid", "active")}
    cols = cltv_columns(only_survival, DEC, RATES, Extrapolation(months=60))
    np.testing.assert_allclose(cols["cltv"], -cols["overheads_60m"])
    assert (cols["sm_mobile_60m"] == 0).all()
    active_base = ValueFormula.from_catalog(CATALOG, COSTS.model_copy(update={"overhead_base": "active"}))
    cols2 = cltv_columns(only_survival, DEC, active_base, Extrapolation(months=24))
    expected = 2.0 * (only_survival["active"] * discount_factors(24, 0.12)).sum(axis=1)
    np.testing.assert_allclose(cols2["overheads_24m"], expected)


def test_value_formula_sums_the_three_overheads_and_takes_signs_and_unit_costs_from_the_catalog():
    formula = ValueFormula.from_catalog(
        CATALOG, CostsConfig(overhead_sb=1.0, overhead_ga=0.5, overhead_am=0.25)
    )
    assert formula.overhead_per_month == pytest.approx(1.75)
    terms = {t.model_id: (t.component, t.sign, t.unit_cost, t.carrier) for t in formula.terms}
    assert terms["data_gb"] == ("data_cost", -1.0, 0.35, "paid")
    assert terms["sm_fmc"] == ("sm_fmc", 1.0, 1.0, "active")
    assert formula.nesting == (("paid", "active"),)
    # one value of a month, whoever evaluates it (scoring on numpy, the backtest on Spark columns)
    month = {"sm_mobile": 30.0, "data_gb": 10.0, "sac": 5.0, "paid": 0.5}
    assert formula.monthly_value(month.__getitem__, set(month)) == pytest.approx(30 - 3.5 - 5 - 0.5 * 1.75)


def test_active_survival_never_falls_below_paid_survival():
    """The paid base is inside the active base: crossing classifier outputs are lifted, not trusted."""
    forecasts = _two_subscribers()
    horizon = forecasts["paid"].shape[1]
    # subscriber B's active classifier under-predicts: 0.4 against a paid probability of 0.5
    forecasts["active"] = forecasts["active"].copy()
    forecasts["active"][1] = np.full(horizon, 0.4)
    cols = cltv_columns(forecasts, DEC, RATES, Extrapolation(months=60))
    for point in (12, 24, 60):
        assert (cols[f"p_active_{point}m"] >= cols[f"p_paid_{point}m"] - 1e-12).all()
    np.testing.assert_allclose(cols["p_active_60m"][1], cols["p_paid_60m"][1], rtol=1e-9)
    parts = cols["sm_mobile_60m"] + cols["sm_fmc_60m"] + cols["sm_fttb_60m"]
    parts -= cols["sac_60m"] + cols["data_cost_60m"] + cols["voice_cost_60m"] + cols["overheads_60m"]
    np.testing.assert_allclose(cols["cltv"], parts, rtol=1e-12)


def test_value_at_risk_is_what_churn_takes_from_a_survivors_value():
    """One subscriber, one amount carried by one base: a survivor's amount 10 a month, survival 0.8 then
    0.5 — churn takes 10 × 0.2 + 10 × 0.5; overheads 1 a month are saved for the churned, so risk is less."""
    from spark_app.cltv import ValueTerm, value_at_risk

    formula = ValueFormula((ValueTerm("m", "m", 1.0, 1.0, "s"),), ("s",), (), "s", 1.0, 0.1)
    forecasts = {"s": np.array([[0.8, 0.5]]), "m": np.array([[8.0, 5.0]])}
    assert value_at_risk(forecasts, formula)[0] == pytest.approx(2.0 + 5.0 - (0.2 + 0.5))
    assert value_at_risk({"s": np.array([[0.0]]), "m": np.array([[0.0]])}, formula)[0] == pytest.approx(-1.0)
