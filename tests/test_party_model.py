"""What a release fits about parties at training (issue 22 steps 3 and 4): the share of joint exits per
level and the party intervals, from held-out rows simulated here with a known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spark_app.parties import (
    FEATURE_MONTH_COL,
    FORECAST_CUM,
    HOUSEHOLD,
    PERSON,
    PREDICTED_P,
    REALIZED_CUM,
    REALIZED_IN,
    PartyModel,
    fit_party_model,
    with_party_intervals,
)

COLUMN = "p_active_12m"


def held_out(rng: np.random.Generator, households: int, rho: float, horizons: int = 3) -> pd.DataFrame:
    """Households of 1–4 members, each member in the base 12 months on with a calibrated p; with probability
    ρ a household's exit is joint (one draw decides every member), else each member draws alone. Values:
    each member's forecast cumulative value is h × m, realized h × m × a household factor (lognormal)."""
    size = rng.integers(1, 5, households)
    hh = np.repeat(np.arange(households), size)
    n = len(hh)
    p = rng.uniform(0.55, 0.95, n)
    shared = rng.uniform(size=households)[hh]
    joint = (rng.uniform(size=households) < rho)[hh]
    u = np.where(joint, shared, rng.uniform(size=n))
    stayed = (u < p).astype(float)
    level = rng.uniform(5.0, 40.0, n)
    factor = np.exp(rng.normal(0.0, 0.3, households))[hh]
    frame = {
        FEATURE_MONTH_COL: np.full(n, "2025-01"),
        PERSON: [f"p{i}" for i in range(n)],
        HOUSEHOLD: [f"h{j}" for j in hh],
        PREDICTED_P.format(column=COLUMN): p,
        REALIZED_IN.format(column=COLUMN): stayed,
    }
    for h in range(1, horizons + 1):
        frame[FORECAST_CUM.format(h=h)] = h * level
        frame[REALIZED_CUM.format(h=h)] = h * level * factor
    return pd.DataFrame(frame)


@pytest.mark.parametrize("rho", [0.2, 0.7])
def test_the_share_of_joint_exits_is_recovered_per_level(rho):
    rows = held_out(np.random.default_rng(5), 6000, rho)
    model = fit_party_model(rows, 3, {COLUMN: 12}, (0.8,))
    assert model.rho["household"][COLUMN] == pytest.approx(rho, abs=0.08)
    # every person here holds one line: a person's survival says nothing about joint exits
    assert model.parties["person"] == len(rows)


def test_party_intervals_cover_new_parties_at_their_level():
    fitted = fit_party_model(held_out(np.random.default_rng(1), 3000, 0.5), 3, {COLUMN: 12}, (0.5, 0.8, 0.9))
    fresh = held_out(np.random.default_rng(2), 3000, 0.5)
    households = fresh.groupby(HOUSEHOLD)[[FORECAST_CUM.format(h=3), REALIZED_CUM.format(h=3)]].sum()
    forecast, realized = households.to_numpy().T
    for level in (0.5, 0.8, 0.9):
        lower, upper = fitted.edges("household", level, 3)
        covered = (realized >= forecast + forecast * lower) & (realized <= forecast + forecast * upper)
        assert covered.mean() == pytest.approx(level, abs=0.03)


def test_a_horizon_nobody_has_realized_gets_no_edges_and_the_model_survives_json():
    rows = held_out(np.random.default_rng(3), 500, 0.5)
    rows[REALIZED_CUM.format(h=3)] = np.nan  # not observable yet
    model = fit_party_model(rows, 3, {COLUMN: 12}, (0.8,))
    assert model.edges("household", 0.8, 2) is not None
    assert model.edges("household", 0.8, 3) is None
    assert PartyModel.from_json(model.to_json()) == model


def test_party_bounds_scale_the_value_and_cltv_like_a_subscribers(spark):
    model = PartyModel(
        rho={}, lower={"household": {"0.8": [None] * 11 + [-0.5] + [None] * 11 + [-0.25]}},
        upper={"household": {"0.8": [None] * 11 + [0.5] + [None] * 11 + [0.25]}}, parties={"household": 99},
    )  # fmt: skip
    rows = spark.createDataFrame(
        [("h1", 2, 100.0, 200.0, 800.0), ("h2", 1, 100.0, 200.0, -50.0)],
        "party_id string, members int, value_12m double, value_24m double, cltv double",
    )
    got = {r.party_id: r for r in with_party_intervals(rows, model, "household", 0.8, 24).collect()}
    assert (got["h1"].value_12m_lower, got["h1"].value_12m_upper) == (50.0, 150.0)
    assert (got["h1"].value_24m_lower, got["h1"].value_24m_upper) == (150.0, 250.0)
    # cltv / value_24m = 4 is bounded to 2.5: 800 ± 2.5 × 50
    assert (got["h1"].cltv_lower, got["h1"].cltv_upper) == (675.0, 925.0)
    assert (got["h2"].cltv_lower, got["h2"].cltv_upper) == (-100.0, 0.0)  # ratio 1 where cltv ≤ 0
    without = with_party_intervals(rows, None, "household", 0.8, 24).first()
    assert np.isnan(without.cltv_lower) and np.isnan(without.value_12m_upper)


def test_a_release_reading_party_features_refuses_to_score_without_parties():
    from spark_app.catalog import PARTY_HOUSEHOLD_LINES, ModelCatalog, ModelEntry
    from spark_app.errors import EXIT_USER_ERROR
    from spark_app.scoring import ScoringError, check_party_inputs

    reads = ModelCatalog((ModelEntry("paid", "classification", "f", ("tenure", PARTY_HOUSEHOLD_LINES)),))
    with pytest.raises(ScoringError, match=r"party_household_lines.*set paths\.parties") as refused:
        check_party_inputs(reads, 7, with_parties=False, model=None)
    assert refused.value.exit_code == EXIT_USER_ERROR
    check_party_inputs(reads, 7, with_parties=True, model=None)  # a warning, not an error
    plain = ModelCatalog((ModelEntry("paid", "classification", "f", ("tenure",)),))
    check_party_inputs(plain, 7, with_parties=False, model=None)


def test_party_intervals_are_fitted_per_size_so_single_lines_and_families_both_hold():
    """One line's value varies relatively more than a family's (its deviations do not average out):
    pooled edges would under-cover single lines and over-cover families; edges per size hold for both."""

    def draw(seed: int) -> pd.DataFrame:
        rows = held_out(np.random.default_rng(seed), 4000, 0.5)
        size = rows.groupby(HOUSEHOLD)[HOUSEHOLD].transform("size").to_numpy()
        noise = np.random.default_rng(seed + 100).normal(0.0, 1.0, len(rows))
        for h in (1, 2, 3):
            forecast = rows[FORECAST_CUM.format(h=h)]
            rows[REALIZED_CUM.format(h=h)] = forecast * np.exp(np.where(size == 1, 0.6, 0.15) * noise)
        return rows

    model = fit_party_model(draw(1), 3, {COLUMN: 12}, (0.8,))
    fresh = draw(2)
    sums = fresh.groupby(HOUSEHOLD).agg(
        n=(HOUSEHOLD, "size"), f=(FORECAST_CUM.format(h=3), "sum"), a=(REALIZED_CUM.format(h=3), "sum")
    )
    for size in ("1", "3"):
        rows = sums[sums["n"] == int(size)]
        for edges, expect_ok in ((model.edges("household", 0.8, 3, size), True),
                                 (model.edges("household", 0.8, 3), False)):  # fmt: skip
            lower, upper = edges
            covered = ((rows["a"] >= rows["f"] * (1 + lower)) & (rows["a"] <= rows["f"] * (1 + upper))).mean()
            assert (abs(covered - 0.8) <= 0.04) == expect_ok, (size, edges, covered)


def test_the_bias_noise_counts_households_when_their_members_leave_together():
    """Members of a household leave together: the spread of the aggregate bias over repeated samples is
    what the cluster-robust SE says, and well above what rows taken as independent say."""
    from spark_app.evaluation import agg_bias, agg_bias_se, cumulative_bias

    rng = np.random.default_rng(11)
    households, biases, naive_se, robust_se, cum_se = 800, [], [], [], []
    for _ in range(300):
        size = rng.integers(1, 6, households)
        hh = np.repeat(np.arange(households), size)
        stay = (rng.uniform(size=households) < 0.8)[hh].astype(float)  # one draw per household
        f = np.full(len(hh), 0.8)
        biases.append(agg_bias(stay, f))
        naive_se.append(agg_bias_se(stay, f))
        robust_se.append(agg_bias_se(stay, f, hh))
        horizons = rng.integers(1, 4, len(hh))
        cum_se.append(cumulative_bias(horizons, f, stay, 3, hh)[1])
    spread = np.std(biases)
    assert np.mean(robust_se) == pytest.approx(spread, rel=0.15)
    assert np.mean(cum_se) == pytest.approx(spread, rel=0.2)
    assert np.mean(naive_se) < 0.75 * spread
