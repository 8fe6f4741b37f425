"""The statistics of a retention campaign: its design (A/A simulation, balance, MDE) and its evaluation.

Groups assigned by a per-subscriber hash (spark_app.campaigns.split) are balanced only in expectation:
one split puts a few more high-value subscribers in control, another a few fewer, and a plain difference
in means carries that luck as noise. The post-stratified estimator compares treatment and control within
each stratum (value-at-risk decile × segment) and weights the strata by their size, so the between-stratum
variance leaves the standard error; CUPED/CUPAC then removes the part of the within-stratum variance a
pre-period covariate (or a model's forecast of it) explains.

The A/A simulation and the evaluation call the very same functions on purpose: the false-positive rate
the design proves on history is the one of the test the evaluation runs, not of a look-alike. Every
estimator takes per-stratum aggregates (counts, sums, sums of squares), so Spark aggregates and the
driver finishes; none needs the rows.

When whole households are randomized (`paths.parties`), the lines of one household are not independent
draws: they share the group and, leaving together, much of the outcome. The variance is then taken over
the randomization units (`Units`: per stratum the households' totals Y_u of their m_u lines), the
linearized variance of a ratio mean, k/(k−1) · Σ_u (Y_u − ȳ·m_u)² / n² — which is the usual s²/n when
every unit is one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from spark_app.campaigns.split import is_control, unit

_NAN = float("nan")


def _z(level: float) -> float:
    """The two-sided normal quantile of a confidence level (1.96 for 0.95)."""
    return float(special.ndtri(0.5 + level / 2))


def _two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


# ---------------------------------------------------------------- post-stratified difference
@dataclass(frozen=True)
class Units:
    """One group's aggregates per stratum over its randomization units (households), each unit u holding
    m_u lines whose outcomes total Y_u: the units k, ΣY_u², ΣY_u·m_u, Σm_u²."""

    k: np.ndarray
    y2: np.ndarray
    ym: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, strata: np.ndarray, unit: np.ndarray, y: np.ndarray, n_strata: int) -> Units:
        """From the rows: stratum code, unit code (equal for the lines of one household) and outcome. A unit
        is a unit within its stratum (the design keeps a household's lines in one stratum)."""
        s, u = np.asarray(strata, dtype=np.int64), np.asarray(unit, dtype=np.int64)
        pieces, index = np.unique(np.stack([s, u]), axis=1, return_inverse=True)
        index = index.reshape(-1)
        m = np.bincount(index).astype(np.float64)
        total = np.bincount(index, weights=np.asarray(y, dtype=np.float64))
        return unit_cells(pieces[0], m, total, n_strata)


def unit_cells(strata: np.ndarray, m: np.ndarray, total: np.ndarray, n_strata: int) -> Units:
    """Units from one row per unit: its stratum code, lines m_u and outcome total Y_u."""
    s = np.asarray(strata, dtype=np.int64)

    def add(w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(s, weights=w, minlength=n_strata).astype(np.float64)

    return Units(add(), add(total * total), add(total * m), add(m * m))


@dataclass(frozen=True)
class Cells:
    """One group's aggregates per stratum (index = stratum code): count, Σy, Σy²; with `units` (whole
    households randomized) the variance is taken over those units instead of the lines."""

    n: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    units: Units | None = None

    @classmethod
    def of(cls, strata: np.ndarray, y: np.ndarray, n_strata: int, unit: np.ndarray | None = None) -> Cells:
        s = np.asarray(strata, dtype=np.int64)
        y = np.asarray(y, dtype=np.float64)
        return cls(
            np.bincount(s, minlength=n_strata),
            np.bincount(s, weights=y, minlength=n_strata),
            np.bincount(s, weights=y * y, minlength=n_strata),
            None if unit is None else Units.of(s, unit, y, n_strata),
        )

    def counts(self) -> np.ndarray:
        """What a stratum's variance is estimated from: its units (households), else its lines."""
        return np.asarray(self.n if self.units is None else self.units.k, dtype=np.float64)


@dataclass(frozen=True)
class Estimate:
    """Treatment − control with its standard error, two-sided normal p-value and confidence interval;
    the counts are of the strata kept (at least 2 subscribers in each group)."""

    diff: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    mean_treated: float
    mean_control: float
    se_control: float
    strata: int
    n_treated: int
    n_control: int


def _means_and_variances(cells: Cells, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per kept stratum: n, mean and sample variance (ddof=1; p(1−p)·n/(n−1) for a 0/1 outcome). With
    units, the variance a line would need for var(mean) = variance / n to hold: k/(k−1) · Σ(Y_u − ȳ·m_u)² / n
    (the ratio mean's linearized variance; the line formula when every unit is one line)."""
    n = np.asarray(cells.n, dtype=np.float64)[keep]
    total = np.asarray(cells.total, dtype=np.float64)[keep]
    mean = total / n
    if cells.units is None:
        squares = np.asarray(cells.squares, dtype=np.float64)[keep]
        return n, mean, np.maximum(squares - total * mean, 0.0) / (n - 1)  # ≥ 0 despite rounding
    u = cells.units
    k, y2, ym, m2 = (np.asarray(a, dtype=np.float64)[keep] for a in (u.k, u.y2, u.ym, u.m2))
    spread = np.maximum(y2 - 2 * mean * ym + mean * mean * m2, 0.0)  # Σ_u (Y_u − ȳ·m_u)²
    return n, mean, k / (k - 1) * spread / n


def stratified_difference(treated: Cells, control: Cells, level: float = 0.95) -> Estimate:
    """Post-stratified difference in means: Σ w_s (ȳ_T,s − ȳ_C,s) with w_s the stratum's share of both
    groups, se² = Σ w_s² (s²_T,s / n_T,s + s²_C,s / n_C,s). A stratum with fewer than 2 subscribers in a
    group has no variance and is left out (2 households, when whole households were randomized: `units`).
    No stratum kept: all NaN; se = 0 (a constant outcome): the difference and means, with NaN z, p-value
    and interval, so a test on it is never significant."""
    keep = (treated.counts() >= 2) & (control.counts() >= 2)
    if not keep.any():
        return Estimate(_NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, 0, 0, 0)
    n_t, mean_t, var_t = _means_and_variances(treated, keep)
    n_c, mean_c, var_c = _means_and_variances(control, keep)
    w = (n_t + n_c) / (n_t + n_c).sum()
    diff = float(w @ (mean_t - mean_c))
    var_control = float((w * w) @ (var_c / n_c))
    se = math.sqrt(float((w * w) @ (var_t / n_t)) + var_control)
    z = diff / se if se > 0 else _NAN
    half = _z(level) * se if se > 0 else _NAN
    return Estimate(
        diff=diff,
        se=se,
        z=z,
        p_value=_two_sided(z) if se > 0 else _NAN,
        ci_low=diff - half,
        ci_high=diff + half,
        mean_treated=float(w @ mean_t),
        mean_control=float(w @ mean_c),
        se_control=math.sqrt(var_control),
        strata=int(keep.sum()),
        n_treated=int(n_t.sum()),
        n_control=int(n_c.sum()),
    )


def relative_lift(est: Estimate, level: float = 0.95) -> tuple[float, float, float]:
    """(diff / mean_control, ci_low, ci_high) by the delta method: var ≈ se²/c² + diff²·se_c²/c⁴, which
    ignores the covariance of the difference with the control mean (a slightly wide interval when the
    lift is positive). NaN when the control mean is 0 or unknown."""
    c = est.mean_control
    if not np.isfinite(c) or c == 0 or not np.isfinite(est.se):
        return _NAN, _NAN, _NAN
    lift = est.diff / c
    half = _z(level) * math.sqrt(est.se**2 / c**2 + est.diff**2 * est.se_control**2 / c**4)
    return lift, lift - half, lift + half


# ---------------------------------------------------------------- CUPED / CUPAC
@dataclass(frozen=True)
class CovariateUnits:
    """Per stratum over the randomization units (households: totals Y_u, X_u of m_u lines): k, ΣY_u²,
    ΣY_u·m_u, Σm_u², ΣX_u², ΣX_u·Y_u, ΣX_u·m_u — what the adjusted outcome's unit variance needs."""

    k: np.ndarray
    y2: np.ndarray
    ym: np.ndarray
    m2: np.ndarray
    x2: np.ndarray
    xy: np.ndarray
    xm: np.ndarray


@dataclass(frozen=True)
class CovariateCells:
    """One group's aggregates per stratum of an outcome Y and a covariate X: n, ΣY, ΣY², ΣX, ΣX², ΣXY
    (and with whole households randomized, the same over the households: `units`)."""

    n: np.ndarray
    y: np.ndarray
    y2: np.ndarray
    x: np.ndarray
    x2: np.ndarray
    xy: np.ndarray
    units: CovariateUnits | None = None

    @classmethod
    def of(cls, strata: np.ndarray, y: np.ndarray, x: np.ndarray, n_strata: int) -> CovariateCells:
        s = np.asarray(strata, dtype=np.int64)
        y = np.asarray(y, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)

        def total(w: np.ndarray) -> np.ndarray:
            return np.bincount(s, weights=w, minlength=n_strata)

        return cls(
            np.bincount(s, minlength=n_strata), total(y), total(y * y), total(x), total(x * x), total(x * y)
        )


def _pooled_variance(n: float, total: float, squares: float) -> float:
    return (squares - total * total / n) / (n - 1) if n > 1 else _NAN


def cuped(treated: CovariateCells, control: CovariateCells) -> tuple[Cells, Cells, float, float]:
    """CUPED (X a pre-period outcome) or CUPAC (X a model's forecast) from aggregates only: θ = pooled
    cov(X, Y) / var(X) over both groups and all strata, Y' = Y − θ (X − X̄) with X̄ the pooled mean.
    X is fixed before the treatment, so the adjustment leaves the expected difference unchanged and takes
    away the variance X explains. Returns the adjusted Cells of each group, θ, and the pooled variance
    reduction 1 − var(Y') / var(Y)."""
    groups = (treated, control)
    n = sum(float(np.sum(g.n)) for g in groups)
    sy, sx = (sum(float(np.sum(getattr(g, f))) for g in groups) for f in ("y", "x"))
    syy, sxx, sxy = (sum(float(np.sum(getattr(g, f))) for g in groups) for f in ("y2", "x2", "xy"))
    var_x = _pooled_variance(n, sx, sxx)
    theta = (sxy - sx * sy / n) / (n - 1) / var_x if n > 1 and var_x > 0 else 0.0
    shift = theta * sx / n if n > 0 else 0.0  # Y' = Y − θX + θX̄

    def adjusted(g: CovariateCells) -> Cells:
        cn, cy, cx = (np.asarray(a, dtype=np.float64) for a in (g.n, g.y, g.x))
        total = cy - theta * cx + shift * cn
        squares = (
            np.asarray(g.y2, dtype=np.float64)
            + theta**2 * np.asarray(g.x2, dtype=np.float64)
            + shift**2 * cn
            - 2 * theta * np.asarray(g.xy, dtype=np.float64)
            + 2 * shift * cy
            - 2 * shift * theta * cx
        )
        return Cells(np.asarray(g.n), total, squares, None if g.units is None else adjusted_units(g.units))

    def adjusted_units(u: CovariateUnits) -> Units:  # Y'_u = Y_u − θ·X_u + shift·m_u, per household
        y2, ym, m2, x2, xy, xm = (
            np.asarray(a, dtype=np.float64) for a in (u.y2, u.ym, u.m2, u.x2, u.xy, u.xm)
        )
        squares = (
            y2 + theta**2 * x2 + shift**2 * m2 - 2 * theta * xy + 2 * shift * ym - 2 * theta * shift * xm
        )
        return Units(np.asarray(u.k), squares, ym - theta * xm + shift * m2, m2)

    adj_t, adj_c = adjusted(treated), adjusted(control)
    var_y = _pooled_variance(n, sy, syy)
    var_adj = _pooled_variance(
        n, float(adj_t.total.sum() + adj_c.total.sum()), float(adj_t.squares.sum() + adj_c.squares.sum())
    )
    reduction = 1 - var_adj / var_y if np.isfinite(var_y) and var_y > 0 else _NAN
    return adj_t, adj_c, float(theta), float(reduction)


# ---------------------------------------------------------------- design and checks
def unit_variance(unit: np.ndarray, y: np.ndarray) -> float:
    """The variance of y per line as a test on whole units (households) sees it: n · var(mean) with the
    units' linearized variance (`_means_and_variances`), so that MDE and standard errors agree; the sample
    variance (ddof=1) when every unit is one line. NaN under two units."""
    y = np.asarray(y, dtype=np.float64)
    units = Units.of(np.zeros(len(y), dtype=np.int64), unit, y, 1)
    if units.k[0] < 2:
        return _NAN
    whole = Cells(np.array([len(y)]), np.array([y.sum()]), np.array([float(y @ y)]), units)
    return float(_means_and_variances(whole, np.array([True]))[2][0])


def mde(variance: float, n_treated: int, n_control: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at `alpha` detects with probability `power`:
    (z_{1−α/2} + z_power) · sqrt(variance · (1/n_T + 1/n_C))."""
    if n_treated <= 0 or n_control <= 0:
        return _NAN
    z = float(special.ndtri(1 - alpha / 2) + special.ndtri(power))
    return z * math.sqrt(variance * (1 / n_treated + 1 / n_control))


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n: stays inside [0, 1] and keeps its coverage at k = 0 or
    a rate near 0 (a false-positive rate of 5 %), where the normal interval does not. NaN when n = 0."""
    if n <= 0:
        return _NAN, _NAN
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def p_above(k: int, n: int, p0: float) -> float:
    """One-sided binomial p-value P(X ≥ k | n, p0): how surprising k false positives are if the test's
    real rate is p0."""
    return float(stats.binom.sf(k - 1, n, p0))


def srm_p_value(n_control: int, n_treated: int, control_share: float) -> float:
    """Sample-ratio mismatch: chi-square goodness of fit of the two group sizes against the designed
    share. A tiny p-value means the groups were not formed as designed (lost rows, a filter applied to one
    group), and no estimate on them is trusted. 1.0 when there are no subscribers."""
    total = n_control + n_treated
    if total <= 0:
        return 1.0
    expected = np.array([control_share, 1 - control_share]) * total
    observed = np.array([n_control, n_treated], dtype=np.float64)
    if (expected == 0).any():  # a share of 0 or 1: only that group may hold anyone
        return 1.0 if (observed[expected == 0] == 0).all() else 0.0
    return float(stats.chisquare(observed, expected).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error rate over several outcomes or channels):
    the i-th smallest × (m − i + 1), made monotone, capped at 1. NaN stays NaN and does not count in m."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.tolist()


# ---------------------------------------------------------------- A/A simulation
@dataclass(frozen=True)
class AAResult:
    """False positives of the evaluation's test over re-splits of history where nothing was done."""

    splits: int
    false_positives: int
    rate: float
    ci_low: float
    ci_high: float
    p_above_alpha: float
    alpha: float


def _split_cells(code: np.ndarray, y: np.ndarray, y2: np.ndarray, n_strata: int) -> tuple[Cells, Cells]:
    """Cells of both groups from code = 2·stratum + is_control, three bincounts for one split."""
    size = 2 * n_strata
    n = np.bincount(code, minlength=size).reshape(n_strata, 2)
    total = np.bincount(code, weights=y, minlength=size).reshape(n_strata, 2)
    squares = np.bincount(code, weights=y2, minlength=size).reshape(n_strata, 2)
    return Cells(n[:, 0], total[:, 0], squares[:, 0]), Cells(n[:, 1], total[:, 1], squares[:, 1])


def _split_unit_cells(
    code: np.ndarray, m: np.ndarray, total: np.ndarray, squares: np.ndarray, n_strata: int
) -> tuple[Cells, Cells]:
    """Cells of both groups, with their Units, from one row per unit (household × stratum) and code =
    2·stratum + is_control."""
    size = 2 * n_strata

    def add(w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(code, weights=w, minlength=size).reshape(n_strata, 2).astype(np.float64)

    n, t, q = add(m), add(total), add(squares)
    k, y2, ym, m2 = add(), add(total * total), add(total * m), add(m * m)
    treated, control = (
        Cells(n[:, g], t[:, g], q[:, g], Units(k[:, g], y2[:, g], ym[:, g], m2[:, g])) for g in (0, 1)
    )
    return treated, control


def aa_simulation(
    id_hash: np.ndarray,
    strata: np.ndarray,
    y: np.ndarray,
    control_share: float,
    salts: Sequence[int],
    alpha: float = 0.05,
    *,
    clustered: bool = False,
) -> AAResult:
    """Re-split the subscribers by every salt (split.unit / split.is_control) and test the difference of
    y with stratified_difference: with no treatment, a valid test rejects at rate alpha. A NaN p-value
    counts as not significant. `clustered`: the hashes are of households (lines of one household share
    one) and the test takes its variance over them (`Units`), as the evaluation then does."""
    s = np.asarray(strata, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    y2 = y * y
    n_strata = int(s.max()) + 1 if len(s) else 1
    twice = 2 * s
    hits = 0
    if clustered:  # one row per household × stratum: its lines, totals and hash, split as one
        pieces, index = np.unique(
            np.stack([s, np.asarray(id_hash, dtype=np.int64)]), axis=1, return_inverse=True
        )
        index = index.reshape(-1)
        m, total, squares = (np.bincount(index, weights=w) for w in (np.ones(len(y)), y, y2))
        for salt in salts:
            code = 2 * pieces[0] + is_control(unit(pieces[1], salt), control_share)
            est = stratified_difference(*_split_unit_cells(code, m, total, squares, n_strata))
            hits += bool(est.p_value < alpha)
    else:
        for salt in salts:
            code = twice + is_control(unit(id_hash, salt), control_share)
            est = stratified_difference(*_split_cells(code, y, y2, n_strata))
            hits += bool(est.p_value < alpha)
    splits = len(salts)
    low, high = wilson_interval(hits, splits)
    rate = hits / splits if splits else _NAN
    return AAResult(splits, hits, rate, low, high, p_above(hits, splits, alpha), alpha)


# ---------------------------------------------------------------- balance
@dataclass(frozen=True)
class Balance:
    """A covariate's standardized mean difference under the actual split, judged against re-splits."""

    covariate: str
    smd: float
    p_resplit: float
    q95: float


def _smd(control: np.ndarray, rows: np.ndarray, totals: np.ndarray, k: int) -> np.ndarray:
    """(mean_T − mean_C) / pooled sd per covariate; `rows` holds [valid | x | x²] per covariate as rows
    (3k × n, so the product with the control indicator runs along contiguous memory)."""
    n_c, s_c, q_c = (rows @ control).reshape(3, k)
    n_a, s_a, q_a = totals.reshape(3, k)
    n_t, s_t, q_t = n_a - n_c, s_a - s_c, q_a - q_c
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_t, mean_c = s_t / n_t, s_c / n_c
        ss = np.maximum(q_t - s_t * mean_t, 0.0) + np.maximum(q_c - s_c * mean_c, 0.0)
        sd = np.sqrt(ss / (n_t + n_c - 2))
        out = (mean_t - mean_c) / sd
    return np.where((n_t >= 2) & (n_c >= 2) & (sd > 0), out, np.nan)


def balance(
    id_hash: np.ndarray,
    covariates: Mapping[str, np.ndarray],
    control_share: float,
    salt: int,
    salts: Sequence[int],
) -> list[Balance]:
    """SMD of each covariate under the actual split (`salt`) and under each re-split (`salts`):
    p_resplit is the share of re-splits with |SMD| at least the actual one, q95 the 95th percentile of
    the re-split |SMD|. The actual split is judged against what this splitter does on these subscribers,
    not against a fixed SMD limit that is too strict for small lists and too lax for large ones. NaN
    covariate values are left out of that covariate only."""
    names = list(covariates)
    if not names:
        return []
    x = np.column_stack([np.asarray(covariates[c], dtype=np.float64) for c in names])
    valid = np.isfinite(x)
    x0 = np.where(valid, x, 0.0)
    rows = np.ascontiguousarray(np.hstack([valid.astype(np.float64), x0, x0 * x0]).T)
    totals = rows.sum(axis=1)
    k = len(names)

    def smd_of(s: int) -> np.ndarray:
        return _smd(is_control(unit(id_hash, s), control_share).astype(np.float64), rows, totals, k)

    actual = smd_of(salt)
    resplit = np.abs(np.array([smd_of(s) for s in salts]).reshape(len(salts), k))
    out = []
    for j, name in enumerate(names):
        dist = resplit[:, j][~np.isnan(resplit[:, j])]
        if np.isnan(actual[j]) or not len(dist):
            out.append(Balance(name, float(actual[j]), _NAN, _NAN))
            continue
        p = float(np.mean(dist >= abs(actual[j])))
        out.append(Balance(name, float(actual[j]), p, float(np.quantile(dist, 0.95))))
    return out


# ---------------------------------------------------------------- uplift by decile
@dataclass(frozen=True)
class DecileLift:
    """mean_T − mean_C in a decile of the ranking key (1 = highest), and over deciles 1..decile."""

    decile: int
    n_treated: int
    n_control: int
    lift: float
    cumulative_lift: float


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def uplift_from_cells(
    deciles: np.ndarray, n_t: np.ndarray, sum_t: np.ndarray, n_c: np.ndarray, sum_c: np.ndarray
) -> tuple[list[DecileLift], float]:
    """Lift per decile, uplift@k, and the Qini coefficient from per-decile counts and sums (rows of the
    same decile are added up). The Qini curve is the cumulative incremental outcome
    Y_T(k) − Y_C(k)·n_T(k)/n_C(k) over deciles 1..k per treated subscriber; the coefficient is its mean
    height above the straight line from 0 to its end point (at each decile's cumulative population share),
    over the deciles: > 0 when the ranking puts the effect first, ~0 when it does not."""
    levels, index = np.unique(np.asarray(deciles, dtype=np.int64), return_inverse=True)

    def add(v: np.ndarray) -> np.ndarray:
        return np.bincount(index, weights=np.asarray(v, dtype=np.float64), minlength=len(levels))

    nt, yt, nc, yc = add(n_t), add(sum_t), add(n_c), add(sum_c)
    lift = _ratio(yt, nt) - _ratio(yc, nc)
    cnt, cyt, cnc, cyc = np.cumsum(nt), np.cumsum(yt), np.cumsum(nc), np.cumsum(yc)
    cumulative = _ratio(cyt, cnt) - _ratio(cyc, cnc)
    rows = [
        DecileLift(int(d), int(a), int(b), float(u), float(c))
        for d, a, b, u, c in zip(levels, np.rint(nt), np.rint(nc), lift, cumulative, strict=True)
    ]
    if not len(levels) or cnt[-1] <= 0:
        return rows, _NAN
    qini = (cyt - cyc * _ratio(cnt, cnc)) / cnt[-1]
    share = (cnt + cnc) / (cnt[-1] + cnc[-1])
    return rows, float(np.mean(qini - share * qini[-1]))


def uplift_by_decile(
    decile: np.ndarray, treated: np.ndarray, y: np.ndarray
) -> tuple[list[DecileLift], float]:
    """uplift_from_cells on the rows themselves (decile 1..10 of the ranking key, treated flag, outcome)."""
    t = np.asarray(treated, dtype=bool)
    y = np.asarray(y, dtype=np.float64)
    return uplift_from_cells(decile, t, np.where(t, y, 0.0), ~t, np.where(t, 0.0, y))
