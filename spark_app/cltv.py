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

from dataclasses import dataclass

import numpy as np

from spark_app.config import AMOUNT_MODELS, CostsConfig
from spark_app.months import days_in_month_index

# Which survival curve carries each amount beyond the forecast horizon: margins and dealer payments
# follow the active base (revenue or traffic), traffic volumes the paid base (revenue and traffic).
CARRIER = {
    "sm_mobile": "active",
    "sm_fmc": "active",
    "sm_fttb": "active",
    "data_gb": "paid",
    "voice_min": "paid",
    "sac": "active",
}
MARGINS = ("sm_mobile", "sm_fmc", "sm_fttb")
SURVIVAL_POINTS = (12, 24, 60)

_LOG_MIN, _LOG_MAX = -3.0, 12.0  # bounds of log(alpha + beta): polarised base .. geometric limit
_X_MAX = 25.0  # bound of |log(beta / alpha)|
_EPS = 1e-9


@dataclass(frozen=True)
class CostRates:
    """Unit costs and monthly overhead rate, as the CLTV formula uses them."""

    cost_per_gb: float
    cost_per_minute: float
    overhead_per_month: float
    overhead_base: str
    annual_discount_rate: float

    @classmethod
    def from_config(cls, costs: CostsConfig) -> CostRates:
        return cls(
            cost_per_gb=costs.cost_per_gb,
            cost_per_minute=costs.cost_per_minute,
            overhead_per_month=costs.overhead_sb + costs.overhead_ga + costs.overhead_am,
            overhead_base=costs.overhead_base,
            annual_discount_rate=costs.annual_discount_rate,
        )


@dataclass(frozen=True)
class Extrapolation:
    """How months beyond the forecast are filled: sBG survival × per-survivor level with a bounded trend."""

    months: int = 60
    trend_floor: float = 0.8  # bounds on the year-over-year change of the per-survivor amount
    trend_cap: float = 1.25
    newton_steps: int = 20


# ---------------------------------------------------------------- calendar and discounting
def forecast_days(score_month_index: int, months: int) -> np.ndarray:
    """Days of the forecast months T+1..T+months (`score_month_index` from months.month_index)."""
    return days_in_month_index(score_month_index + np.arange(1, months + 1)).astype(np.float64)


def target_calendar_months(score_month_index: int, months: int) -> np.ndarray:
    """Month of year (1..12) of T+1..T+months: the `target_calendar_month` feature."""
    return (score_month_index + np.arange(1, months + 1)) % 12 + 1


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
    rates: CostRates,
    ext: Extrapolation,
) -> dict[str, np.ndarray]:
    """Per-subscriber CLTV and its parts from the monthly forecasts of the enabled models.

    `forecasts[model_id]` is (n, H): probabilities for paid/active, MONTHLY amounts (daily forecast × days)
    for the six regressors. Absent models count as zero. Component totals are present values (discounted
    like CLTV), so cltv = sm_mobile_60m + sm_fmc_60m + sm_fttb_60m - sac_60m - data_cost_60m
    - voice_cost_60m - overheads_60m holds exactly; the same holds for cltv_24m over the first 24 months.
    """
    if not forecasts:
        raise ValueError("no forecasts to compute CLTV from")
    first = next(iter(forecasts.values()))
    n, horizon = first.shape
    total = max(ext.months, horizon)
    days = forecast_days(score_month_index, total)
    survival_ext: dict[str, np.ndarray] = {}
    for base in ("paid", "active"):
        if base in forecasts:
            survival_ext[base] = extend_survival(forecasts[base], total, steps=ext.newton_steps)
    if "paid" in survival_ext and "active" in survival_ext:
        # The paid base is inside the active base; two independent classifiers can cross, the curves must not.
        survival_ext["active"] = np.maximum(survival_ext["active"], survival_ext["paid"])
    monthly: dict[str, np.ndarray] = {}
    for model_id in AMOUNT_MODELS:
        if model_id not in forecasts:
            continue
        carrier = survival_ext.get(CARRIER[model_id])
        if carrier is None:
            raise ValueError(f"model {model_id!r} needs the {CARRIER[model_id]!r} survival forecast")
        daily = forecasts[model_id] / days[None, :horizon]
        monthly[model_id] = extend_amount(daily, carrier[:, :horizon], carrier, ext) * days[None, :]
    zero = np.zeros((n, total))
    base_curve = survival_ext.get(rates.overhead_base, zero)
    parts = {
        "sm_mobile": monthly.get("sm_mobile", zero),
        "sm_fmc": monthly.get("sm_fmc", zero),
        "sm_fttb": monthly.get("sm_fttb", zero),
        "sac": monthly.get("sac", zero),
        "data_cost": monthly.get("data_gb", zero) * rates.cost_per_gb,
        "voice_cost": monthly.get("voice_min", zero) * rates.cost_per_minute,
        "overheads": base_curve * rates.overhead_per_month,
    }
    disc = discount_factors(total, rates.annual_discount_rate)[None, :]
    signs = {"sac": -1.0, "data_cost": -1.0, "voice_cost": -1.0, "overheads": -1.0}
    out: dict[str, np.ndarray] = {}
    cltv = np.zeros(n)
    cltv_24 = np.zeros(n)
    cut = min(24, total)
    for name, values in parts.items():
        pv = values * disc
        out[f"{name}_{total}m"] = pv.sum(axis=1)
        cltv += signs.get(name, 1.0) * out[f"{name}_{total}m"]
        cltv_24 += signs.get(name, 1.0) * pv[:, :cut].sum(axis=1)
    out = {"cltv": cltv, f"cltv_{cut}m": cltv_24, **out}
    for base, curve in survival_ext.items():
        for point in SURVIVAL_POINTS:
            if point <= total:
                out[f"p_{base}_{point}m"] = curve[:, point - 1]
    return out


def component_names(months: int = 60) -> list[str]:
    """Output columns of `cltv_columns` for a full release, in order."""
    parts = ["sm_mobile", "sm_fmc", "sm_fttb", "sac", "data_cost", "voice_cost", "overheads"]
    survival = [f"p_{b}_{p}m" for b in ("paid", "active") for p in SURVIVAL_POINTS if p <= months]
    return ["cltv", f"cltv_{min(24, months)}m", *[f"{p}_{months}m" for p in parts], *survival]
