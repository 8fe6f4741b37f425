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


@dataclass(frozen=True)
class AmountScale:
    """Forecast × factor of its horizon (horizons not seen in fitting use the all-horizon factor)."""

    factors: Mapping[int, float]
    overall: float = 1.0

    def factor(self, horizons: np.ndarray) -> np.ndarray:
        h = np.asarray(horizons, dtype=np.int64)
        table = {int(k): float(v) for k, v in self.factors.items()}
        return np.array([table.get(int(x), self.overall) for x in range(h.max() + 1)])[h] if len(h) else h

    def apply(self, pred: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        return np.asarray(pred, dtype=np.float64) * self.factor(horizons)

    def shap_scale(self, horizons: np.ndarray) -> np.ndarray:
        """SHAP values of the raw forecast × this give those of the calibrated one (a linear map)."""
        return self.factor(horizons)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "scale",
            "factors": {str(k): v for k, v in self.factors.items()},
            "overall": self.overall,
        }


@dataclass(frozen=True)
class LogisticRecalibration:
    """p' = sigmoid(a_h + slope · logit p)."""

    intercepts: Mapping[int, float]
    slope: float = 1.0
    overall: float = 0.0  # intercept for horizons not seen in fitting

    def apply(self, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        h = np.asarray(horizons, dtype=np.int64)
        table = {int(k): float(v) for k, v in self.intercepts.items()}
        a = np.array([table.get(int(x), self.overall) for x in range(h.max() + 1)])[h] if len(h) else h
        return _sigmoid(a + self.slope * _logit(p))

    def shap_scale(self, horizons: np.ndarray) -> np.ndarray:
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
        return AmountScale({int(k): float(v) for k, v in data["factors"].items()}, float(data["overall"]))
    if data["kind"] == "logistic":
        intercepts = {int(k): float(v) for k, v in data["intercepts"].items()}
        return LogisticRecalibration(intercepts, float(data["slope"]), float(data["overall"]))
    raise ValueError(f"unknown calibration kind {data['kind']!r}")


def fit_amount_scale(y: np.ndarray, pred: np.ndarray, horizons: np.ndarray) -> AmountScale:
    """Σy / Σpred per horizon, shrunk to the overall ratio by empirical Bayes, within FACTOR_BOUNDS.

    A horizon's ratio r_h has sampling variance s_h² ≈ Σ (y − r_h·pred)² / (Σ pred)²; the spread of the
    true ratios across horizons, τ², is what the observed spread exceeds the mean s_h² by. Each r_h
    moves from the overall ratio by the share τ² / (τ² + s_h²) of its difference.
    """
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    h = np.asarray(horizons, dtype=np.int64)
    low, high = FACTOR_BOUNDS
    if len(y) == 0 or pred.sum() <= 0:
        return AmountScale({}, 1.0)
    overall = float(np.clip(y.sum() / pred.sum(), low, high))
    levels = [v for v in np.unique(h) if pred[h == v].sum() > 0]
    ratios, variances = np.zeros(len(levels)), np.zeros(len(levels))
    for i, value in enumerate(levels):
        yh, fh = y[h == value], pred[h == value]
        ratios[i] = yh.sum() / fh.sum()
        variances[i] = ((yh - ratios[i] * fh) ** 2).sum() / fh.sum() ** 2
    spread = max(0.0, float(ratios.var()) - float(variances.mean())) if len(levels) > 1 else 0.0
    weight = spread / (spread + variances) if spread > 0 else np.zeros(len(levels))
    shrunk = overall + weight * (ratios - overall)
    return AmountScale(
        {int(v): float(np.clip(f, low, high)) for v, f in zip(levels, shrunk, strict=True)}, overall
    )


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
    intercepts = {int(v): float(theta[i]) for i, v in enumerate(levels)}
    return LogisticRecalibration(intercepts, float(theta[-1]), float(theta[:k].mean()))


@dataclass
class CalibrationReport:
    """What calibration did per model, for the release's evaluation artifacts and log."""

    rows: int
    kind: str
    kept: bool
    note: str = ""
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
