"""Per-horizon calibration of a release, fitted on the validation split and stored in release.json.

CLTV sums expectations, so an amount forecast must be unbiased in aggregate at every horizon: each
amount model gets one factor per horizon, Σ actual / Σ forecast on the validation rows of that horizon,
shrunk towards the factor over all horizons by empirical Bayes: by as much as the horizon's ratio is
noisy (few rows, or a sparse target such as acquisition cost) compared with how much the horizons really
differ. A survival model gets a logistic
recalibration, logit p' = a_h + b · logit p (an intercept per horizon, one slope), kept only where it
lowers the Brier score on the test split. The Learner applies both to everything it predicts (scoring,
the registered pyfunc, evaluation, the report's SHAP values), so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FACTOR_BOUNDS = (0.5, 2.0)  # a factor outside is a sign of a broken model, not of calibration
_P_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _P_EPS, 1 - _P_EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _lookup(table: Mapping[int, float], keys: np.ndarray, default: float) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    if not len(keys):
        return np.zeros(0)
    values = {int(k): float(v) for k, v in table.items()}
    return np.array([values.get(int(x), default) for x in range(keys.max() + 1)])[keys]


@dataclass(frozen=True)
class AmountScale:
    """Forecast × factor of its horizon × factor of its target's calendar month (horizons not seen in
    fitting use the all-horizon factor; months not seen, 1)."""

    factors: Mapping[int, float]
    overall: float = 1.0
    month_factors: Mapping[int, float] = field(default_factory=dict)

    def factor(self, horizons: np.ndarray, months: np.ndarray | None = None) -> np.ndarray:
        by_horizon = _lookup(self.factors, horizons, self.overall)
        if months is None or not self.month_factors:
            return by_horizon
        return by_horizon * _lookup(self.month_factors, months, 1.0)

    def apply(self, pred: np.ndarray, horizons: np.ndarray, months: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(pred, dtype=np.float64) * self.factor(horizons, months)

    def shap_scale(self, horizons: np.ndarray, months: np.ndarray | None = None) -> np.ndarray:
        """SHAP values of the raw forecast × this give those of the calibrated one (a linear map)."""
        return self.factor(horizons, months)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "scale",
            "factors": {str(k): v for k, v in self.factors.items()},
            "overall": self.overall,
            "month_factors": {str(k): v for k, v in self.month_factors.items()},
        }


@dataclass(frozen=True)
class LogisticRecalibration:
    """p' = sigmoid(a_h + slope · logit p)."""

    intercepts: Mapping[int, float]
    slope: float = 1.0
    overall: float = 0.0  # intercept for horizons not seen in fitting

    def apply(self, p: np.ndarray, horizons: np.ndarray, months: np.ndarray | None = None) -> np.ndarray:
        return _sigmoid(_lookup(self.intercepts, horizons, self.overall) + self.slope * _logit(p))

    def shap_scale(self, horizons: np.ndarray, months: np.ndarray | None = None) -> np.ndarray:
        """SHAP values in log-odds space scale by the slope."""
        return np.full(len(horizons), self.slope)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic",
            "intercepts": {str(k): v for k, v in self.intercepts.items()},
            "slope": self.slope,
            "overall": self.overall,
        }


Calibration = AmountScale | LogisticRecalibration


def from_json(data: Mapping[str, Any]) -> Calibration:
    if data["kind"] == "scale":
        months = {int(k): float(v) for k, v in (data.get("month_factors") or {}).items()}
        return AmountScale(
            {int(k): float(v) for k, v in data["factors"].items()}, float(data["overall"]), months
        )
    if data["kind"] == "logistic":
        intercepts = {int(k): float(v) for k, v in data["intercepts"].items()}
        return LogisticRecalibration(intercepts, float(data["slope"]), float(data["overall"]))
    raise ValueError(f"unknown calibration kind {data['kind']!r}")


def shrunk_ratios(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, center: float) -> dict[int, float]:
    """Σy / Σpred per group, each moved from `center` by empirical Bayes: a group's ratio r_g has sampling
    variance s_g² ≈ Σ (y − r_g·pred)² / (Σ pred)²; the spread of the true ratios, τ², is what the
    observed spread exceeds the mean s_g² by; r_g keeps the share τ² / (τ² + s_g²) of its difference."""
    levels = [v for v in np.unique(groups) if pred[groups == v].sum() > 0]
    ratios, variances = np.zeros(len(levels)), np.zeros(len(levels))
    for i, value in enumerate(levels):
        yg, fg = y[groups == value], pred[groups == value]
        ratios[i] = yg.sum() / fg.sum()
        variances[i] = ((yg - ratios[i] * fg) ** 2).sum() / fg.sum() ** 2
    spread = max(0.0, float(((ratios - center) ** 2).mean()) - float(variances.mean())) if levels else 0.0
    weight = spread / (spread + variances) if spread > 0 else np.zeros(len(levels))
    low, high = FACTOR_BOUNDS
    shrunk = np.clip(center + weight * (ratios - center), low, high)
    return {int(v): float(f) for v, f in zip(levels, shrunk, strict=True)}


def fit_amount_scale(
    y: np.ndarray, pred: np.ndarray, horizons: np.ndarray, months: np.ndarray | None = None
) -> AmountScale:
    """Per horizon Σy / Σpred (shrunk to the overall ratio), then per target calendar month Σy / Σ(the
    horizon-calibrated forecast) (shrunk to 1): CLTV sums months of every season, and a year has one
    of each calendar month in the 13 target months, so a season the model under-learnt is set right."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    h = np.asarray(horizons, dtype=np.int64)
    low, high = FACTOR_BOUNDS
    if len(y) == 0 or pred.sum() <= 0:
        return AmountScale({}, 1.0)
    overall = float(np.clip(y.sum() / pred.sum(), low, high))
    by_horizon = shrunk_ratios(y, pred, h, overall)
    scale = AmountScale(by_horizon, overall)
    if months is None:
        return scale
    m = np.asarray(months, dtype=np.int64)
    by_month = shrunk_ratios(y, scale.apply(pred, h), m, 1.0)
    return AmountScale(by_horizon, overall, by_month)


def fit_logistic(
    y: np.ndarray, p: np.ndarray, horizons: np.ndarray, ridge: float = 1.0, steps: int = 25
) -> LogisticRecalibration:
    """Maximum likelihood of (a_h, slope) by Newton's method; `ridge` pulls each a_h towards the shared
    intercept, so a horizon with few rows keeps the all-horizon recalibration."""
    y = np.asarray(y, dtype=np.float64)
    x = _logit(p)
    h = np.asarray(horizons, dtype=np.int64)
    levels = np.unique(h)
    if len(y) == 0 or y.min() == y.max():
        return LogisticRecalibration({}, 1.0, 0.0)
    index = np.searchsorted(levels, h)
    k = len(levels)
    # parameters: [a_0 .. a_{k-1}, slope]; a_h = intercept per horizon
    theta = np.zeros(k + 1)
    theta[-1] = 1.0
    for _ in range(steps):
        z = theta[index] + theta[-1] * x
        q = _sigmoid(z)
        w = q * (1 - q)
        r = y - q
        grad = np.zeros(k + 1)
        np.add.at(grad, index, r)
        grad[-1] = (r * x).sum()
        a_mean = theta[:k].mean()
        grad[:k] -= ridge * (theta[:k] - a_mean)
        hess = np.zeros((k + 1, k + 1))
        diag = np.zeros(k)
        np.add.at(diag, index, w)
        hess[np.arange(k), np.arange(k)] = -(diag + ridge)
        cross = np.zeros(k)
        np.add.at(cross, index, w * x)
        hess[:k, -1] = hess[-1, :k] = -cross
        hess[-1, -1] = -(w * x * x).sum()
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-8:
            break
    counts = np.bincount(index, minlength=k).astype(np.float64)
    monotone = non_increasing(theta[:k], counts) if theta[-1] > 0 else theta[:k]
    intercepts = {int(v): float(monotone[i]) for i, v in enumerate(levels)}
    return LogisticRecalibration(intercepts, float(theta[-1]), float(monotone.mean()))


def non_increasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-increasing fit (pool adjacent violators): per-horizon intercepts of a
    survival recalibration must not make a later month more likely in the base than an earlier one."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values, np.maximum(weights, 1e-9), strict=True):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(c, m) for m, _, c in blocks])


@dataclass
class CalibrationReport:
    """What calibration did per model, for the release's evaluation artifacts and log."""

    rows: int
    kind: str
    kept: bool
    note: str = ""
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
