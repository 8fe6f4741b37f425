"""Metrics of a release beside naive baselines, per model × split × horizon, and the plots a reviewer reads.

Pure numpy/pandas on driver-side frames (the capped samples training already holds): no Spark, no
MLflow here. A model that does not beat its naive baseline shows up in every table of this module.

Naive baselines (fitted on the training splits only):
- classification: the base rate of the target by horizon × tenure band;
- amounts: the subscriber's last observed monthly value (LAST_VALUE below) divided by the days of the
  feature month, × the baseline paid rate for that horizon × tenure band; `sac` is event-driven (new
  subscribers, device renewals, win-backs), so its last value says little: its naive forecast is the mean
  daily SAC by horizon × tenure band.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

HIGHER_IS_BETTER = frozenset({"roc_auc", "r2"})
CLASSIFICATION_METRICS = ("roc_auc", "brier", "mean_pred", "mean_actual")
REGRESSION_METRICS = ("wape", "mae", "rmse", "r2", "bias", "mean_pred", "mean_actual")
ALL_HORIZONS = 0  # the `horizon` value of a table row aggregated over every horizon

# Amount model → (feature holding the last observed monthly value, segment it is restricted to or None).
LAST_VALUE: dict[str, tuple[str, str | None]] = {
    "sm_mobile": ("margin_1m", "mobile"),
    "sm_fmc": ("margin_1m", "fmc"),
    "sm_fttb": ("margin_1m", "fttb"),
    "data_gb": ("data_gb_1m", None),
    "voice_min": ("voice_min_1m", None),
}
SEGMENT_COL = "segment"
TENURE_COL = "tenure_months"


def main_metric_of(main_metric: Mapping[str, str], model_id: str, kind: str) -> str:
    """promotion.main_metric: a model id's own entry (e.g. sac: rmse) wins over its kind's."""
    return main_metric.get(model_id) or main_metric[kind]


def is_better(metric: str, value: float, other: float) -> bool:
    """Strictly better on `metric` (direction-aware)."""
    return value > other if metric in HIGHER_IS_BETTER else value < other


def relative_worsening(metric: str, new: float, old: float) -> float:
    """How much worse `new` is than `old`, relative to |old| (negative = better)."""
    if not np.isfinite(new) or not np.isfinite(old):
        return float("inf") if not np.isfinite(new) else float("-inf")
    scale = abs(old) if old != 0 else 1.0
    diff = (old - new) if metric in HIGHER_IS_BETTER else (new - old)
    return float(diff / scale)


# ---------------------------------------------------------------- metrics
def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC with tie-averaged ranks; NaN when only one class is present."""
    y = np.asarray(y) > 0.5
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return dict.fromkeys(CLASSIFICATION_METRICS, float("nan"))
    return {
        "roc_auc": roc_auc(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "mean_pred": float(p.mean()),
        "mean_actual": float(y.mean()),
    }


def regression_metrics(y: np.ndarray, f: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if len(y) == 0:
        return dict.fromkeys(REGRESSION_METRICS, float("nan"))
    err = f - y
    abs_sum = float(np.abs(y).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "wape": float(np.abs(err).sum() / abs_sum) if abs_sum > 0 else float("nan"),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "bias": float(err.mean()),
        "mean_pred": float(f.mean()),
        "mean_actual": float(y.mean()),
    }


def metrics_for(kind: str, y: np.ndarray, f: np.ndarray) -> dict[str, float]:
    return classification_metrics(y, f) if kind == "classification" else regression_metrics(y, f)


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Equal-width probability bins: rows, mean predicted and observed rate per bin (empty bins dropped)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    frame = pd.DataFrame({"bin": idx, "p": p, "y": y})
    table = frame.groupby("bin").agg(rows=("y", "size"), mean_pred=("p", "mean"), observed=("y", "mean"))
    table = table.reset_index()
    table["bin_low"] = table["bin"] / bins
    table["bin_high"] = (table["bin"] + 1) / bins
    return table[["bin", "bin_low", "bin_high", "rows", "mean_pred", "observed"]]


# ---------------------------------------------------------------- naive baselines
def tenure_band(tenure: pd.Series | np.ndarray, edges: list[int]) -> np.ndarray:
    """Index of the band [edges[i], edges[i+1]) a tenure falls in (missing tenure → band 0)."""
    values = np.nan_to_num(np.asarray(tenure, dtype=np.float64), nan=0.0)
    return np.clip(np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right") - 1, 0, None)


def days_in_months(months: pd.Series) -> np.ndarray:
    """Days of each (first-of-)month value; dates or strings."""
    parsed = pd.to_datetime(months)
    return np.asarray(parsed.dt.days_in_month, dtype=np.float64)


def _group_key(frame: pd.DataFrame, edges: list[int]) -> pd.Series:
    band = tenure_band(frame[TENURE_COL], edges) if TENURE_COL in frame else np.zeros(len(frame), dtype=int)
    return pd.Series(frame["horizon"].to_numpy(np.int64) * 1000 + band, index=frame.index)


@dataclass
class NaiveBaseline:
    """Rates by horizon × tenure band learnt from the training splits; see the module docstring."""

    tenure_edges: list[int]
    rates: dict[str, dict[int, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, train_surv: pd.DataFrame, train_reg: pd.DataFrame, model_ids: list[str], tenure_edges: list[int]
    ) -> NaiveBaseline:
        base = cls(list(tenure_edges))
        # survival rates (also the survival factor of the amount baselines) from the survival models'
        # training rows; rate-type amount baselines (sac) from the regressors' training rows
        targets = {m: train_surv for m in ("paid", "active") if m in model_ids or m == "paid"}
        targets.update({m: train_reg for m in model_ids if m not in LAST_VALUE and m not in targets})
        for model_id, frame in targets.items():
            col = f"{model_id}_fact"
            if col not in frame or len(frame) == 0:
                continue
            key = _group_key(frame, base.tenure_edges)
            values = frame[col].astype(np.float64)
            base.rates[model_id] = values.groupby(key).mean().to_dict()
            base.overall[model_id] = float(values.mean())
        return base

    def _rate(self, model_id: str, frame: pd.DataFrame) -> np.ndarray:
        key = _group_key(frame, self.tenure_edges)
        fallback = self.overall.get(model_id, 0.0)
        return key.map(self.rates.get(model_id, {})).fillna(fallback).to_numpy(np.float64)

    def predict(self, frame: pd.DataFrame, model_ids: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        paid = self._rate("paid", frame) if "paid" in self.rates else np.ones(len(frame))
        for model_id in model_ids:
            source = LAST_VALUE.get(model_id)
            if source is None or source[0] not in frame:
                out[model_id] = self._rate(model_id, frame) if model_id in self.rates else paid * 0.0
                continue
            col, segment = source
            last = frame[col].astype(np.float64).fillna(0.0).to_numpy()
            if segment is not None and SEGMENT_COL in frame:
                last = np.where(frame[SEGMENT_COL].astype(str).to_numpy() == segment, last, 0.0)
            daily = last / days_in_months(frame["feature_month"]) if "feature_month" in frame else last / 30.4
            out[model_id] = daily * paid
        return out


# ---------------------------------------------------------------- tables
def metric_rows(
    frame: pd.DataFrame,
    predictions: Mapping[str, np.ndarray],
    naive: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    split: str,
) -> list[dict[str, Any]]:
    """Long rows (model_id, split, horizon, metric, value, naive): per horizon and over all horizons."""
    rows: list[dict[str, Any]] = []
    horizons = frame["horizon"].to_numpy(np.int64)
    groups = [(ALL_HORIZONS, np.ones(len(frame), dtype=bool))]
    groups += [(int(h), horizons == h) for h in np.unique(horizons)]
    for model_id, pred in predictions.items():
        kind = kinds[model_id]
        y = frame[f"{model_id}_fact"].to_numpy(np.float64)
        for h, mask in groups:
            model_m = metrics_for(kind, y[mask], pred[mask])
            naive_m = metrics_for(kind, y[mask], naive[model_id][mask])
            for metric, value in model_m.items():
                rows.append(
                    {
                        "model_id": model_id,
                        "kind": kind,
                        "split": split,
                        "horizon": h,
                        "rows": int(mask.sum()),
                        "metric": metric,
                        "value": value,
                        "naive": naive_m[metric],
                    }
                )
    return rows


def metric_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["model_id", "kind", "split", "horizon", "rows", "metric", "value", "naive"]
    )


def quality_table(table: pd.DataFrame, main_metric: Mapping[str, str], split: str = "oot") -> pd.DataFrame:
    """One row per model: main metric on `split` over all horizons, its naive value, and who wins."""
    rows = []
    agg = table[(table["split"] == split) & (table["horizon"] == ALL_HORIZONS)]
    for model_id, group in agg.groupby("model_id", sort=False):
        kind = group["kind"].iloc[0]
        metric = main_metric_of(main_metric, str(model_id), kind)
        row = group[group["metric"] == metric].iloc[0]
        rows.append(
            {
                "model_id": model_id,
                "kind": kind,
                "metric": metric,
                "split": split,
                "rows": int(row["rows"]),
                "value": float(row["value"]),
                "naive": float(row["naive"]),
                "beats_naive": bool(is_better(metric, row["value"], row["naive"])),
            }
        )
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A small DataFrame as a Markdown table (no `tabulate` dependency)."""
    cols = list(frame.columns)

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return format(float(v), floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


# ---------------------------------------------------------------- plots (matplotlib figures; callers save)
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_by_horizon(table: pd.DataFrame, model_id: str, metric: str):
    """Model vs naive on `metric` by horizon, one line pair per split."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    mine = table[(table["model_id"] == model_id) & (table["metric"] == metric) & (table["horizon"] > 0)]
    for i, (split, group) in enumerate(mine.groupby("split", sort=False)):
        color = f"C{i}"
        ax.plot(group["horizon"], group["value"], "-o", ms=3, color=color, label=f"{split} model")
        ax.plot(group["horizon"], group["naive"], "--", color=color, alpha=0.6, label=f"{split} naive")
    ax.set_xlabel("horizon (months)")
    ax.set_ylabel(metric)
    ax.set_title(f"{model_id}: {metric} by horizon")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_calibration(tables: Mapping[str, pd.DataFrame], model_id: str):
    """Observed vs predicted rate per probability bin, one line per split."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    for split, table in tables.items():
        ax.plot(table["mean_pred"], table["observed"], "-o", ms=3, label=split)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title(f"{model_id}: calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_importance(names: list[str], values: np.ndarray, model_id: str, top: int = 20):
    plt = _pyplot()
    order = np.argsort(values)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(order) + 1))
    ax.barh([names[i] for i in order], np.asarray(values)[order])
    ax.set_title(f"{model_id}: feature importance")
    fig.tight_layout()
    return fig
