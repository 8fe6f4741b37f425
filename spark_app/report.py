"""The monthly review page: one static HTML file with embedded PNG plots and tables.

It shows what a reviewer needs to trust (or question) the month's CLTV: the release's metrics by horizon,
the CLTV distribution and deciles, the top drivers (CatBoost importance and SHAP values of a sample),
input and prediction drift, and the backtest of earlier forecasts (holdout and rest apart). It reads what
`cltv monitor` wrote, so it never recomputes a check; the page is logged to the month's monitoring run
in MLflow and the model version gets a tag pointing at it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app import tracking
from spark_app.catalog import CALENDAR_MONTH, HORIZON, ModelCatalog
from spark_app.config import Settings
from spark_app.contract import ID, MONTH
from spark_app.errors import Unreachable
from spark_app.evaluation import plot_bias_by_horizon
from spark_app.models import Learner
from spark_app.monitoring import (
    FAIL,
    OK,
    VALUE,
    WARN,
    read_monitoring,
    read_month_features,
    read_scores,
)
from spark_app.months import fmt, month_index
from spark_app.storage import Storage

log = logging.getLogger(__name__)

STATUS_COLOR = {OK: "#2e7d32", WARN: "#ef6c00", FAIL: "#c62828", "skipped": "#757575"}
POP_STYLE = {"all": ("#37474f", "-"), "holdout": ("#1565c0", "--"), "rest": ("#ef6c00", ":")}


# ===================================================================== figures
def _integer_x(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def close(fig: Figure) -> None:
    plt.close(fig)


def png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


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
        for pop, (color, ls) in POP_STYLE.items():
            r = rows[(rows["model_id"] == m) & (rows["population"] == pop)]
            if r.empty:
                continue
            ax.plot(
                r["horizon"],
                r["forecast_mean"],
                color=color,
                ls=ls,
                marker="o",
                ms=3,
                label=f"{pop}: predicted",
            )
            ax.plot(
                r["horizon"],
                r["actual_mean"],
                color=color,
                ls=ls,
                marker="x",
                ms=4,
                alpha=0.6,
                label=f"{pop}: realized",
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
    rows = rows[rows["model_id"] == VALUE]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for pop, (color, ls) in POP_STYLE.items():
        r = rows[rows["population"] == pop]
        if r.empty:
            continue
        ax.plot(
            r["horizon"],
            r["forecast_sum"] / r["n"],
            color=color,
            ls=ls,
            marker="o",
            ms=3,
            label=f"{pop}: forecast",
        )
        ax.plot(
            r["horizon"],
            r["actual_sum"] / r["n"],
            color=color,
            ls=ls,
            marker="x",
            ms=4,
            alpha=0.6,
            label=f"{pop}: realized",
        )
    ax.set_title("Cumulative value per scored subscriber, score month → monitored month")
    ax.set_xlabel("months elapsed since the forecast")
    ax.legend(fontsize=7)
    _integer_x(ax)
    fig.tight_layout()
    return fig


def monitoring_figures(
    tables: dict[str, pd.DataFrame], catalog: ModelCatalog, warn: float = 0.1, fail: float = 0.25
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
    return {k: v for k, v in figures.items() if v is not None}


# ===================================================================== data for the page
def cltv_deciles(scores: DataFrame) -> pd.DataFrame:
    """Deciles of CLTV (approximate edges, 0.1% rank error) with the mean of every numeric score column."""
    edges = scores.approxQuantile("cltv", [i / 10 for i in range(1, 10)], 1e-3)
    decile = sum((F.col("cltv") > F.lit(e)).cast("int") for e in edges) + F.lit(1)
    numeric = [
        f.name
        for f in scores.schema.fields
        if f.dataType.typeName() in ("double", "float", "integer", "long") and f.name != "cltv"
    ]
    keep = [c for c in numeric if c in ("cltv_24m", "p_paid_12m", "p_active_12m", "p_paid_60m")]
    out = (
        scores.withColumn("decile", decile)
        .groupBy("decile")
        .agg(
            F.count(F.lit(1)).alias("subscribers"),
            F.min("cltv").alias("cltv_min"),
            F.avg("cltv").alias("cltv_mean"),
            F.max("cltv").alias("cltv_max"),
            F.sum("cltv").alias("cltv_sum"),
            *[F.avg(c).alias(f"{c}_mean") for c in keep],
        )
        .orderBy("decile")
        .toPandas()
    )
    out["share_of_total_cltv"] = out["cltv_sum"] / out["cltv_sum"].sum()
    return out.drop(columns=["cltv_sum"])


def cltv_histogram(scores: DataFrame, sample_rows: int = 200_000) -> Figure:
    n = scores.count()
    frac = min(1.0, sample_rows / max(n, 1))
    sample = scores.select("cltv", "holdout").sample(fraction=frac, seed=7).toPandas()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    lo, hi = np.nanpercentile(sample["cltv"], [0.5, 99.5]) if len(sample) else (0, 1)
    bins = np.linspace(lo, hi, 60)
    ax.hist(sample["cltv"].clip(lo, hi), bins=bins, color="#1565c0", alpha=0.85)
    ax.axvline(sample["cltv"].median(), color="black", ls="--", lw=1, label="median")
    ax.set_title(f"CLTV distribution ({n:,} subscribers; 0.5–99.5 percentile range)")
    ax.set_xlabel("CLTV, 60 months")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


HORIZON_TOKEN = re.compile(r"(?:^|[._/])h_?(\d{1,2})(?=$|[._/])")


def metrics_by_horizon(metrics: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a run's metrics into (family × horizon pivot, metrics without a horizon).

    Works with any key naming that carries the horizon as a `h<NN>` / `h_<NN>` token between
    separators, e.g. `paid.oot.h03.roc_auc` → family `paid.oot.roc_auc`, horizon 3.
    """
    rows, flat = [], []
    for key, value in metrics.items():
        m = HORIZON_TOKEN.search(key)
        if m:
            family = (key[: m.start()] + key[m.end() :]).strip("._/")
            family = re.sub(r"[._/]{2,}", ".", family)
            rows.append((family, int(m.group(1)), value))
        else:
            flat.append((key, value))
    pivot = pd.DataFrame(rows, columns=["metric", "horizon", "value"])
    if not pivot.empty:
        pivot = pivot.pivot_table(index="metric", columns="horizon", values="value", aggfunc="first")
    return pivot, pd.DataFrame(flat, columns=["metric", "value"]).sort_values("metric")


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


def release_info(settings: Settings, release: Any) -> dict[str, Any]:
    """Manifest facts and the training run's metrics (whatever the training job logged)."""
    info: dict[str, Any] = {
        "version": str(getattr(release, "version", "?")),
        "run_id": None,
        "metrics": {},
        "manifest": getattr(release, "manifest", {}) or {},
        "run_name": None,
    }
    run_id = getattr(release, "run_id", None)
    if run_id:
        try:
            run = tracking.client(settings.mlflow).get_run(run_id)
            info.update(run_id=run_id, metrics=dict(run.data.metrics), run_name=run.info.run_name)
        except Exception as exc:  # the page still helps without the training run
            if tracking.is_unreachable(exc):
                raise
            log.warning("release run %s not readable: %s", run_id, exc)
        info.update(evaluation_tables(settings, run_id))
    return info


EVALUATION_TABLES = {
    "by_horizon": "evaluation/metrics_by_horizon.csv",
    "quality": "evaluation/quality_oot.csv",
}


def evaluation_tables(settings: Settings, run_id: str) -> dict[str, pd.DataFrame]:
    """The per-horizon evaluation tables the training job logs as run artifacts (empty when absent)."""
    import tempfile

    client = tracking.client(settings.mlflow)
    out = {}
    with tempfile.TemporaryDirectory(prefix="cltv-report-") as tmp:
        for key, path in EVALUATION_TABLES.items():
            try:
                out[key] = pd.read_csv(client.download_artifacts(run_id, path, tmp))
            except Exception as exc:
                log.info("release run %s: no %s (%s)", run_id, path, str(exc).splitlines()[0][:120])
                out[key] = pd.DataFrame()
    return out


def main_metric_table(by_horizon: pd.DataFrame, settings: Settings, split: str = "oot") -> pd.DataFrame:
    """Per model and horizon: the model's main metric (promotion.main_metric) and its naive baseline."""
    from spark_app.evaluation import main_metric_of

    if by_horizon.empty:
        return by_horizon
    t = by_horizon[by_horizon["split"] == split]
    if t.empty:
        t = by_horizon[by_horizon["split"] == by_horizon["split"].iloc[0]]
    wanted = {
        m: main_metric_of(settings.promotion.main_metric, m, k)
        for m, k in t[["model_id", "kind"]].drop_duplicates().itertuples(index=False)
    }
    t = t[[wanted.get(m) == metric for m, metric in zip(t["model_id"], t["metric"], strict=True)]]
    cols = ["model_id", "split", "metric", "horizon", "rows", "value", "naive"]
    return t[cols].sort_values(["model_id", "horizon"])


def main_metric_figure(table: pd.DataFrame) -> Figure | None:
    """Main metric vs naive by horizon, one small panel per model."""
    rows = table[table["horizon"] > 0] if not table.empty else table
    if rows.empty:
        return None
    models = list(dict.fromkeys(rows["model_id"]))
    cols = min(4, len(models))
    n_rows = -(-len(models) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.3 * cols, 2.5 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(models) :]:
        ax.axis("off")
    for ax, m in zip(axes.ravel(), models, strict=False):
        r = rows[rows["model_id"] == m]
        ax.plot(r["horizon"], r["value"], "-o", ms=2.5, color="#1565c0", label="model")
        ax.plot(r["horizon"], r["naive"], "--", color="#9e9e9e", label="naive")
        ax.set_title(f"{m}: {r['metric'].iloc[0]} ({r['split'].iloc[0]})", fontsize=9)
        ax.tick_params(labelsize=7)
        _integer_x(ax)
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------- drivers: importance and SHAP
def release_learner(release: Any) -> Any | None:
    try:
        return release.learner()
    except Exception as exc:
        log.warning(
            "release %s: no learner (%s); drivers are left out", getattr(release, "version", "?"), exc
        )
        return None


def feature_frame(features: pd.DataFrame, month: dt.date, horizon: int) -> pd.DataFrame:
    """The features of `month` as the models see them `horizon` months ahead."""
    frame = features.copy()
    frame[HORIZON] = horizon
    frame[CALENDAR_MONTH] = (month_index(month) + horizon) % 12 + 1
    return frame


def drivers(
    learner: Learner, sample: pd.DataFrame, month: dt.date, settings: Settings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top drivers per model: CatBoost's own importance, and mean |SHAP| of the calibrated forecast over a
    sample of this month's subscribers at the configured horizon (Learner.shap_values)."""
    frame = feature_frame(sample, month, settings.monitoring.report_shap_horizon)
    imp_rows, shap_rows = [], []
    for model_id, model in learner.models.items():
        importance = model.get_feature_importance()
        imp_rows += [(model_id, n, float(v)) for n, v in zip(model.feature_names_, importance, strict=True)]
    try:
        explained = learner.shap_values(frame)
    except Exception as exc:
        log.warning("SHAP values not computed: %s", exc)
        explained = {}
    for model_id, (names, values) in explained.items():
        mean_abs = np.abs(values).mean(axis=0)
        shap_rows += [(model_id, n, float(v)) for n, v in zip(names, mean_abs, strict=True)]
    return (
        pd.DataFrame(imp_rows, columns=["model_id", "feature", "importance"]),
        pd.DataFrame(shap_rows, columns=["model_id", "feature", "mean_abs_shap"]),
    )


def drivers_figure(table: pd.DataFrame, value: str, title: str, top: int = 10) -> Figure | None:
    if table.empty:
        return None
    models = list(dict.fromkeys(table["model_id"]))
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel()[len(models) :]:
        ax.axis("off")
    for ax, m in zip(axes.ravel(), models, strict=False):
        t = table[table["model_id"] == m].nlargest(top, value).iloc[::-1]
        ax.barh(t["feature"], t[value], color="#5c6bc0")
        ax.set_title(m, fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ===================================================================== HTML
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
  color:#222}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.note{color:#555;font-size:12px} .scroll{overflow-x:auto} img{max-width:100%}
ul.msgs li{font-size:13px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def badge(status: str) -> str:
    return (
        f'<span class="badge" style="background:{STATUS_COLOR.get(status, "#757575")}">{_esc(status)}</span>'
    )


def table_html(
    df: pd.DataFrame, *, floatfmt: str = "{:,.4g}", status_col: str | None = "status", max_rows: int = 200
) -> str:
    if df is None or df.empty:
        return '<p class="note">(no rows)</p>'
    df = df.head(max_rows)
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            if c == status_col:
                cells.append(f"<td>{badge(v)}</td>")
            elif isinstance(v, (float, np.floating)):
                cells.append("<td></td>" if np.isnan(v) else f"<td>{floatfmt.format(v)}</td>")
            else:
                cells.append(f"<td>{_esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def img_html(fig: Figure | None, alt: str) -> str:
    if fig is None:
        return ""
    return f'<p><img alt="{_esc(alt)}" src="data:image/png;base64,{png_base64(fig)}"></p>'


def backtest_tables(
    backtest: pd.DataFrame, horizons: list[int], catalog: ModelCatalog
) -> dict[str, pd.DataFrame]:
    """Readable slices of the long backtest table."""
    if backtest.empty:
        return {}
    bt = backtest.copy()
    out = {}
    overall = bt[(bt["dimension"] == "all")]
    surv = overall[overall["model_id"].isin([e.model_id for e in catalog.survival])]
    if not surv.empty:
        t = surv[surv["horizon"].isin(horizons)]
        t = t[["model_id", "horizon", "score_month", "population", "n", "forecast_mean", "actual_mean"]]
        t = t.rename(columns={"forecast_mean": "predicted_share", "actual_mean": "realized_share"})
        t = t.assign(difference=t["predicted_share"] - t["realized_share"])
        out["Survival calibration at selected horizons (predicted vs realized share in base)"] = (
            t.sort_values(["model_id", "horizon", "population"])
        )
    amounts = overall[overall["model_id"].isin([*(e.model_id for e in catalog.amounts), VALUE])]
    if not amounts.empty:
        t = amounts[amounts["horizon"].isin(horizons)]
        t = t[["model_id", "horizon", "population", "n", "forecast_sum", "actual_sum", "wape", "bias"]]
        out["Amounts: WAPE and bias at selected horizons (value_cum = value realized since the forecast)"] = (
            t.sort_values(["model_id", "horizon", "population"])
        )
    h = min(bt["horizon"])
    by_dim = bt[
        (bt["dimension"] != "all")
        & (bt["horizon"] == h)
        & (bt["population"] == "all")
        & bt["model_id"].isin(["paid", VALUE])
    ]
    if not by_dim.empty:
        wide = by_dim.pivot_table(
            index=["dimension", "value"],
            columns="model_id",
            values=["n", "forecast_mean", "actual_mean", "wape", "bias"],
            aggfunc="first",
        )
        cols = {}
        if "paid" in set(by_dim["model_id"]):
            cols.update(
                {
                    ("n", "paid"): "n",
                    ("forecast_mean", "paid"): "paid predicted",
                    ("actual_mean", "paid"): "paid realized",
                }
            )
        if VALUE in set(by_dim["model_id"]):
            cols.update(
                {
                    ("forecast_mean", VALUE): "value forecast / sub",
                    ("actual_mean", VALUE): "value realized / sub",
                    ("wape", VALUE): "value WAPE",
                    ("bias", VALUE): "value bias",
                }
            )
        wide = wide[[c for c in cols if c in wide.columns]]
        wide.columns = [cols[c] for c in wide.columns]
        wide = wide.reset_index()
        lead = wide["value"].str.extract(r"^(\d+)", expand=False).astype("float64")
        wide = wide.assign(_k=lead.fillna(-1)).sort_values(["dimension", "_k", "value"]).drop(columns="_k")
        out[f"By segment / region / tenure cohort at horizon {h}"] = wide
    return out


def render(ctx: dict[str, Any]) -> str:
    """The page from a context of prepared tables and (already encoded) images."""
    s = ctx["summary"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>CLTV review {ctx['month']}</title><style>{CSS}</style></head><body>",
        f"<h1>CLTV monthly review — {ctx['month']} {badge(s.get('status', 'skipped'))}</h1>",
        f"<p class='note'>Release {_esc(ctx['release']['version'])}"
        f" (training run {_esc(ctx['release'].get('run_id') or 'n/a')});"
        f" monitoring run {_esc(s.get('run_id', 'n/a'))}; generated {_esc(ctx['generated'])}.</p>",
    ]
    msgs = [("fail", m) for m in s.get("failures", [])] + [("warn", m) for m in s.get("warnings", [])]
    if msgs:
        parts.append(
            "<ul class='msgs'>" + "".join(f"<li>{badge(k)} {_esc(m)}</li>" for k, m in msgs) + "</ul>"
        )
    for title, body in ctx["sections"]:
        parts.append(f"<h2>{_esc(title)}</h2>{body}")
    parts.append("</body></html>")
    return "\n".join(parts)


# ===================================================================== the job
def _section_release(settings: Settings, info: dict[str, Any]) -> str:
    manifest = info["manifest"]
    facts = {
        "version": info["version"],
        "run": info.get("run_name") or info.get("run_id"),
        "dataset": manifest.get("dataset_id"),
        "models": ", ".join(manifest.get("models", {}) or []),
        "horizons": _short_list(manifest.get("horizons")),
    }
    body = table_html(
        pd.DataFrame([{"field": k, "value": v} for k, v in facts.items() if v is not None]), status_col=None
    )
    quality = info.get("quality", pd.DataFrame())
    if quality is not None and not quality.empty:
        body += (
            "<h3>Out-of-time quality over all horizons, against the naive baseline</h3><p class='note'>"
            "CLTV sums expectations, so the aggregate bias (Σ forecast / Σ actual − 1) comes first; "
            "<b>value</b> is a month's value by the CLTV formula, <b>cum_bias</b> its bias summed over "
            "horizons 1..24.</p>"
        )
        body += table_html(quality, status_col=None)
    by_horizon = info.get("by_horizon", pd.DataFrame())
    if by_horizon is not None and not by_horizon.empty:
        body += img_html(plot_bias_by_horizon(by_horizon), "aggregate bias by horizon")
    main = main_metric_table(info.get("by_horizon", pd.DataFrame()), settings)
    if not main.empty:
        body += img_html(main_metric_figure(main), "main metric by horizon")
        keep = [0, *settings.monitoring.metric_horizons]
        sel = main[main["horizon"].isin(keep)]
        wide = sel.pivot_table(index=["model_id", "metric"], columns="horizon", values=["value", "naive"])
        order = sorted(wide.columns, key=lambda c: (c[1], c[0] != "value"))
        wide = wide[order]
        wide.columns = [
            f"{'model' if v == 'value' else 'naive'} {'all' if h == 0 else f'h{h}'}" for v, h in order
        ]
        body += "<h3>Main metric at selected horizons</h3>"
        body += table_html(wide.reset_index(), status_col=None)
    pivot, flat = metrics_by_horizon(
        {k: v for k, v in info["metrics"].items() if not k.endswith(".by_horizon")}
    )
    if main.empty:
        body += img_html(release_metrics_figure(pivot), "release metrics by horizon")
        if not pivot.empty:
            keep = [h for h in settings.monitoring.metric_horizons if h in pivot.columns] or list(
                pivot.columns
            )
            body += "<h3>Metrics by horizon (selected horizons)</h3>"
            body += table_html(pivot[keep].reset_index(), status_col=None, max_rows=400)
    if not flat.empty:
        body += "<details><summary>All other metrics of the training run</summary>"
        body += table_html(flat, status_col=None, max_rows=400) + "</details>"
    if main.empty and pivot.empty and flat.empty:
        body += "<p class='note'>The release's MLflow run has no metrics (or is not readable).</p>"
    return body


def _short_list(x: Any) -> str | None:
    if not x:
        return None
    x = list(x)
    return f"{x[0]}..{x[-1]}" if len(x) > 3 and x == list(range(x[0], x[-1] + 1)) else ", ".join(map(str, x))


def _section_cltv(scores: DataFrame | None) -> str:
    if scores is None:
        return "<p class='note'>No scores for this month.</p>"
    body = img_html(cltv_histogram(scores), "CLTV distribution")
    if "holdout" in scores.columns:
        group = F.when(F.coalesce(F.col("holdout"), F.lit(False)), "holdout").otherwise("rest")
        split = (
            scores.groupBy(group.alias("group"))
            .agg(
                F.count(F.lit(1)).alias("subscribers"),
                F.avg("cltv").alias("cltv_mean"),
                F.expr("percentile_approx(cltv, 0.5)").alias("cltv_median"),
                F.sum("cltv").alias("cltv_sum"),
            )
            .toPandas()
        )
        body += "<h3>Holdout group and the rest</h3>" + table_html(split, status_col=None)
    body += "<h3>Deciles of CLTV</h3>" + table_html(cltv_deciles(scores), status_col=None)
    return body


def _section_drivers(spark: SparkSession, settings: Settings, release: Any, month: dt.date) -> str:
    learner = release_learner(release) if release is not None else None
    if learner is None or not getattr(learner, "models", None):
        return "<p class='note'>The release's models are not available here; drivers left out.</p>"
    n = settings.monitoring.report_shap_rows
    features = read_month_features(spark, settings, month)
    total = features.count()
    sample = (
        features.sample(fraction=min(1.0, 1.5 * n / max(total, 1)), seed=11)
        .limit(n)
        .drop(ID, MONTH)
        .toPandas()
    )
    importance, shap = drivers(learner, sample, month, settings)
    body = img_html(
        drivers_figure(importance, "importance", "CatBoost feature importance (top 10)"), "feature importance"
    )
    body += img_html(
        drivers_figure(
            shap,
            "mean_abs_shap",
            f"Mean |SHAP| over {len(sample):,} subscribers of {fmt(month)}, "
            f"horizon {settings.monitoring.report_shap_horizon}",
        ),
        "SHAP",
    )
    return body


def _section_drift(settings: Settings, drift: pd.DataFrame, pred: pd.DataFrame) -> str:
    cfg = settings.monitoring
    if drift.empty:
        body = "<p class='note'>No drift table.</p>"
    else:
        body = img_html(drift_figure(drift, cfg.psi_warn, cfg.psi_fail), "feature drift")
        cols = [
            "feature",
            "kind",
            "status",
            "psi",
            "unseen_share",
            "unseen_values",
            "reference_rows",
            "current_rows",
        ]
        body += table_html(drift.sort_values("psi", ascending=False)[cols])
        top = drift[drift["status"].isin([WARN, FAIL])].sort_values("psi", ascending=False).head(4)
        if not top.empty:
            body += "<h3>Most drifted features: shares over the reference's bins</h3>"
            body += "".join(img_html(bin_share_figure(r), r["feature"]) for _, r in top.iterrows())
    body += "<h3>Prediction drift against the previous month</h3>"
    if pred.empty:
        body += "<p class='note'>Skipped (no scores for this or the previous month).</p>"
    else:
        cols = [
            "column",
            "status",
            "psi",
            "previous_mean",
            "current_mean",
            "previous_p10",
            "current_p10",
            "previous_p50",
            "current_p50",
            "previous_p90",
            "current_p90",
        ]
        body += table_html(pred[[c for c in cols if c in pred.columns]])
    return body


def _section_backtest(settings: Settings, backtest: pd.DataFrame) -> str:
    catalog = settings.models.catalog()
    if backtest.empty:
        return (
            "<p class='note'>No backtest: no earlier scores with detail arrays (score with --detail), "
            "or the facts of this month have not arrived.</p>"
        )
    months = sorted({str(m) for m in backtest["score_month"]})
    body = (
        f"<p class='note'>Forecasts made at {len(months)} earlier score months ({months[0]}..{months[-1]}) "
        "compared with what subscribers did in the monitored month. <b>holdout</b> is the control group "
        "campaigns must not target, so its figures are not biased by retention actions.</p>"
    )
    for fig, alt in (
        (calibration_figure(backtest, catalog), "calibration"),
        (wape_figure(backtest, catalog), "wape"),
        (value_figure(backtest), "value"),
    ):
        body += img_html(fig, alt)
    for title, t in backtest_tables(backtest, settings.monitoring.metric_horizons, catalog).items():
        body += f"<h3>{_esc(title)}</h3>" + table_html(t, status_col=None, max_rows=300)
    return body


def report_path(settings: Settings, month: dt.date) -> str:
    return f"{settings.paths.monitoring.rstrip('/')}/reports/cltv-report-{month:%Y-%m}.html"


def _load_release(settings: Settings, version: str | None) -> Any | None:
    try:
        from spark_app.registry import load_release

        return load_release(settings, version or "champion")
    except Unreachable:
        raise
    except Exception as exc:
        log.warning("release %s not loadable (%s): release sections are left out", version, exc)
        return None


def build_report(
    spark: SparkSession, settings: Settings, month: dt.date, *, release: Any | None = None
) -> str:
    """Write the month's review page (from `cltv monitor`'s output) and return its path.

    The page is also logged to the month's monitoring run in MLflow, and the model version (and its
    training run) get a tag `monitoring_report.YYYY-MM` with the artifact's location.
    """
    monitored = read_monitoring(spark, settings, month)
    summary = monitored["summary"]
    if release is None:
        release = _load_release(settings, summary.get("release_version"))
    info = (
        release_info(settings, release)
        if release is not None
        else {
            "version": summary.get("release_version"),
            "run_id": summary.get("release_run_id"),
            "metrics": {},
            "manifest": {},
        }
    )
    scores = read_scores(spark, settings, month)
    sections = [
        ("Release metrics by horizon", _section_release(settings, info)),
        ("CLTV distribution and deciles", _section_cltv(scores)),
        ("Top drivers", _section_drivers(spark, settings, release, month)),
        ("Drift", _section_drift(settings, monitored["drift"], monitored["prediction_drift"])),
        (
            "Backtest: earlier forecasts against this month",
            _section_backtest(settings, monitored["backtest"]),
        ),
    ]
    page = render(
        {
            "month": fmt(month),
            "summary": summary,
            "release": info,
            "sections": sections,
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
    )
    storage = Storage(spark)
    target = report_path(settings, month)
    storage.mkdirs(target.rsplit("/", 1)[0])
    tmp = f"{target}.tmp"
    storage.write_text(tmp, page)
    storage.delete(target)
    storage.rename(tmp, target)
    location = storage.qualify(target)
    artifact = log_report(settings, month, summary, page, info["version"], info.get("run_id"))
    log.info("report for %s: %s (MLflow artifact %s)", fmt(month), location, artifact)
    return location[len("file:") :] if location.startswith("file:") else location


@tracking.guarded
def log_report(
    settings: Settings,
    month: dt.date,
    summary: dict[str, Any],
    page: str,
    version: Any,
    release_run_id: str | None,
) -> str | None:
    """Attach the page to the monitoring run; tag the run, the model version and its training run."""
    client = tracking.client(settings.mlflow)
    run_id = summary.get("run_id")
    if not run_id:
        return None
    name = f"cltv-report-{month:%Y-%m}.html"
    client.log_text(run_id, page, f"report/{name}")
    uri = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/report/{name}"
    client.set_tag(run_id, "report", uri)
    key = f"monitoring_report.{fmt(month)}"
    try:
        client.set_model_version_tag(settings.mlflow.model_name, str(version), key, uri)
    except Exception as exc:
        log.warning("model version %s of %s not tagged: %s", version, settings.mlflow.model_name, exc)
    if release_run_id:
        try:
            client.set_tag(release_run_id, key, uri)
        except Exception as exc:
            log.warning("release run %s not tagged: %s", release_run_id, exc)
    return uri
