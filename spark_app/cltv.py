"""CLTV arithmetic in numpy: 24 monthly forecasts per subscriber → 60-month extrapolation → discounted CLTV.

Everything here works on whole batches at once (rows = subscribers, columns = months ahead) and knows
nothing about Spark, so the scoring job, its tests and anyone recomputing CLTV from the `--detail` output
share one implementation. docs/scoring.md explains the method.

Extrapolation beyond the forecast horizon uses the shifted-beta-geometric (sBG) model of Fader & Hardie
(2007, "How to project customer retention"): each subscriber's forecast survival curve is fitted by maximum
likelihood with (alpha, beta), and the fitted curve's conditional survival carries it on. A flat geometric
tail would understate retention, because in a heterogeneous base retention rises with tenure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from spark_app.catalog import ModelCatalog
from spark_app.config import VALUE_AT_RISK, CostsConfig
from spark_app.months import forecast_days

__all__ = ["VALUE_AT_RISK"]  # re-exported: the score column of value_at_risk
SURVIVAL_POINTS = (12, 24, 60)
OVERHEADS = "overheads"
VAR_SURVIVAL_FLOOR = 0.05  # a survival curve this low no longer divides an amount: its amount is ~0 too

_LOG_MIN, _LOG_MAX = -3.0, 12.0  # bounds of log(alpha + beta): polarised base .. geometric limit
_X_MAX = 25.0  # bound of |log(beta / alpha)|
_EPS = 1e-9

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
    """How months beyond the forecast are filled: sBG survival × per-survivor level with a bounded trend."""

    months: int = 60
    trend_floor: float = 0.8  # bounds on the year-over-year change of the per-survivor amount
    trend_cap: float = 1.25
    newton_steps: int = 20


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
    a, b = alpha[:, None], beta[:, None]
    lost = 1.0 - s[:, -1]
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
    s = np.clip(np.asarray(survival, dtype=np.float64), 0.0, 1.0)
    s = np.minimum.accumulate(s, axis=1)  # a survival curve cannot rise
    n, horizon = s.shape
    prev = np.hstack([np.ones((n, 1)), s[:, :-1]])
    t = np.arange(1, horizon + 1, dtype=np.float64)[None, :]
    lost = 1.0 - s[:, -1]
    u, v = _initial_guess(s)
    x = np.clip(v - u, -_X_MAX, _X_MAX)
    y = np.clip(np.logaddexp(u, v), _LOG_MIN, _LOG_MAX)
    ll = sbg_loglik(*_from_xy(x, y), s)
    # second start at the geometric limit with the curve's mean retention: losses that do not slow
    # down with tenure have their optimum there, a long way from the moment start
    mean_ret = np.clip(np.maximum(s[:, -1], 1e-12) ** (1.0 / horizon), 1e-9, 1 - 1e-9)
    gx = np.clip(np.log(mean_ret / (1 - mean_ret)), -_X_MAX, _X_MAX)
    gy = np.full(n, _LOG_MAX)
    gll = sbg_loglik(*_from_xy(gx, gy), s)
    use = gll > ll
    x[use], y[use], ll[use] = gx[use], gy[use], gll[use]
    # no losses at all: the likelihood rises towards alpha -> 0, i.e. a flat curve
    flat = lost <= 1e-12
    x[flat], y[flat] = _X_MAX, _LOG_MAX
    ll[flat] = sbg_loglik(*_from_xy(x[flat], y[flat]), s[flat])
    active = ~flat
    for _ in range(steps):
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        a, b = _from_xy(x[idx], y[idx])
        m = a + b
        sig = b / m
        dsig = m * sig * (1.0 - sig)  # m * sigma'(x)
        sa, sp = s[idx], prev[idx]
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
            cll = sbg_loglik(*_from_xy(cx, cy), sa[todo])
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
    return _from_xy(x, y)


def extend_survival(p: np.ndarray, months: int, steps: int = 40) -> np.ndarray:
    """Survival probabilities for months 1..`months` from the forecast ones for 1..H (H = p.shape[1]).

    The sBG is fitted to the curve from month 1 on, s(t) = q(t+1)/q(1) with q the running minimum of p, and
    months after H continue from the last forecast with the fitted conditional survival:
    p(h) = p(H) * S(h-1) / S(H-1). Forecast months are returned unchanged.
    """
    p = np.asarray(p, dtype=np.float64)
    horizon = p.shape[1]
    if months <= horizon:
        return p[:, :months].copy()
    if horizon < 3:
        raise ValueError(f"extrapolation needs at least 3 forecast months, got {horizon}")
    q = np.minimum.accumulate(np.clip(p, 1e-9, 1.0), axis=1)
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
        m: extend_survival(forecasts[m], total, steps=ext.newton_steps)
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
