"""CLTV arithmetic in numpy: 24 monthly forecasts per subscriber → 60-month extrapolation → discounted CLTV.

Everything here works on whole batches at once (rows = subscribers, columns = months ahead) and knows
nothing about Spark, so the scoring job, its tests and anyone recomputing CLTV from the `--detail` output
share one implementation. docs/scoring.md explains the method.

Extrapolation beyond the forecast horizon uses the shifted-beta-geometric (sBG) model of Fader & Hardie
(2007, "How to project customer retention"): each subscriber's forecast survival curve is fitted by maximum
likelihood with (alpha, beta), and the fitted curve's conditional survival carries it on. A flat geometric
tail would understate retention, because in a heterogeneous base retention rises with tenure.
`Extrapolation(method="bdw")` uses the beta-discrete-Weibull instead (Fader, Hardie, Liu, Davin &
Steenburgh 2018): S(t) = B(alpha, beta + t^c)/B(alpha, beta), the sBG at c = 1, whose c also lets each
subscriber's own churn propensity fall (c < 1) or rise (c > 1) with tenure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from spark_app.catalog import VALUE_AT_RISK, ModelCatalog

if TYPE_CHECKING:  # the config (pydantic) stays off a scoring worker's imports
    from spark_app.config import CostsConfig
from spark_app.months import forecast_days

__all__ = ["VALUE_AT_RISK"]  # re-exported: the score column of value_at_risk
SURVIVAL_POINTS = (12, 24, 60)
OVERHEADS = "overheads"
VAR_SURVIVAL_FLOOR = 0.05  # a survival curve this low no longer divides an amount: its amount is ~0 too

_LOG_MIN, _LOG_MAX = -3.0, 12.0  # bounds of log(alpha + beta): polarised base .. geometric limit
_X_MAX = 25.0  # bound of |log(beta / alpha)|
_EPS = 1e-9
_LOG_C_MIN, _LOG_C_MAX = float(np.log(0.2)), float(np.log(5.0))  # BdW shape c: 0.2 .. 5
EXTRAPOLATION_METHODS = ("sbg", "bdw")

X = TypeVar("X")  # a numpy array, or a Spark Column: the value formula is plain arithmetic on either


@dataclass(frozen=True)
class ValueTerm:
    """One amount model in CLTV: + sign × unit cost × amount, carried past the horizon by `carrier`."""

    model_id: str
    component: str
    sign: float
    unit_cost: float
    carrier: str


@dataclass(frozen=True)
class ValueFormula:
    """CLTV's one definition, from the release's catalog and the configured costs.

    Value of a month = Σ sign × unit cost × amount − overhead rate × P(overhead base). Scoring evaluates it
    on numpy forecasts, the monitoring backtest on Spark columns of forecasts and facts (`monthly_value`).
    """

    terms: tuple[ValueTerm, ...]
    survival: tuple[str, ...]  # survival model ids
    nesting: tuple[tuple[str, str], ...]  # (inner, outer): the inner base lies inside the outer one
    overhead_base: str | None
    overhead_per_month: float
    annual_discount_rate: float

    @classmethod
    def from_catalog(cls, catalog: ModelCatalog, costs: CostsConfig) -> ValueFormula:
        cost_keys = costs.model_dump()
        terms = []
        for entry in catalog.amounts:
            if entry.value is None or entry.carrier is None:
                raise ValueError(f"model {entry.model_id}: no cltv term or carrier in the catalog")
            unit = entry.value.unit_cost
            unit = float(cost_keys[unit]) if isinstance(unit, str) else float(unit)
            terms.append(
                ValueTerm(entry.model_id, entry.value.component, entry.value.sign, unit, entry.carrier)
            )
        survival = tuple(e.model_id for e in catalog.survival)
        return cls(
            terms=tuple(terms),
            survival=survival,
            nesting=tuple((e.model_id, e.inside) for e in catalog.survival if e.inside in survival),
            overhead_base=costs.overhead_base if costs.overhead_base in survival else None,
            overhead_per_month=costs.overhead_sb + costs.overhead_ga + costs.overhead_am,
            annual_discount_rate=costs.annual_discount_rate,
        )

    @property
    def components(self) -> tuple[str, ...]:
        """Output components (present values, unsigned), in catalog order, overheads last."""
        return (*(t.component for t in self.terms), OVERHEADS)

    def signs(self) -> dict[str, float]:
        return {**{t.component: t.sign for t in self.terms}, OVERHEADS: -1.0}

    def monthly_value(self, get: Callable[[str], X], available: set[str] | None = None) -> X | float:
        """Value of one month: `get(model_id)` gives the model's monthly amount, or its base probability
        (a flag when realized). Models not `available` count as zero, as absent components do in CLTV."""
        value: Any = 0.0
        for t in self.terms:
            if available is None or t.model_id in available:
                value = value + get(t.model_id) * (t.sign * t.unit_cost)
        base = self.overhead_base
        if base and self.overhead_per_month and (available is None or base in available):
            value = value - get(base) * self.overhead_per_month
        return value


@dataclass(frozen=True)
class Extrapolation:
    """How months beyond the forecast are filled: sBG (or BdW) survival × per-survivor level with a bounded
    trend."""

    months: int = 60
    trend_floor: float = 0.8  # bounds on the year-over-year change of the per-survivor amount
    trend_cap: float = 1.25
    newton_steps: int = 20
    method: str = "sbg"  # survival model of the tail: "sbg" | "bdw" (see extend_survival)

    def __post_init__(self) -> None:
        if self.method not in EXTRAPOLATION_METHODS:
            raise ValueError(
                f"Extrapolation.method: {self.method!r} is not one of {', '.join(EXTRAPOLATION_METHODS)}"
            )


# ---------------------------------------------------------------- discounting
def discount_factors(months: int, annual_rate: float) -> np.ndarray:
    """(1 + r)^(-h/12) for h = 1..months: monthly compounding of the annual rate, end of month."""
    return (1.0 + annual_rate) ** (-np.arange(1, months + 1) / 12.0)


# ---------------------------------------------------------------- shifted-beta-geometric
def sbg_survival(alpha: np.ndarray, beta: np.ndarray, months: int) -> np.ndarray:
    """S(t) for t = 1..months: S(t) = S(t-1) * (beta + t - 1) / (alpha + beta + t - 1), S(0) = 1."""
    alpha = np.asarray(alpha, dtype=np.float64)[:, None]
    beta = np.asarray(beta, dtype=np.float64)[:, None]
    t = np.arange(1, months + 1, dtype=np.float64)[None, :]
    return np.cumprod((beta + t - 1) / (alpha + beta + t - 1), axis=1)


def sbg_loglik(alpha: np.ndarray, beta: np.ndarray, survival: np.ndarray) -> np.ndarray:
    """Log-likelihood per row of survival proportions s(1..T) (s(0) = 1) under sBG(alpha, beta).

    With d(t) = s(t-1) - s(t) lost in period t and s(T) still there, the cohort likelihood of the paper
    reduces to  D log a + sum_t [ s(t) log(b + t - 1) - s(t-1) log(a + b + t - 1) ],  D = 1 - s(T).
    """
    s = np.asarray(survival, dtype=np.float64)
    n, horizon = s.shape
    prev = np.hstack([np.ones((n, 1)), s[:, :-1]])
    t = np.arange(1, horizon + 1, dtype=np.float64)[None, :]
    return _loglik(alpha, beta, s, prev, t, 1.0 - s[:, -1])


def _loglik(
    alpha: np.ndarray, beta: np.ndarray, s: np.ndarray, prev: np.ndarray, t: np.ndarray, lost: np.ndarray
) -> np.ndarray:
    """`sbg_loglik` with s(t-1), t and D given: the fit evaluates it ~10 times per row, and rebuilding
    them each time was a tenth of the extension's cost."""
    a, b = alpha[:, None], beta[:, None]
    return lost * np.log(alpha) + (s * np.log(b + t - 1) - prev * np.log(a + b + t - 1)).sum(axis=1)


def _initial_guess(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moment-style start: sBG retention r(t) = (b+t-1)/(a+b+t-1) matched at t = 1 and late in the curve."""
    n, horizon = s.shape
    r1 = np.clip(s[:, 0], 1e-6, 1 - 1e-6)
    k = horizon // 2
    if horizon - k >= 1 and horizon >= 2:
        start = s[:, k - 1] if k >= 1 else np.ones(n)
        r_late = (np.maximum(s[:, -1], 1e-12) / np.maximum(start, 1e-12)) ** (1.0 / (horizon - k))
        t_late = (k + 1 + horizon) / 2.0
    else:
        r_late, t_late = r1, 1.0
    r_late = np.clip(r_late, 1e-6, 1 - 1e-6)
    rising = r_late > r1 + 1e-6
    total = np.where(rising, (t_late - 1) * (1 - r_late) / np.where(rising, r_late - r1, 1.0), np.exp(10.0))
    total = np.clip(total, 1e-2, np.exp(11.0))
    alpha = np.maximum(total * (1 - r1), np.exp(_LOG_MIN))
    beta = np.maximum(total * r1, np.exp(_LOG_MIN))
    return np.log(alpha), np.log(beta)


def _from_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logit of first-month retention, log(alpha + beta)) → (alpha, beta)."""
    m = np.exp(y)
    return m / (1.0 + np.exp(x)), m / (1.0 + np.exp(-x))


def fit_sbg(survival: np.ndarray, steps: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood sBG (alpha, beta) for every row of survival proportions s(1..T), s(0) = 1 implied.

    Damped Newton on all rows at once in x = log(beta/alpha) (logit of the first-month retention) and
    y = log(alpha + beta) (how homogeneous the base is), with the analytic gradient and Hessian, gradient
    steps where the Hessian is not negative definite, and step halving so the likelihood never falls.
    In these coordinates the geometric limit (alpha + beta -> inf at fixed retention) is one axis, so
    rows without heterogeneity converge quickly towards the bound of y, where the fitted curve is
    geometric; rows without losses are flat (alpha -> 0).
    """
    return _from_xy(*_sbg_xy(survival, steps))


def _sbg_xy(survival: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`fit_sbg` in its own coordinates (x, y), where the BdW fit starts from."""
    s = np.clip(np.asarray(survival, dtype=np.float64), 0.0, 1.0)
    s = np.minimum.accumulate(s, axis=1)  # a survival curve cannot rise
    n, horizon = s.shape
    prev = np.hstack([np.ones((n, 1)), s[:, :-1]])
    t = np.arange(1, horizon + 1, dtype=np.float64)[None, :]
    lost = 1.0 - s[:, -1]
    u, v = _initial_guess(s)
    x = np.clip(v - u, -_X_MAX, _X_MAX)
    y = np.clip(np.logaddexp(u, v), _LOG_MIN, _LOG_MAX)
    ll = _loglik(*_from_xy(x, y), s, prev, t, lost)
    # second start at the geometric limit with the curve's mean retention: losses that do not slow
    # down with tenure have their optimum there, a long way from the moment start
    mean_ret = np.clip(np.maximum(s[:, -1], 1e-12) ** (1.0 / horizon), 1e-9, 1 - 1e-9)
    gx = np.clip(np.log(mean_ret / (1 - mean_ret)), -_X_MAX, _X_MAX)
    gy = np.full(n, _LOG_MAX)
    gll = _loglik(*_from_xy(gx, gy), s, prev, t, lost)
    use = gll > ll
    x[use], y[use], ll[use] = gx[use], gy[use], gll[use]
    # no losses at all: the likelihood rises towards alpha -> 0, i.e. a flat curve
    flat = lost <= 1e-12
    x[flat], y[flat] = _X_MAX, _LOG_MAX
    ll[flat] = _loglik(*_from_xy(x[flat], y[flat]), s[flat], prev[flat], t, lost[flat])
    active = ~flat
    for _ in range(steps):
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        a, b = _from_xy(x[idx], y[idx])
        m = a + b
        sig = b / m
        dsig = m * sig * (1.0 - sig)  # m * sigma'(x)
        sa, sp, lost_idx = s[idx], prev[idx], lost[idx]
        inv_ab = 1.0 / (m[:, None] + t - 1)
        inv_b = 1.0 / (b[:, None] + t - 1)
        sp_ab = (sp * inv_ab).sum(axis=1)
        g_a = lost[idx] / a - sp_ab
        g_b = (sa * inv_b).sum(axis=1) - sp_ab
        h_ab = (sp * inv_ab**2).sum(axis=1)
        h_aa = -lost[idx] / a**2 + h_ab
        h_bb = -(sa * inv_b**2).sum(axis=1) + h_ab
        # chain rule: alpha = m (1 - sigma(x)), beta = m sigma(x), m = exp(y)
        gx = dsig * (g_b - g_a)
        gy = a * g_a + b * g_b
        hxx = dsig**2 * (h_aa - 2 * h_ab + h_bb) + dsig * (1 - 2 * sig) * (g_b - g_a)
        hxy = dsig * (a * (h_ab - h_aa) + b * (h_bb - h_ab)) + gx
        hyy = a * a * h_aa + 2 * a * b * h_ab + b * b * h_bb + gy
        det = hxx * hyy - hxy * hxy
        newton = (hxx < 0) & (det > 0)
        safe_det = np.where(newton, det, 1.0)
        # elsewhere a unit step up the gradient (the line search shortens it)
        norm = np.sqrt(gx * gx + gy * gy).clip(_EPS)
        dx = np.where(newton, -(hyy * gx - hxy * gy) / safe_det, gx / norm)
        dy = np.where(newton, -(hxx * gy - hxy * gx) / safe_det, gy / norm)
        scale = np.minimum(1.0, 2.0 / np.maximum(np.abs(dx), np.abs(dy)).clip(_EPS))
        dx, dy = dx * scale, dy * scale
        step = np.ones(len(idx))
        accepted = np.zeros(len(idx), dtype=bool)
        x0, y0, ll0 = x[idx], y[idx], ll[idx]
        new_x, new_y, new_ll = x0.copy(), y0.copy(), ll0.copy()
        for _ in range(8):
            todo = np.nonzero(~accepted)[0]
            if not len(todo):
                break
            cx = np.clip(x0[todo] + step[todo] * dx[todo], -_X_MAX, _X_MAX)
            cy = np.clip(y0[todo] + step[todo] * dy[todo], _LOG_MIN, _LOG_MAX)
            cll = _loglik(*_from_xy(cx, cy), sa[todo], sp[todo], t, lost_idx[todo])
            better = cll >= ll0[todo] - 1e-12
            hit = todo[better]
            new_x[hit], new_y[hit], new_ll[hit] = cx[better], cy[better], cll[better]
            accepted[hit] = True
            step[todo[~better]] *= 0.5
        moved = np.maximum(np.abs(new_x - x0), np.abs(new_y - y0))
        gain = new_ll - ll0
        x[idx], y[idx], ll[idx] = new_x, new_y, new_ll
        # done when the step is tiny, or when it no longer buys likelihood (a ridge towards a bound)
        active[idx] = accepted & (moved > 1e-7) & (gain > 1e-10)
    return x, y


# ---------------------------------------------------------------- beta-discrete-Weibull
def bdw_survival(alpha: np.ndarray, beta: np.ndarray, c: np.ndarray, months: int) -> np.ndarray:
    """S(t) for t = 1..months under BdW: S(t) = B(alpha, beta + t^c) / B(alpha, beta); c = 1 is the sBG.

    The running minimum only removes lnGamma's rounding wiggles (~1e-10) where beta is huge.
    """
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (alpha, beta, c))
    log_t = np.log(np.arange(1, months + 1, dtype=np.float64))[None, :]
    log_s = _bdw_log_s(a, b, c, log_t)
    return np.minimum.accumulate(np.clip(np.exp(log_s), 0.0, 1.0), axis=1)


def _log_beta_moving(a: np.ndarray, b: np.ndarray, u: np.ndarray | float) -> np.ndarray:
    """log B(a, b + u) - lnGamma(a), the part that moves with u: two lnGamma instead of betaln's three."""
    from scipy.special import gammaln  # here: scoring with the sBG never pays scipy's import

    return gammaln(b + u) - gammaln(a + b + u)


def _bdw_log_s(a: np.ndarray, b: np.ndarray, c: np.ndarray, log_t: np.ndarray) -> np.ndarray:
    """log S(t) = log B(a, b + t^c) - log B(a, b) for the months whose logs are `log_t`."""
    moving = _log_beta_moving(a[:, None], b[:, None], np.exp(c[:, None] * log_t))
    return moving - _log_beta_moving(a, b, 0.0)[:, None]


def _bdw_log_retention(a: np.ndarray, b: np.ndarray, c: np.ndarray, log_t: np.ndarray) -> np.ndarray:
    """log S(t) - log S(t-1) for the months whose logs are `log_t` (1, 2, ..: S(0) = 1)."""
    moving = _log_beta_moving(a[:, None], b[:, None], np.exp(c[:, None] * log_t))
    return np.diff(moving, axis=1, prepend=_log_beta_moving(a, b, 0.0)[:, None])


def _bdw_ll(log_ret: np.ndarray, s: np.ndarray, lost: np.ndarray) -> np.ndarray:
    """sum_t s(t) log r(t) + d(t) log(1 - r(t)): the cohort likelihood by period, r the retention."""
    log_churn = np.log(np.maximum(-np.expm1(log_ret), 1e-300))
    return np.einsum("kt,kt->k", s, log_ret) + np.einsum("kt,kt->k", lost, log_churn)


def bdw_loglik(alpha: np.ndarray, beta: np.ndarray, c: np.ndarray, survival: np.ndarray) -> np.ndarray:
    """Log-likelihood per row of survival proportions s(1..T) (s(0) = 1) under BdW(alpha, beta, c).

    The cohort likelihood of `sbg_loglik`, sum_t d(t) log(S(t-1) - S(t)) + s(T) log S(T), regrouped by
    period: sum_t s(t) log r(t) + d(t) log(1 - r(t)), r(t) = S(t)/S(t-1). Equal to sbg_loglik at c = 1.
    """
    s = np.asarray(survival, dtype=np.float64)
    n, horizon = s.shape
    prev = np.hstack([np.ones((n, 1)), s[:, :-1]])
    log_t = np.log(np.arange(1, horizon + 1, dtype=np.float64))[None, :]
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (alpha, beta, c))
    return _bdw_ll(_bdw_log_retention(a, b, c, log_t), s, prev - s)


def _trigamma_from_1(v: np.ndarray) -> np.ndarray:
    """psi'(v) for v >= 1 to ~2e-7 relative (two recurrence steps, then the asymptotic series): several
    times cheaper than scipy's polygamma, and it only shapes Newton steps; the likelihood stays exact."""
    z = 1.0 / (v + 2.0)
    z2 = z * z
    series = z + z2 * (0.5 + z * (1 / 6 + z2 * (-1 / 30 + z2 * (1 / 42 - z2 / 30))))
    return 1.0 / v**2 + 1.0 / (v + 1.0) ** 2 + series


def _lagged(v: np.ndarray, first: np.ndarray | float) -> np.ndarray:
    """v shifted one month later, `first` in month 1: the t-1 values of a per-month quantity."""
    out = np.empty_like(v)
    out[:, 0] = first
    out[:, 1:] = v[:, :-1]
    return out


def _bdw_derivatives(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    log_ret: np.ndarray,
    s: np.ndarray,
    lost: np.ndarray,
    log_t: np.ndarray,
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Gradient (a, b, z) and Hessian (aa, ab, bb, az, bz, zz) of the BdW likelihood, z = log c.

    LL = sum_t f(l_t), f(l) = s l + d log(1 - e^l), l_t = L_t - L_{t-1}, L_t = log S(t). With u = t^c,
    A = a + b + u, B = b + u: L_t = lnG(B) - lnG(A) + row constants, so dL/da = -psi(A), dL/db = psi(B) -
    psi(A), dL/dz = (psi(B) - psi(A)) u_z, u_z = u c log t, and trigamma for the second derivatives;
    month 0 (u = 0) carries the row constants. Sums of f' (X_t - X_{t-1}) are taken by parts.
    """
    from scipy.special import digamma

    m = a + b
    c_log_t = c[:, None] * log_t
    u = np.exp(c_log_t)
    u_z = c_log_t * u
    big_a, big_b = m[:, None] + u, b[:, None] + u
    psi_a = digamma(big_a)
    psi_ba = digamma(big_b) - psi_a
    tri_a = _trigamma_from_1(big_a)
    tri_ba = _trigamma_from_1(big_b) - tri_a
    psi_a0 = digamma(m)
    psi_ba0 = digamma(b) - psi_a0
    tri_a0 = _trigamma_from_1(m + 1.0) + 1.0 / m**2  # psi'(v) = psi'(v + 1) + 1/v^2 for the small ones
    tri_ba0 = _trigamma_from_1(b + 1.0) + 1.0 / b**2 - tri_a0
    ret_over_churn = np.exp(log_ret) / np.maximum(-np.expm1(log_ret), 1e-300)
    f1 = s - lost * ret_over_churn
    f2 = -lost * ret_over_churn * (1.0 + ret_over_churn)
    w = f1.copy()
    w[:, :-1] -= f1[:, 1:]  # sum_t f1_t (X_t - X_{t-1}) = sum_t w_t X_t - f1_1 X_0

    def by_parts(v: np.ndarray, v0: np.ndarray | float = 0.0) -> np.ndarray:
        return np.einsum("kt,kt->k", w, v) - f1[:, 0] * v0

    l_z = psi_ba * u_z
    d_a = _lagged(psi_a, psi_a0) - psi_a
    d_b = psi_ba - _lagged(psi_ba, psi_ba0)
    d_z = l_z - _lagged(l_z, 0.0)
    grad = (-by_parts(psi_a, psi_a0), by_parts(psi_ba, psi_ba0), by_parts(l_z))
    e_aa = -by_parts(tri_a, tri_a0)  # = e_ab
    e_bb = by_parts(tri_ba, tri_ba0)
    e_az = -by_parts(tri_a * u_z)
    e_bz = by_parts(tri_ba * u_z)
    e_zz = by_parts(tri_ba * u_z * u_z + psi_ba * u_z * (1.0 + c_log_t))
    f2_a, f2_b, f2_z = f2 * d_a, f2 * d_b, f2 * d_z

    def dot(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.einsum("kt,kt->k", p, q)

    hess = (
        dot(f2_a, d_a) + e_aa,
        dot(f2_a, d_b) + e_aa,
        dot(f2_b, d_b) + e_bb,
        dot(f2_a, d_z) + e_az,
        dot(f2_b, d_z) + e_bz,
        dot(f2_z, d_z) + e_zz,
    )
    return grad, hess


def _ascent_direction(grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """Newton step where the (k, 3, 3) Hessian is negative definite, else the saddle-free one
    (|eigenvalues|): off the concave region a plain gradient step crawls along the geometric-limit
    plateau, where the curvature is as small as the slope."""
    minor = hess[:, 0, 0] * hess[:, 1, 1] - hess[:, 0, 1] ** 2
    concave = (hess[:, 0, 0] < 0) & (minor > 0) & (np.linalg.det(hess) < 0)
    out = np.empty_like(grad)
    if concave.any():
        out[concave] = -np.linalg.solve(hess[concave], grad[concave][:, :, None])[:, :, 0]
    if not concave.all():
        eigval, eigvec = np.linalg.eigh(hess[~concave])
        size = np.abs(eigval)
        size = np.maximum(size, 1e-10 * size.max(axis=1, keepdims=True) + 1e-300)
        along = np.einsum("kij,ki->kj", eigvec, grad[~concave]) / size
        out[~concave] = np.einsum("kij,kj->ki", eigvec, along)
    return out


def fit_bdw(survival: np.ndarray, steps: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-likelihood BdW (alpha, beta, c) for every row of survival proportions s(1..T), s(0) = 1.

    Starts from the sBG fit (`steps` iterations) at c = 1, so no row's likelihood is below its sBG one,
    then damped Newton on all rows at once in the sBG's (x, y) and z = log c (c in [0.2, 5]), analytic
    gradient and Hessian, saddle-free steps where the Hessian is not negative definite and step halving
    so the likelihood never falls. x stays the logit of the first-month retention: S(1) = beta/(alpha +
    beta) whatever c. Rows without losses keep the sBG's flat fit, c = 1.
    """
    s = np.clip(np.asarray(survival, dtype=np.float64), 0.0, 1.0)
    s = np.minimum.accumulate(s, axis=1)  # as fit_sbg: a survival curve cannot rise
    n, horizon = s.shape
    lost = np.hstack([np.ones((n, 1)), s[:, :-1]]) - s
    log_t = np.log(np.arange(1, horizon + 1, dtype=np.float64))[None, :]
    x, y = _sbg_xy(s, steps)
    z = np.zeros(n)
    log_ret = _bdw_log_retention(*_from_xy(x, y), np.ones(n), log_t)
    ll = _bdw_ll(log_ret, s, lost)
    # fit_sbg's flat rows (no losses) have no shape to fit; rows with gaps keep their sBG NaNs, out of LAPACK
    active = (s[:, -1] < 1.0 - 1e-12) & np.isfinite(s).all(axis=1)
    for _ in range(steps):
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        a, b = _from_xy(x[idx], y[idx])
        sa, la, ra = s[idx], lost[idx], log_ret[idx]
        (g_a, g_b, g_z), (h_aa, h_ab, h_bb, h_az, h_bz, h_zz) = _bdw_derivatives(
            a, b, np.exp(z[idx]), ra, sa, la, log_t
        )
        # chain rule as in fit_sbg: alpha = m (1 - sigma(x)), beta = m sigma(x), m = exp(y)
        m = a + b
        sig = b / m
        dsig = m * sig * (1.0 - sig)
        gx = dsig * (g_b - g_a)
        gy = a * g_a + b * g_b
        hxx = dsig**2 * (h_aa - 2 * h_ab + h_bb) + dsig * (1 - 2 * sig) * (g_b - g_a)
        hxy = dsig * (a * (h_ab - h_aa) + b * (h_bb - h_ab)) + gx
        hyy = a * a * h_aa + 2 * a * b * h_ab + b * b * h_bb + gy
        hxz = dsig * (h_bz - h_az)
        hyz = a * h_az + b * h_bz
        hess = np.stack([hxx, hxy, hxz, hxy, hyy, hyz, hxz, hyz, h_zz], axis=1).reshape(-1, 3, 3)
        delta = _ascent_direction(np.stack([gx, gy, g_z], axis=1), hess)
        delta *= np.minimum(1.0, 2.0 / np.abs(delta).max(axis=1).clip(_EPS))[:, None]
        step = np.ones(len(idx))
        accepted = np.zeros(len(idx), dtype=bool)
        x0, y0, z0, ll0 = x[idx], y[idx], z[idx], ll[idx]
        new_x, new_y, new_z, new_ll, new_ret = x0.copy(), y0.copy(), z0.copy(), ll0.copy(), ra.copy()
        for _ in range(8):
            todo = np.nonzero(~accepted)[0]
            if not len(todo):
                break
            cx = np.clip(x0[todo] + step[todo] * delta[todo, 0], -_X_MAX, _X_MAX)
            cy = np.clip(y0[todo] + step[todo] * delta[todo, 1], _LOG_MIN, _LOG_MAX)
            cz = np.clip(z0[todo] + step[todo] * delta[todo, 2], _LOG_C_MIN, _LOG_C_MAX)
            cret = _bdw_log_retention(*_from_xy(cx, cy), np.exp(cz), log_t)
            cll = _bdw_ll(cret, sa[todo], la[todo])
            better = cll >= ll0[todo] - 1e-12
            hit = todo[better]
            new_x[hit], new_y[hit], new_z[hit], new_ll[hit] = cx[better], cy[better], cz[better], cll[better]
            new_ret[hit] = cret[better]
            accepted[hit] = True
            step[todo[~better]] *= 0.5
        moved = np.maximum(np.maximum(np.abs(new_x - x0), np.abs(new_y - y0)), np.abs(new_z - z0))
        gain = new_ll - ll0
        x[idx], y[idx], z[idx], ll[idx], log_ret[idx] = new_x, new_y, new_z, new_ll, new_ret
        active[idx] = accepted & (moved > 1e-7) & (gain > 1e-10)
    return (*_from_xy(x, y), np.exp(z))


def extend_survival(p: np.ndarray, months: int, steps: int = 40, *, method: str = "sbg") -> np.ndarray:
    """Survival probabilities for months 1..`months` from the forecast ones for 1..H (H = p.shape[1]).

    The sBG (or, with method "bdw", the BdW) is fitted to the curve from month 1 on, s(t) = q(t+1)/q(1)
    with q the running minimum of p, and months after H continue from the last forecast with the fitted
    conditional survival: p(h) = p(H) * S(h-1) / S(H-1). Forecast months are returned unchanged.
    """
    if method not in EXTRAPOLATION_METHODS:
        known = ", ".join(EXTRAPOLATION_METHODS)
        raise ValueError(f"extend_survival: method {method!r} is not one of {known}")
    p = np.asarray(p, dtype=np.float64)
    horizon = p.shape[1]
    if months <= horizon:
        return p[:, :months].copy()
    if horizon < 3:
        raise ValueError(f"extrapolation needs at least 3 forecast months, got {horizon}")
    q = np.minimum.accumulate(np.clip(p, 1e-9, 1.0), axis=1)
    if method == "bdw":
        alpha, beta, c = fit_bdw(q[:, 1:] / q[:, :1], steps=steps)
        log_t = np.log(np.arange(horizon - 1, months, dtype=np.float64))[None, :]  # S(H-1) .. S(months-1)
        log_s = _bdw_log_s(alpha, beta, c, log_t)
        ratio = np.minimum.accumulate(np.minimum(np.exp(log_s[:, 1:] - log_s[:, :1]), 1.0), axis=1)
        return np.hstack([p, np.clip(p[:, -1:], 0.0, 1.0) * ratio])
    alpha, beta = fit_sbg(q[:, 1:] / q[:, :1], steps=steps)
    t = np.arange(horizon, months, dtype=np.float64)[None, :]  # S(t)/S(t-1) for t = H..months-1
    ratio = (beta[:, None] + t - 1) / (alpha[:, None] + beta[:, None] + t - 1)
    tail = np.clip(p[:, -1:], 0.0, 1.0) * np.cumprod(ratio, axis=1)
    return np.hstack([p, tail])


def extend_amount(
    daily: np.ndarray, carrier: np.ndarray, carrier_ext: np.ndarray, ext: Extrapolation
) -> np.ndarray:
    """Daily amounts for months 1..ext.months: forecast months as given, later ones per survivor × survival.

    Per-survivor daily level of the last forecast year L2 = sum(amount)/sum(survival) over its 12 months
    (a ratio of sums, stable where survival is small), the year before gives L1; the later months get
    L2 × g^((h - mid-year)/12) × extended survival(h), with g = L2/L1 bounded to [trend_floor, trend_cap]
    (g = 1 where either level is not positive).
    """
    daily = np.asarray(daily, dtype=np.float64)
    n, horizon = daily.shape
    if ext.months <= horizon:
        return daily[:, : ext.months].copy()
    year = min(12, horizon)
    last = slice(horizon - year, horizon)
    l2 = daily[:, last].sum(axis=1) / np.maximum(carrier[:, last].sum(axis=1), _EPS)
    if horizon >= 2 * year:
        prev = slice(horizon - 2 * year, horizon - year)
        l1 = daily[:, prev].sum(axis=1) / np.maximum(carrier[:, prev].sum(axis=1), _EPS)
        ok = (l1 > 0) & (l2 > 0)
        growth = np.where(ok, l2 / np.where(ok, l1, 1.0), 1.0)
        growth = np.clip(growth, ext.trend_floor, ext.trend_cap)
    else:
        growth = np.ones(n)
    mid = horizon - (year - 1) / 2.0
    h = np.arange(horizon + 1, ext.months + 1, dtype=np.float64)[None, :]
    per_survivor = l2[:, None] * growth[:, None] ** ((h - mid) / 12.0)
    return np.hstack([daily, per_survivor * carrier_ext[:, horizon:]])


# ---------------------------------------------------------------- CLTV
def cltv_columns(
    forecasts: dict[str, np.ndarray],
    score_month_index: int,
    formula: ValueFormula,
    ext: Extrapolation,
) -> dict[str, np.ndarray]:
    """Per-subscriber CLTV and its parts from the monthly forecasts of the release's models.

    `forecasts[model_id]` is (n, H): probabilities for survival models, MONTHLY amounts (daily forecast ×
    days) for the regressors. Absent models count as zero. Component totals are present values (discounted
    like CLTV, unsigned), so cltv = Σ sign × <component>_60m − overheads_60m holds exactly; the same holds
    for cltv_24m over the first 24 months.
    """
    if not forecasts:
        raise ValueError("no forecasts to compute CLTV from")
    first = next(iter(forecasts.values()))
    n, horizon = first.shape
    total = max(ext.months, horizon)
    days = forecast_days(score_month_index, total)
    survival_ext = {
        m: extend_survival(forecasts[m], total, steps=ext.newton_steps, method=ext.method)
        for m in formula.survival
        if m in forecasts
    }
    for inner, outer in formula.nesting:
        if inner in survival_ext and outer in survival_ext:
            # two independent classifiers can cross; a base inside another cannot be more likely
            survival_ext[outer] = np.maximum(survival_ext[outer], survival_ext[inner])
    zero = np.zeros((n, total))
    parts: dict[str, np.ndarray] = {}
    for term in formula.terms:
        if term.model_id not in forecasts:
            parts[term.component] = zero
            continue
        carrier = survival_ext.get(term.carrier)
        if carrier is None:
            raise ValueError(f"model {term.model_id!r} needs the {term.carrier!r} survival forecast")
        daily = forecasts[term.model_id] / days[None, :horizon]
        monthly = extend_amount(daily, carrier[:, :horizon], carrier, ext) * days[None, :]
        parts[term.component] = monthly * term.unit_cost
    base_curve = survival_ext.get(formula.overhead_base or "", zero)
    parts[OVERHEADS] = base_curve * formula.overhead_per_month
    disc = discount_factors(total, formula.annual_discount_rate)[None, :]
    signs = formula.signs()
    out: dict[str, np.ndarray] = {}
    cltv = np.zeros(n)
    cltv_24 = np.zeros(n)
    cut = min(24, total)
    for name, values in parts.items():
        pv = values * disc
        out[f"{name}_{total}m"] = pv.sum(axis=1)
        cltv += signs[name] * out[f"{name}_{total}m"]
        cltv_24 += signs[name] * pv[:, :cut].sum(axis=1)
    out = {"cltv": cltv, f"cltv_{cut}m": cltv_24, **out}
    for base, curve in survival_ext.items():
        for point in SURVIVAL_POINTS:
            if point <= total:
                out[f"p_{base}_{point}m"] = curve[:, point - 1]
    return out


def value_at_risk(forecasts: dict[str, np.ndarray], formula: ValueFormula) -> np.ndarray:
    """The expected value of the forecast months that churn takes away (docs/campaigns.md): what the
    subscriber would bring if it stayed in its bases throughout, minus what it is expected to bring.

    An amount forecast a_h is P(in its carrier base at h) × a survivor's amount, so churn takes
    a_h (1/S_h − 1) of it; overheads are paid by survivors too, so retention costs overhead × (1 − P_h).
    Undiscounted over the forecast months (24), S_h floored at VAR_SURVIVAL_FLOOR. `forecasts` as in
    `cltv_columns`: (n, H) probabilities and monthly amounts; absent models count as zero.
    """
    first = next(iter(forecasts.values()))
    total = np.zeros(first.shape[0])
    for t in formula.terms:
        if t.model_id in forecasts and t.carrier in forecasts:
            lost = forecasts[t.model_id] * (1.0 / np.maximum(forecasts[t.carrier], VAR_SURVIVAL_FLOOR) - 1.0)
            total += t.sign * t.unit_cost * lost.sum(axis=1)
    base = formula.overhead_base
    if base and formula.overhead_per_month and base in forecasts:
        total -= formula.overhead_per_month * (1.0 - forecasts[base]).sum(axis=1)
    return total
