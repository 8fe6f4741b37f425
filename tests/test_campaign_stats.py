"""The campaign splitter and estimators (spark_app.campaigns.split, .stats) on small arrays: no Spark."""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from spark_app.campaigns import split
from spark_app.campaigns.stats import (
    Cells,
    CovariateCells,
    CovariateUnits,
    Estimate,
    Units,
    aa_simulation,
    balance,
    cuped,
    holm,
    mde,
    p_above,
    relative_lift,
    srm_p_value,
    stratified_difference,
    unit_variance,
    uplift_by_decile,
    uplift_from_cells,
    wilson_interval,
)

INT64 = np.iinfo(np.int64)


def hashes(n: int, seed: int = 0) -> np.ndarray:
    """Stand-ins for Spark's xxhash64(subscriber_id): arbitrary int64, negative ones included."""
    return np.random.default_rng(seed).integers(INT64.min, INT64.max, size=n, dtype=np.int64)


def salts(count: int, name: str = "aa") -> list[int]:
    return [split.salt64(f"{name}-{i}") for i in range(count)]


def cells(rows: dict[int, list[float]]) -> Cells:
    """One group's Cells from {stratum: outcomes}."""
    strata = np.concatenate([[s] * len(v) for s, v in rows.items()]).astype(int)
    y = np.concatenate([v for v in rows.values()]).astype(float)
    return Cells.of(strata, y, max(rows) + 1)


# ---------------------------------------------------------------- splitter
def test_salt64_is_the_first_8_bytes_of_sha256():
    digest = hashlib.sha256(b"winback_2025_06").digest()
    assert split.salt64("winback_2025_06") == int.from_bytes(digest[:8], "big")
    assert 0 <= split.salt64("x") < 2**64
    assert split.salt64("a") != split.salt64("b")


def test_unit_is_the_splitmix64_finalizer():
    # splitmix64 seeded with 0 first finalizes 0x9E3779B97F4A7C15 into 0xE220A8397B1DCDAF
    golden = np.array([0x9E3779B97F4A7C15], dtype=np.uint64).view(np.int64)
    assert split.unit(golden, 0)[0] == (0xE220A8397B1DCDAF >> 11) / 2**53

    def reference(h: int, salt: int) -> float:
        x = (h % 2**64) ^ salt
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) % 2**64
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) % 2**64
        x ^= x >> 31
        return (x >> 11) / 2**53

    h = hashes(50, seed=3)
    salt = split.salt64("ref")
    assert split.unit(h, salt).tolist() == [reference(int(v), salt) for v in h]


def test_a_subscribers_group_depends_only_on_its_hash_and_the_salt():
    h, salt = hashes(10_000), split.salt64("c1")
    u = split.unit(h, salt)
    assert np.array_equal(u, split.unit(h.copy(), salt))
    assert np.array_equal(split.unit(h[::-1], salt), u[::-1])  # order does not matter
    assert np.array_equal(split.unit(h[:37], salt), u[:37])  # nor who else is in the list
    assert not np.array_equal(split.unit(h, salt + 1), u)


def test_unit_is_uniform_on_100k():
    u = split.unit(hashes(100_000, seed=1), split.salt64("uniform"))
    assert u.min() >= 0 and u.max() < 1
    assert sps.kstest(u, "uniform").pvalue > 0.01


def test_sequential_hashes_still_give_uniform_draws():
    u = split.unit(np.arange(100_000, dtype=np.int64), 0)
    assert sps.kstest(u, "uniform").pvalue > 0.01


def test_splits_of_two_salts_are_independent():
    h = hashes(100_000, seed=2)
    a, b = split.unit(h, split.salt64("s1")), split.unit(h, split.salt64("s2"))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.015  # se ≈ 0.003
    ca, cb = split.is_control(a, 0.5), split.is_control(b, 0.5)
    assert abs((ca & cb).mean() - 0.25) < 0.01
    near = split.unit(h, 1), split.unit(h, 2)  # adjacent salts too
    assert abs(np.corrcoef(*near)[0, 1]) < 0.015


@pytest.mark.parametrize("share", [0.05, 0.1, 0.5])
def test_is_control_takes_the_control_share(share):
    c = split.is_control(split.unit(hashes(100_000, seed=4), split.salt64("share")), share)
    assert c.dtype == bool
    assert abs(c.mean() - share) < 4 * math.sqrt(share * (1 - share) / 100_000)


def test_is_control_takes_a_share_per_subscriber():
    u = np.array([0.05, 0.05, 0.3, 0.3])
    assert split.is_control(u, np.array([0.1, 0.01, 0.5, 0.2])).tolist() == [True, False, True, False]


# ---------------------------------------------------------------- stratified difference
def test_stratified_difference_matches_a_hand_computation_on_two_strata():
    # stratum 0: T [1,2,3] (mean 2, s² 1), C [0,2] (mean 1, s² 2)
    # stratum 1: T [5,7] (mean 6, s² 2), C [4,4,4,8] (mean 5, s² 4)
    treated = cells({0: [1, 2, 3], 1: [5, 7]})
    control = cells({0: [0, 2], 1: [4, 4, 4, 8]})
    est = stratified_difference(treated, control)
    w0, w1 = 5 / 11, 6 / 11
    assert est.diff == pytest.approx(w0 * 1 + w1 * 1)
    assert est.se**2 == pytest.approx(w0**2 * (1 / 3 + 2 / 2) + w1**2 * (2 / 2 + 4 / 4))  # 316/363
    assert est.mean_treated == pytest.approx(46 / 11)
    assert est.mean_control == pytest.approx(35 / 11)
    assert est.se_control**2 == pytest.approx(61 / 121)
    assert est.z == pytest.approx(est.diff / est.se)
    assert est.p_value == pytest.approx(2 * sps.norm.sf(est.z))
    assert est.ci_low == pytest.approx(est.diff - 1.959964 * est.se, abs=1e-6)
    assert est.ci_high == pytest.approx(est.diff + 1.959964 * est.se, abs=1e-6)
    assert (est.strata, est.n_treated, est.n_control) == (2, 5, 6)
    wide = stratified_difference(treated, control, level=0.99)
    assert wide.ci_high - wide.ci_low == pytest.approx(2 * 2.575829 * est.se, abs=1e-6)


def test_a_binary_outcome_has_the_variance_p_times_1_minus_p_times_n_over_n_minus_1():
    est = stratified_difference(cells({0: [1, 1, 0, 0, 0]}), cells({0: [1, 0, 0, 0]}))
    # T: p 0.4, s² 0.24·5/4 = 0.3; C: p 0.25, s² 0.1875·4/3 = 0.25
    assert est.diff == pytest.approx(0.15)
    assert est.se == pytest.approx(math.sqrt(0.3 / 5 + 0.25 / 4))  # 0.35


def test_a_stratum_with_fewer_than_2_per_group_is_left_out():
    treated = cells({0: [1, 2, 3], 1: [50, 70]})
    control = cells({0: [0, 2], 1: [40]})  # one control in stratum 1
    alone = stratified_difference(cells({0: [1, 2, 3]}), cells({0: [0, 2]}))
    est = stratified_difference(treated, control)
    assert (est.strata, est.n_treated, est.n_control) == (1, 3, 2)
    assert est.diff == pytest.approx(alone.diff) and est.se == pytest.approx(alone.se)


def test_no_stratum_kept_gives_nan_not_an_error():
    est = stratified_difference(cells({0: [1], 1: [2, 3]}), cells({0: [0, 1], 1: [5]}))
    assert est.strata == 0 and math.isnan(est.diff) and math.isnan(est.p_value)


def test_a_constant_outcome_gives_a_nan_p_value():
    est = stratified_difference(cells({0: [1, 1, 1]}), cells({0: [1, 1]}))
    assert est.diff == 0 and est.se == 0 and math.isnan(est.p_value) and math.isnan(est.z)


def test_post_stratification_removes_the_between_stratum_variance():
    rng = np.random.default_rng(5)
    strata = rng.integers(0, 10, 20_000)
    y = 10.0 * strata + rng.normal(size=len(strata))  # strata explain nearly all the variance
    c = split.is_control(split.unit(hashes(len(y), seed=5), 7), 0.5)
    stratified = stratified_difference(Cells.of(strata[~c], y[~c], 10), Cells.of(strata[c], y[c], 10))
    naive = stratified_difference(Cells.of(0 * strata[~c], y[~c], 1), Cells.of(0 * strata[c], y[c], 1))
    assert stratified.se < naive.se / 10


def test_relative_lift_by_the_delta_method():
    est = Estimate(2.0, 0.5, 4.0, 6e-5, 1.02, 2.98, 12.0, 10.0, 0.3, 3, 100, 100)
    lift, low, high = relative_lift(est)
    half = 1.959964 * math.sqrt(0.5**2 / 10**2 + 2**2 * 0.3**2 / 10**4)
    assert lift == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-6)
    assert all(math.isnan(v) for v in relative_lift(Estimate(*[1.0] * 7, 0.0, 0.1, 1, 2, 2)))


# ---------------------------------------------------------------- CUPED
def cuped_rows(n: int = 6000, seed: int = 6):
    rng = np.random.default_rng(seed)
    strata = rng.integers(0, 4, n)
    x = rng.gamma(2.0, 5.0, n) + strata
    treated = rng.random(n) < 0.7
    y = 3.0 + 0.8 * x + rng.normal(0, 2.0, n) + 0.5 * treated
    return strata, x, y, treated


def test_cuped_from_aggregates_equals_the_row_by_row_adjustment():
    strata, x, y, t = cuped_rows()
    adj_t, adj_c, theta, reduction = cuped(
        CovariateCells.of(strata[t], y[t], x[t], 4), CovariateCells.of(strata[~t], y[~t], x[~t], 4)
    )
    row_theta = np.cov(x, y)[0, 1] / np.var(x, ddof=1)
    y_adj = y - row_theta * (x - x.mean())
    assert theta == pytest.approx(row_theta, rel=1e-10)
    for got, want in ((adj_t, Cells.of(strata[t], y_adj[t], 4)), (adj_c, Cells.of(strata[~t], y_adj[~t], 4))):
        assert np.array_equal(got.n, want.n)
        np.testing.assert_allclose(got.total, want.total, rtol=1e-9)
        np.testing.assert_allclose(got.squares, want.squares, rtol=1e-9)
    assert reduction == pytest.approx(1 - np.var(y_adj, ddof=1) / np.var(y, ddof=1), rel=1e-8)


def test_cuped_reduces_the_variance_when_the_covariate_correlates_with_the_outcome():
    strata, x, y, t = cuped_rows()
    raw_t, raw_c = Cells.of(strata[t], y[t], 4), Cells.of(strata[~t], y[~t], 4)
    adj_t, adj_c, _, reduction = cuped(
        CovariateCells.of(strata[t], y[t], x[t], 4), CovariateCells.of(strata[~t], y[~t], x[~t], 4)
    )
    assert reduction > 0.8
    raw, adjusted = stratified_difference(raw_t, raw_c), stratified_difference(adj_t, adj_c)
    assert adjusted.se < raw.se / 2
    assert abs(adjusted.diff - 0.5) < 3 * adjusted.se  # the effect is kept


def test_cuped_on_an_unrelated_covariate_changes_almost_nothing():
    strata, _, y, t = cuped_rows()
    noise = np.random.default_rng(9).normal(size=len(y))
    *_, reduction = cuped(
        CovariateCells.of(strata[t], y[t], noise[t], 4), CovariateCells.of(strata[~t], y[~t], noise[~t], 4)
    )
    assert 0 <= reduction < 0.005


# ---------------------------------------------------------------- design figures and checks
def test_mde_is_the_closed_form_and_halves_with_four_times_the_subscribers():
    want = (1.959964 + 0.841621) * math.sqrt(0.25 * (1 / 9000 + 1 / 1000))
    assert mde(0.25, 9000, 1000) == pytest.approx(want, rel=1e-6)
    assert mde(0.25, 36_000, 4000) == pytest.approx(mde(0.25, 9000, 1000) / 2)
    assert mde(0.25, 9000, 1000, alpha=0.01, power=0.9) > mde(0.25, 9000, 1000)
    assert math.isnan(mde(0.25, 9000, 0))


def test_wilson_interval_against_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(50, 1000) == pytest.approx((0.0381, 0.0653), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_p_above_is_the_binomial_upper_tail():
    assert p_above(0, 1000, 0.05) == pytest.approx(1.0)
    assert p_above(50, 1000, 0.05) == pytest.approx(sps.binom.sf(49, 1000, 0.05))
    assert p_above(80, 1000, 0.05) < 1e-4


def test_srm_p_value_flags_a_sample_ratio_mismatch():
    assert srm_p_value(600, 400, 0.5) < 1e-6  # chi² = 40
    assert srm_p_value(500, 500, 0.5) == pytest.approx(1.0)
    assert srm_p_value(100, 900, 0.1) == pytest.approx(1.0)
    assert srm_p_value(0, 0, 0.1) == 1.0
    assert srm_p_value(0, 100, 0.0) == 1.0 and srm_p_value(1, 99, 0.0) == 0.0


def test_holm_against_a_hand_example():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → made monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.01, float("nan"), 0.04, 0.03, 0.005])  # NaN is not counted in m
    assert math.isnan(got[1]) and [got[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


# ---------------------------------------------------------------- A/A simulation
def test_the_aa_false_positive_rate_on_pure_noise_is_alpha():
    rng = np.random.default_rng(12)
    n = 20_000
    strata = rng.integers(0, 10, n)
    y = (rng.random(n) < 0.05 + 0.03 * strata).astype(float)  # churn-like, rate varies by stratum
    got = aa_simulation(hashes(n, seed=12), strata, y, 0.1, salts(1000), alpha=0.05)
    low, high = sps.binom.interval(0.999, 1000, 0.05)
    assert got.splits == 1000 and low <= got.false_positives <= high
    assert got.rate == got.false_positives / 1000
    assert got.ci_low < 0.05 < got.ci_high
    assert got.p_above_alpha == pytest.approx(p_above(got.false_positives, 1000, 0.05))
    assert got.p_above_alpha > 0.001


def test_the_aa_counts_an_outcome_split_by_the_salt_as_false_positives():
    """A test that rejects for the wrong reason is caught: y differs between the groups of one salt."""
    h = hashes(20_000, seed=13)
    the_salts = salts(50)
    y = split.is_control(split.unit(h, the_salts[0]), 0.5).astype(float)
    y += np.random.default_rng(13).normal(size=len(y))
    got = aa_simulation(h, np.zeros(len(y), dtype=int), y, 0.5, the_salts)
    assert got.false_positives >= 1
    assert aa_simulation(h, np.zeros(len(y), dtype=int), np.ones(len(y)), 0.5, the_salts).false_positives == 0


def test_the_aa_on_200k_subscribers_and_1000_splits_is_fast():
    rng = np.random.default_rng(14)
    n = 200_000
    strata = rng.integers(0, 30, n)
    y = rng.gamma(1.0, 20.0, n)
    start = time.perf_counter()
    got = aa_simulation(hashes(n, seed=14), strata, y, 0.1, salts(1000))
    assert time.perf_counter() - start < 20
    assert got.splits == 1000


# ---------------------------------------------------------------- households as the unit (paths.parties)
def households(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lines of `count` households of 1–4 lines, each household in one of 5 strata, whose lines leave
    together (one draw per household, churn 20 %): (household hash per line, stratum per line, outcome)."""
    rng = np.random.default_rng(seed)
    size = rng.integers(1, 5, count)
    unit = np.repeat(hashes(count, seed=seed), size)
    strata = np.repeat(rng.integers(0, 5, count), size)
    stays = np.repeat(rng.random(count) > 0.2, size).astype(float)
    return unit, strata, stays + rng.normal(0, 0.1, len(unit))


def test_units_of_one_line_each_give_the_line_estimate():
    strata, _, y, t = cuped_rows()
    ids = np.arange(len(y))
    lines = stratified_difference(Cells.of(strata[t], y[t], 4), Cells.of(strata[~t], y[~t], 4))
    units = stratified_difference(
        Cells.of(strata[t], y[t], 4, ids[t]), Cells.of(strata[~t], y[~t], 4, ids[~t])
    )
    for field in ("diff", "se", "p_value", "n_treated", "n_control", "strata"):
        assert getattr(units, field) == pytest.approx(getattr(lines, field), rel=1e-10), field
    assert unit_variance(ids, y) == pytest.approx(np.var(y, ddof=1), rel=1e-10)


def test_households_split_whole_need_their_variance_over_households():
    """Lines that leave together and are split by household: the line variance understates the noise (the
    A/A finds ~25 % false positives at alpha 5 %); taken over households, the test holds its level."""
    unit, strata, y = households(3000, seed=31)
    low, high = sps.binom.interval(0.999, 1000, 0.05)
    naive = aa_simulation(unit, strata, y, 0.5, salts(1000))
    assert naive.false_positives > 2 * high
    got = aa_simulation(unit, strata, y, 0.5, salts(1000), clustered=True)
    assert low <= got.false_positives <= high, got
    assert unit_variance(unit, y) > 2 * np.var(y, ddof=1)  # the MDE grows with the design effect


def test_cuped_over_households_equals_the_units_of_the_adjusted_rows():
    unit, strata, y = households(800, seed=32)
    x = y + np.random.default_rng(32).normal(0, 0.5, len(y))
    t = split.is_control(split.unit(unit, split.salt64("t")), 0.5)

    def covariate(rows: np.ndarray) -> CovariateCells:
        base = CovariateCells.of(strata[rows], y[rows], x[rows], 5)
        pieces, index = np.unique(np.stack([strata[rows], unit[rows]]), axis=1, return_inverse=True)
        index = index.reshape(-1)
        m, yu, xu = (np.bincount(index, weights=w) for w in (np.ones(rows.sum()), y[rows], x[rows]))
        add = lambda w=None: np.bincount(pieces[0], weights=w, minlength=5)  # noqa: E731
        units = CovariateUnits(
            add(), add(yu * yu), add(yu * m), add(m * m), add(xu * xu), add(xu * yu), add(xu * m)
        )
        return CovariateCells(base.n, base.y, base.y2, base.x, base.x2, base.xy, units)

    adj_t, adj_c, theta, _ = cuped(covariate(t), covariate(~t))
    y_adj = y - theta * (x - x.mean())
    for got, rows in ((adj_t, t), (adj_c, ~t)):
        want = Units.of(strata[rows], unit[rows], y_adj[rows], 5)
        for field in ("k", "y2", "ym", "m2"):
            np.testing.assert_allclose(getattr(got.units, field), getattr(want, field), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- balance
def test_balance_p_resplit_is_uniform_under_the_null():
    rng = np.random.default_rng(15)
    n, k = 5000, 200
    covariates = {f"x{j}": rng.normal(size=n) for j in range(k)}
    got = balance(hashes(n, seed=15), covariates, 0.2, split.salt64("actual"), salts(200, "resplit"))
    p = np.array([b.p_resplit for b in got])
    assert [b.covariate for b in got] == list(covariates)
    assert 0.4 < p.mean() < 0.6
    assert (p < 0.05).mean() < 0.12
    assert sps.kstest(p, "uniform").pvalue > 0.001


def test_balance_flags_an_actually_unbalanced_split():
    h, salt = hashes(5000, seed=16), split.salt64("actual")
    in_control = split.is_control(split.unit(h, salt), 0.2).astype(float)
    shifted = np.random.default_rng(16).normal(size=len(h)) + 0.3 * in_control
    [b] = balance(h, {"arpu": shifted}, 0.2, salt, salts(200, "resplit"))
    assert b.smd < 0 and b.p_resplit == 0.0 and abs(b.smd) > b.q95


def test_balance_skips_missing_values_per_covariate():
    rng = np.random.default_rng(17)
    h = hashes(4000, seed=17)
    x = rng.normal(size=len(h))
    x[rng.random(len(h)) < 0.3] = np.nan
    ok = ~np.isnan(x)
    args = (0.3, split.salt64("actual"), salts(100))
    [with_nan], [without] = balance(h, {"x": x}, *args), balance(h[ok], {"x": x[ok]}, *args)
    assert with_nan.smd == pytest.approx(without.smd)
    assert with_nan.p_resplit == without.p_resplit and with_nan.q95 == pytest.approx(without.q95)


# ---------------------------------------------------------------- uplift by decile
def planted(effect: np.ndarray, n: int = 50_000, seed: int = 18):
    rng = np.random.default_rng(seed)
    decile = rng.integers(1, 11, n)
    treated = rng.random(n) < 0.5
    y = rng.normal(size=n) + effect[decile - 1] * treated
    return decile, treated, y


def test_uplift_by_decile_recovers_a_planted_decile_effect():
    effect = 1.0 - 0.1 * np.arange(10)
    decile, treated, y = planted(effect)
    rows, _ = uplift_by_decile(decile, treated, y)
    assert [r.decile for r in rows] == list(range(1, 11))
    assert sum(r.n_treated + r.n_control for r in rows) == len(y)
    assert np.abs(np.array([r.lift for r in rows]) - effect).max() < 0.12  # se ≈ 0.028
    cumulative = np.cumsum(effect) / np.arange(1, 11)
    assert np.abs(np.array([r.cumulative_lift for r in rows]) - cumulative).max() < 0.06


def test_qini_is_positive_for_an_effect_in_the_top_deciles_and_zero_for_none():
    top = np.array([1.0, 1.0] + [0.0] * 8)
    _, qini_top = uplift_by_decile(*planted(top))
    _, qini_none = uplift_by_decile(*planted(np.zeros(10)))
    assert qini_top == pytest.approx(0.08, abs=0.02)  # mean of 0.08, 0.16, 0.14, … , 0.02, 0
    assert abs(qini_none) < 0.02


def test_uplift_from_cells_on_a_hand_example_and_as_uplift_by_decile_does():
    # decile 1: T [1, 1], C [0, 0]; decile 2: T [0, 0], C [0, 0]
    rows, qini = uplift_from_cells(
        np.array([2, 1]), np.array([2, 2]), np.array([0.0, 2.0]), np.array([2, 2]), np.array([0.0, 0.0])
    )
    assert [(r.decile, r.lift, r.cumulative_lift) for r in rows] == [(1, 1.0, 1.0), (2, 0.0, 0.5)]
    assert qini == pytest.approx(((0.5 - 0.25) + (0.5 - 0.5)) / 2)
    decile, treated, y = planted(np.linspace(0.5, 0.0, 10), n=3000)
    n_t, n_c = (np.bincount(decile, weights=g, minlength=11)[1:] for g in (treated, ~treated))
    sum_t, sum_c = (np.bincount(decile, weights=y * g, minlength=11)[1:] for g in (treated, ~treated))
    assert uplift_from_cells(np.arange(1, 11), n_t, sum_t, n_c, sum_c) == uplift_by_decile(decile, treated, y)
