"""Every plot of the project: matplotlib figures from pandas tables. Callers save or embed them — training
logs them to the release's run, monitoring to the month's run, the report embeds them in its page.

Figures take tables, never DataFrames of Spark or files, so each can be drawn from a test's small table.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the file-only backend
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spark_app.backtest import VALUE_CUM
from spark_app.catalog import REGRESSION, ModelCatalog
from spark_app.checks import FAIL, OK, SKIPPED, WARN
from spark_app.evaluation import VALUE

STATUS_COLOR = {OK: "#2e7d32", WARN: "#ef6c00", FAIL: "#c62828", SKIPPED: "#757575"}
POP_STYLE = {"all": ("#37474f", "-"), "holdout": ("#1565c0", "--"), "rest": ("#ef6c00", ":")}


# ---------------------------------------------------------------- the release (training, report)
def plot_metric_by_horizon(table: pd.DataFrame, model_id: str, metric: str):
    """Model vs naive on `metric` by horizon, one line pair per split."""
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
    order = np.argsort(values)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(order) + 1))
    ax.barh([names[i] for i in order], np.asarray(values)[order])
    ax.set_title(f"{model_id}: feature importance")
    fig.tight_layout()
    return fig


def plot_bias_by_horizon(table: pd.DataFrame, split: str = "oot"):
    """Aggregate bias by horizon of every amount model and the value: the first thing to look at."""
    rows = table[(table["metric"] == "agg_bias") & (table["split"] == split) & (table["horizon"] > 0)]
    rows = rows[rows["kind"] == REGRESSION]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for model_id, group in rows.groupby("model_id", sort=False):
        style = {"lw": 2.5, "color": "black"} if model_id == VALUE else {"lw": 1}
        ax.plot(group["horizon"], 100 * group["value"], "-o", ms=2, label=model_id, **style)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("horizon (months)")
    ax.set_ylabel("Σ forecast / Σ actual − 1 (%)")
    ax.set_title(f"aggregate bias by horizon ({split})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def plot_deciles(deciles: pd.DataFrame, model_id: str):
    """Mean forecast vs mean actual per forecast decile, one pair of lines per split."""
    mine = deciles[deciles["model_id"] == model_id]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (split, group) in enumerate(mine.groupby("split", sort=False)):
        ax.plot(group["decile"], group["mean_pred"], "--", color=f"C{i}", label=f"{split} forecast")
        ax.plot(group["decile"], group["mean_actual"], "-o", ms=3, color=f"C{i}", label=f"{split} actual")
    ax.set_xlabel("forecast decile")
    ax.set_ylabel("mean")
    ax.set_title(f"{model_id}: calibration by forecast decile")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- helpers
def _integer_x(*axes) -> None:
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def close(fig: Figure) -> None:
    plt.close(fig)


def png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def by_population(ax: Any, rows: pd.DataFrame, forecast: str, actual: str, words: tuple[str, str]) -> None:
    """Forecast (line, dots) beside realized (crosses) by horizon, one style per population."""
    for pop, (color, ls) in POP_STYLE.items():
        r = rows[rows["population"] == pop]
        if r.empty:
            continue
        ax.plot(r["horizon"], r[forecast], color=color, ls=ls, marker="o", ms=3, label=f"{pop}: {words[0]}")
        ax.plot(r["horizon"], r[actual], color=color, ls=ls, marker="x", ms=4, alpha=0.6,
                label=f"{pop}: {words[1]}")  # fmt: skip


def per_model_panels(table: pd.DataFrame, size: tuple[float, float]) -> tuple[Figure, list[tuple[Any, str]]]:
    """Small multiples: one panel per model of the table (`model_id`, in order), up to four a row."""
    models = list(dict.fromkeys(table["model_id"]))
    cols = min(4, len(models))
    n_rows = -(-len(models) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(size[0] * cols, size[1] * n_rows), squeeze=False)
    for ax in axes.ravel()[len(models) :]:
        ax.axis("off")
    return fig, list(zip(axes.ravel(), models, strict=False))


# ---------------------------------------------------------------- monitoring (MLflow, report)
def drift_figure(drift: pd.DataFrame, warn: float, fail: float) -> Figure | None:
    if drift.empty:
        return None
    d = drift.sort_values("psi", ascending=True)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(d))))
    colors = [STATUS_COLOR.get(s, "#757575") for s in d["status"]]
    ax.barh(d["feature"], d["psi"].fillna(0), color=colors)
    ax.axvline(warn, color=STATUS_COLOR[WARN], ls="--", lw=1, label=f"warn {warn}")
    ax.axvline(fail, color=STATUS_COLOR[FAIL], ls="--", lw=1, label=f"fail {fail}")
    ax.set_xlabel("PSI against the release's training sample")
    ax.set_title("Feature drift")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def bin_share_figure(row: pd.Series) -> Figure:
    """Reference vs current shares over the reference's quantile bins of one feature."""
    ref = np.asarray(row["reference_share"], dtype=float)
    cur = np.asarray(row["current_share"], dtype=float)
    edges = list(row["edges"]) if row["edges"] is not None else []
    if row["kind"] == "numeric":
        labels = [f"≤{edges[0]:.3g}"] if edges else ["all"]
        labels += [f"≤{e:.3g}" for e in edges[1:]] + ([f">{edges[-1]:.3g}"] if edges else []) + ["null"]
    else:
        labels = [f"cat {i + 1}" for i in range(len(ref) - 1)] + ["unseen"]
    x = np.arange(len(ref))
    fig, ax = plt.subplots(figsize=(5.5, 2.6))
    ax.bar(x - 0.2, ref, 0.4, label="reference", color="#90a4ae")
    ax.bar(x + 0.2, cur, 0.4, label="this month", color="#1565c0")
    ax.set_xticks(x, labels[: len(x)], rotation=45, ha="right", fontsize=7)
    ax.set_title(f"{row['feature']} (PSI {row['psi']:.3f})", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _overall(backtest: pd.DataFrame) -> pd.DataFrame:
    """Backtest rows over the whole population slice (dimension all), averaged over score months per
    horizon (one score month per horizon, so this is a selection, not a blend)."""
    return backtest[backtest["dimension"] == "all"].sort_values("horizon")


def calibration_figure(backtest: pd.DataFrame, catalog: ModelCatalog) -> Figure | None:
    rows = _overall(backtest)
    models = [e.model_id for e in catalog.survival if e.model_id in set(rows["model_id"])]
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.2), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        by_population(
            ax, rows[rows["model_id"] == m], "forecast_mean", "actual_mean", ("predicted", "realized")
        )
        ax.set_title(f"{m}: share in base at the monitored month")
        ax.set_xlabel("horizon (months before)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        _integer_x(ax)
    fig.tight_layout()
    return fig


def wape_figure(backtest: pd.DataFrame, catalog: ModelCatalog) -> Figure | None:
    rows = _overall(backtest)
    rows = rows[rows["population"] == "all"]
    models = [e.model_id for e in catalog.amounts if e.model_id in set(rows["model_id"])]
    if not models:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.2))
    for m in models:
        r = rows[rows["model_id"] == m]
        a1.plot(r["horizon"], r["wape"], marker="o", ms=3, label=m)
        a2.plot(r["horizon"], r["bias"], marker="o", ms=3, label=m)
    a1.set_title("WAPE by horizon (all subscribers)")
    a2.set_title("bias (forecast − actual) / |actual|")
    a2.axhline(0, color="black", lw=0.7)
    for ax in (a1, a2):
        ax.set_xlabel("horizon (months before)")
        ax.legend(fontsize=7)
        _integer_x(ax)
    fig.tight_layout()
    return fig


def value_figure(backtest: pd.DataFrame) -> Figure | None:
    rows = _overall(backtest)
    rows = rows[rows["model_id"] == VALUE_CUM]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    per_subscriber = rows.assign(
        forecast=rows["forecast_sum"] / rows["n"], actual=rows["actual_sum"] / rows["n"]
    )
    by_population(ax, per_subscriber, "forecast", "actual", ("forecast", "realized"))
    ax.set_title("Cumulative value per scored subscriber, score month → monitored month")
    ax.set_xlabel("months elapsed since the forecast")
    ax.legend(fontsize=7)
    _integer_x(ax)
    fig.tight_layout()
    return fig


def coverage_figure(coverage: pd.DataFrame, warn: float, fail: float) -> Figure | None:
    """Realized coverage of the cumulative value's interval by horizon and population, against its level
    with the warn / fail bands around it."""
    if coverage is None or coverage.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    level = float(coverage["interval_level"].median())
    ax.axhspan(level - fail, level + fail, color="#fdecea", zorder=0, label=f"±{fail:.0%} (fail)")
    ax.axhspan(level - warn, level + warn, color="#e8f5e9", zorder=0, label=f"±{warn:.0%} (warn)")
    ax.axhline(level, color="black", lw=0.8, label=f"level {level:.0%}")
    for pop, (color, ls) in POP_STYLE.items():
        r = coverage[coverage["population"] == pop].sort_values("horizon")
        if not r.empty:
            ax.plot(r["horizon"], r["coverage"], color=color, ls=ls, marker="o", ms=3, label=pop)
    ax.set_title("Interval coverage of cumulative value (realized inside the interval)")
    ax.set_xlabel("months elapsed since the forecast")
    ax.set_ylim(max(0.0, level - 3 * fail), min(1.0, level + 3 * fail) + 0.02)
    ax.legend(fontsize=7, ncol=2)
    _integer_x(ax)
    fig.tight_layout()
    return fig


def monitoring_figures(
    tables: dict[str, pd.DataFrame],
    catalog: ModelCatalog,
    warn: float = 0.1,
    fail: float = 0.25,
    coverage_warn: float = 0.05,
    coverage_fail: float = 0.1,
) -> dict[str, Figure]:
    """The plots of one month's monitoring tables, for MLflow and for the report."""
    figures = {
        "drift_psi": drift_figure(tables.get("drift", pd.DataFrame()), warn, fail),
    }
    backtest = tables.get("backtest", pd.DataFrame())
    if backtest is not None and not backtest.empty:
        figures["backtest_calibration"] = calibration_figure(backtest, catalog)
        figures["backtest_wape"] = wape_figure(backtest, catalog)
        figures["backtest_value"] = value_figure(backtest)
    coverage = tables.get("coverage", pd.DataFrame())
    figures["interval_coverage"] = coverage_figure(coverage, coverage_warn, coverage_fail)
    return {k: v for k, v in figures.items() if v is not None}


# ---------------------------------------------------------------- the month (report)
def cltv_histogram(sample: pd.DataFrame, subscribers: int) -> Figure:
    """CLTV of a sample of the month's scores (column `cltv`), clipped to its 0.5–99.5 percentiles."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    lo, hi = np.nanpercentile(sample["cltv"], [0.5, 99.5]) if len(sample) else (0, 1)
    bins = np.linspace(lo, hi, 60)
    ax.hist(sample["cltv"].clip(lo, hi), bins=bins, color="#1565c0", alpha=0.85)
    ax.axvline(sample["cltv"].median(), color="black", ls="--", lw=1, label="median")
    ax.set_title(f"CLTV distribution ({subscribers:,} subscribers; 0.5–99.5 percentile range)")
    ax.set_xlabel("CLTV, 60 months")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def release_metrics_figure(pivot: pd.DataFrame) -> Figure | None:
    """Main metric by horizon per model: ROC AUC for the survival models, WAPE for the regressors."""
    if pivot.empty:
        return None
    wanted = [
        i
        for i in pivot.index
        if re.search(r"(roc_auc|auc|wape)$", i) and "naive" not in i and re.search(r"(oot|test)", i)
    ]
    if not wanted:
        wanted = [i for i in pivot.index if re.search(r"(roc_auc|auc|wape)$", i)]
    if not wanted:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
    for fam in wanted[:16]:
        ax = a1 if "auc" in fam else a2
        series = pivot.loc[fam].dropna()
        ax.plot(series.index, series.values, marker="o", ms=3, label=fam)
    a1.set_title("ROC AUC by horizon")
    a2.set_title("WAPE by horizon")
    for ax in (a1, a2):
        ax.set_xlabel("horizon")
        _integer_x(ax)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def main_metric_figure(table: pd.DataFrame) -> Figure | None:
    """Main metric vs naive by horizon, one small panel per model."""
    rows = table[table["horizon"] > 0] if not table.empty else table
    if rows.empty:
        return None
    fig, panels = per_model_panels(rows, (3.3, 2.5))
    for ax, m in panels:
        r = rows[rows["model_id"] == m]
        ax.plot(r["horizon"], r["value"], "-o", ms=2.5, color="#1565c0", label="model")
        ax.plot(r["horizon"], r["naive"], "--", color="#9e9e9e", label="naive")
        ax.set_title(f"{m}: {r['metric'].iloc[0]} ({r['split'].iloc[0]})", fontsize=9)
        ax.tick_params(labelsize=7)
        _integer_x(ax)
    panels[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def drivers_figure(table: pd.DataFrame, value: str, title: str, top: int = 10) -> Figure | None:
    if table.empty:
        return None
    fig, panels = per_model_panels(table, (3.4, 2.9))
    for ax, m in panels:
        t = table[table["model_id"] == m].nlargest(top, value).iloc[::-1]
        ax.barh(t["feature"], t[value], color="#5c6bc0")
        ax.set_title(m, fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def expected_curves_figure(curves: dict[str, dict[int, float]], currency: str) -> Figure | None:
    """The expected base (Σ P(in base) at month k, paid and active) and the cumulative discounted value
    over the 60 months CLTV covers: the two curves a 60-month CLTV rests on."""
    base = {k: v for k, v in curves.items() if k in ("active", "paid")}
    value = curves.get("value", {})
    if not base and len(value) < 2:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.3))
    for (name, points), color in zip(base.items(), ("#1565c0", "#ef6c00"), strict=False):
        months, totals = zip(*sorted(points.items()), strict=True)
        a1.plot(months, np.asarray(totals) / 1e3, "-o", ms=2.5, color=color, label=f"in the {name} base")
    a1.set_title("Expected base: subscribers still in it (thousands)")
    a1.set_ylim(bottom=0)
    if len(value) >= 2:
        months, totals = zip(*sorted(value.items()), strict=True)
        a2.plot(months, np.asarray(totals) / 1e6, "-o", ms=4, color="#2e7d32")
        for m, t in zip(months[1:], totals[1:], strict=True):
            a2.annotate(
                f"{t / 1e6:,.2f}", (m, t / 1e6), textcoords="offset points", xytext=(-10, 6), fontsize=8
            )
        a2.set_ylim(min(0.0, min(totals) / 1e6) * 1.15, max(totals) / 1e6 * 1.15 + 1e-9)
    a2.set_title(f"Cumulative value, discounted (million {currency})")
    for ax in (a1, a2):
        ax.set_xlabel("months from now")
        ax.set_xlim(0, 61)
        ax.set_xticks([0, 12, 24, 36, 48, 60])
        ax.grid(alpha=0.3)
    if a1.lines:
        a1.legend(fontsize=8)
    fig.tight_layout()
    return fig
