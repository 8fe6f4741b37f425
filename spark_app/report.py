"""The monthly review page: one static HTML file with embedded PNG plots and tables.

It shows what a reviewer needs to trust (or question) the month's CLTV: the release's metrics by horizon,
the CLTV distribution and deciles, the top drivers (CatBoost importance and SHAP values of a sample),
input and prediction drift, and the backtest of earlier forecasts (holdout and rest apart). It reads what
`cltv monitor` wrote, so it never recomputes a check; the page is logged to the month's monitoring run
in MLflow and the model version gets a tag pointing at it.

Sections are lists of blocks (a note, a table, an image, a details fold); templates/report.html.j2 lays
them out, escaping every value.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app import tracking
from spark_app.backtest import VALUE_CUM
from spark_app.campaigns.evaluate import review_tables
from spark_app.catalog import ModelCatalog
from spark_app.checks import FAIL, SKIPPED, WARN
from spark_app.config import Settings
from spark_app.contract import ID, MONTH
from spark_app.errors import Unreachable
from spark_app.evaluation import main_metric_of
from spark_app.figures import (
    STATUS_COLOR,
    bin_share_figure,
    calibration_figure,
    cltv_histogram,
    coverage_figure,
    drift_figure,
    drivers_figure,
    main_metric_figure,
    plot_bias_by_horizon,
    png_base64,
    release_metrics_figure,
    value_figure,
    wape_figure,
)
from spark_app.horizons import horizon_frame
from spark_app.layout import read_scores, report_file
from spark_app.models import Learner
from spark_app.monitoring import read_monitoring, read_month_features
from spark_app.months import fmt, month_index
from spark_app.registry import Release, load_release
from spark_app.storage import Storage

log = logging.getLogger(__name__)

TEMPLATE = "templates/report.html.j2"
HISTOGRAM_SAMPLE = 200_000


# ===================================================================== blocks of a section
@dataclass(frozen=True)
class Note:
    text: str  # plain text, or Markup written by this module (never data)
    kind: str = "note"


@dataclass(frozen=True)
class Image:
    alt: str
    png: str  # base64
    kind: str = "image"


@dataclass(frozen=True)
class Cell:
    text: str
    status: bool = False  # shown as a coloured badge


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    title: str | None = None
    note: str | None = None
    kind: str = "table"


@dataclass(frozen=True)
class Details:
    summary: str
    blocks: list[Any]
    kind: str = "details"


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)


def _cell(value: Any, floatfmt: str) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else floatfmt.format(value)
    return str(value)


def table(
    df: pd.DataFrame | None,
    title: str | None = None,
    *,
    status_col: str | None = None,
    max_rows: int = 200,
    floatfmt: str = "{:,.4g}",
    note: str | None = None,
) -> Table:
    """A pandas frame as a table block: floats formatted, the status column as badges, at most max_rows."""
    if df is None or df.empty:
        return Table([], [], title, note)
    head = df.head(max_rows)
    rows = [
        [Cell(_cell(v, floatfmt), status=c == status_col) for c, v in zip(head.columns, values, strict=True)]
        for values in head.itertuples(index=False)
    ]
    return Table([str(c) for c in head.columns], rows, title, note)


def image(fig: Figure | None, alt: str) -> list[Image]:
    """A figure as an image block (none when there is nothing to draw)."""
    return [] if fig is None else [Image(alt, png_base64(fig))]


def render(
    month: str, summary: dict[str, Any], release: dict[str, Any], sections: list[Section], generated: str
) -> str:
    """The page from its sections, through templates/report.html.j2 (read with importlib.resources, so it
    works from a wheel or the zip shipped with --py-files)."""
    text = resources.files("spark_app").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    messages = [(FAIL, m) for m in summary.get("failures", [])] + [
        (WARN, m) for m in summary.get("warnings", [])
    ]
    return env.from_string(text).render(
        month=month,
        status=summary.get("status", SKIPPED),
        release_version=release.get("version"),
        release_run=release.get("run_id"),
        monitoring_run=summary.get("run_id"),
        generated=generated,
        messages=messages,
        sections=sections,
        colors=STATUS_COLOR,
    )


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


def release_info(settings: Settings, release: Release) -> dict[str, Any]:
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


# ----------------------------------------------------------------- drivers: importance and SHAP
def release_learner(release: Release) -> Learner | None:
    try:
        return release.learner()
    except Exception as exc:
        log.warning(
            "release %s: no learner (%s); drivers are left out", getattr(release, "version", "?"), exc
        )
        return None


def drivers(
    learner: Learner, sample: pd.DataFrame, month: dt.date, settings: Settings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top drivers per model: CatBoost's own importance, and mean |SHAP| of the calibrated forecast over a
    sample of this month's subscribers at the configured horizon (Learner.shap_values)."""
    frame = horizon_frame(sample, month_index(month), [settings.monitoring.report_shap_horizon])
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
    amounts = overall[overall["model_id"].isin([*(e.model_id for e in catalog.amounts), VALUE_CUM])]
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
        & bt["model_id"].isin(["paid", VALUE_CUM])
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
        if VALUE_CUM in set(by_dim["model_id"]):
            cols.update(
                {
                    ("forecast_mean", VALUE_CUM): "value forecast / sub",
                    ("actual_mean", VALUE_CUM): "value realized / sub",
                    ("wape", VALUE_CUM): "value WAPE",
                    ("bias", VALUE_CUM): "value bias",
                }
            )
        wide = wide[[c for c in cols if c in wide.columns]]
        wide.columns = [cols[c] for c in wide.columns]
        wide = wide.reset_index()
        lead = wide["value"].str.extract(r"^(\d+)", expand=False).astype("float64")
        wide = wide.assign(_k=lead.fillna(-1)).sort_values(["dimension", "_k", "value"]).drop(columns="_k")
        out[f"By segment / region / tenure cohort at horizon {h}"] = wide
    return out


def _short_list(x: Any) -> str | None:
    if not x:
        return None
    x = list(x)
    return f"{x[0]}..{x[-1]}" if len(x) > 3 and x == list(range(x[0], x[-1] + 1)) else ", ".join(map(str, x))


# ===================================================================== sections
def section_release(settings: Settings, info: dict[str, Any]) -> list[Any]:
    manifest = info["manifest"]
    facts = {
        "version": info["version"],
        "run": info.get("run_name") or info.get("run_id"),
        "dataset": manifest.get("dataset_id"),
        "models": ", ".join(manifest.get("models", {}) or []),
        "horizons": _short_list(manifest.get("horizons")),
    }
    blocks: list[Any] = [
        table(pd.DataFrame([{"field": k, "value": v} for k, v in facts.items() if v is not None]))
    ]
    quality = info.get("quality", pd.DataFrame())
    if quality is not None and not quality.empty:
        blocks.append(
            table(
                quality,
                "Out-of-time quality over all horizons, against the naive baseline",
                note=Markup(
                    "CLTV sums expectations, so the aggregate bias (Σ forecast / Σ actual − 1) comes first; "
                    "<b>value</b> is a month's value by the CLTV formula, <b>cum_bias</b> its bias summed "
                    "over horizons 1..24."
                ),
            )
        )
    by_horizon = info.get("by_horizon", pd.DataFrame())
    if by_horizon is not None and not by_horizon.empty:
        blocks += image(plot_bias_by_horizon(by_horizon), "aggregate bias by horizon")
    main = main_metric_table(info.get("by_horizon", pd.DataFrame()), settings)
    if not main.empty:
        blocks += image(main_metric_figure(main), "main metric by horizon")
        keep = [0, *settings.monitoring.metric_horizons]
        sel = main[main["horizon"].isin(keep)]
        wide = sel.pivot_table(index=["model_id", "metric"], columns="horizon", values=["value", "naive"])
        order = sorted(wide.columns, key=lambda c: (c[1], c[0] != "value"))
        wide = wide[order]
        wide.columns = [
            f"{'model' if v == 'value' else 'naive'} {'all' if h == 0 else f'h{h}'}" for v, h in order
        ]
        blocks.append(table(wide.reset_index(), "Main metric at selected horizons"))
    pivot, flat = metrics_by_horizon(
        {k: v for k, v in info["metrics"].items() if not k.endswith(".by_horizon")}
    )
    if main.empty:
        blocks += image(release_metrics_figure(pivot), "release metrics by horizon")
        if not pivot.empty:
            keep = [h for h in settings.monitoring.metric_horizons if h in pivot.columns] or list(
                pivot.columns
            )
            blocks.append(
                table(pivot[keep].reset_index(), "Metrics by horizon (selected horizons)", max_rows=400)
            )
    if not flat.empty:
        blocks.append(Details("All other metrics of the training run", [table(flat, max_rows=400)]))
    if main.empty and pivot.empty and flat.empty:
        blocks.append(Note("The release's MLflow run has no metrics (or is not readable)."))
    return blocks


def section_cltv(scores: DataFrame | None) -> list[Any]:
    if scores is None:
        return [Note("No scores for this month.")]
    subscribers = scores.count()
    fraction = min(1.0, HISTOGRAM_SAMPLE / max(subscribers, 1))
    sample = scores.select("cltv").sample(fraction=fraction, seed=7).toPandas()
    blocks: list[Any] = image(cltv_histogram(sample, subscribers), "CLTV distribution")
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
        blocks.append(table(split, "Holdout group and the rest"))
    blocks.append(table(cltv_deciles(scores), "Deciles of CLTV"))
    return blocks


def section_drivers(
    spark: SparkSession, settings: Settings, release: Release | None, month: dt.date
) -> list[Any]:
    learner = release_learner(release) if release is not None else None
    if learner is None or not learner.models:
        return [Note("The release's models are not available here; drivers left out.")]
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
    title = (
        f"Mean |SHAP| over {len(sample):,} subscribers of {fmt(month)}, "
        f"horizon {settings.monitoring.report_shap_horizon}"
    )
    return [
        *image(
            drivers_figure(importance, "importance", "CatBoost feature importance (top 10)"), "importance"
        ),
        *image(drivers_figure(shap, "mean_abs_shap", title), "SHAP"),
    ]


def section_drift(settings: Settings, drift: pd.DataFrame, pred: pd.DataFrame) -> list[Any]:
    cfg = settings.monitoring
    blocks: list[Any] = []
    if drift.empty:
        blocks.append(Note("No drift table."))
    else:
        blocks += image(drift_figure(drift, cfg.psi_warn, cfg.psi_fail), "feature drift")
        cols = ["feature", "kind", "status", "psi", "unseen_share", "unseen_values", "reference_rows",
                "current_rows"]  # fmt: skip
        blocks.append(table(drift.sort_values("psi", ascending=False)[cols], status_col="status"))
        top = drift[drift["status"].isin([WARN, FAIL])].sort_values("psi", ascending=False).head(4)
        if not top.empty:
            blocks.append(Note("Most drifted features: shares over the reference's bins"))
            for _, row in top.iterrows():
                blocks += image(bin_share_figure(row), row["feature"])
    if pred.empty:
        blocks.append(
            table(
                None,
                "Prediction drift against the previous month",
                note="Skipped (no scores for this or the previous month).",
            )
        )
    else:
        cols = ["column", "status", "psi", "previous_mean", "current_mean", "previous_p10", "current_p10",
                "previous_p50", "current_p50", "previous_p90", "current_p90"]  # fmt: skip
        blocks.append(
            table(
                pred[[c for c in cols if c in pred.columns]],
                "Prediction drift against the previous month",
                status_col="status",
            )
        )
    return blocks


def section_backtest(
    settings: Settings, backtest: pd.DataFrame, survival: pd.DataFrame | None = None
) -> list[Any]:
    catalog = settings.models.catalog()
    if backtest.empty:
        return [
            Note(
                "No backtest: no earlier scores with detail arrays (score with --detail), "
                "or the facts of this month have not arrived."
            )
        ]
    months = sorted({str(m) for m in backtest["score_month"]})
    blocks: list[Any] = [
        Note(
            Markup(
                "Forecasts made at {n} earlier score months ({first}..{last}) compared with what subscribers "
                "did in the monitored month. <b>holdout</b> is the control group campaigns must not target, "
                "so its figures are not biased by retention actions."
            ).format(n=len(months), first=months[0], last=months[-1])
        ),
        *image(calibration_figure(backtest, catalog), "calibration"),
        *image(wape_figure(backtest, catalog), "wape"),
        *image(value_figure(backtest), "value"),
    ]
    if survival is not None and not survival.empty:
        shown = survival[
            ["model_id", "horizon", "score_month", "n", "predicted", "realized", "gap", "status"]
        ]
        blocks.append(
            table(
                shown,
                "Survival calibration: predicted vs realized share in base, with its status",
                status_col="status",
                note="gap = predicted − realized share; warn / fail thresholds by horizon: "
                f"monitoring.survival_warn {settings.monitoring.survival_warn}, "
                f"survival_fail {settings.monitoring.survival_fail}",
            )
        )
    for title, t in backtest_tables(backtest, settings.monitoring.metric_horizons, catalog).items():
        blocks.append(table(t, title, max_rows=300))
    return blocks


def interval_widths(scores: DataFrame) -> pd.DataFrame:
    """Deciles of the interval width (upper − lower) of CLTV and of the 12 / 24-month value, with the
    median width relative to the forecast (approximate quantiles, 0.1 % rank error)."""
    rows = []
    for point in ("cltv", "value_12m", "value_24m"):
        lower, upper = f"{point}_lower", f"{point}_upper"
        if upper not in scores.columns:
            continue
        width = scores.select(
            (F.col(upper) - F.col(lower)).alias("width"),
            ((F.col(upper) - F.col(lower)) / F.abs(F.col(point))).alias("relative"),
        ).where(~F.isnan("width"))
        deciles = width.approxQuantile(["width", "relative"], [i / 10 for i in range(1, 10)], 1e-3)
        if not deciles[0]:
            continue
        widths = {f"width_p{10 * i}": v for i, v in enumerate(deciles[0], 1)}
        rows.append({"forecast": point, **widths, "median_relative_width": deciles[1][4]})
    return pd.DataFrame(rows)


def section_intervals(
    settings: Settings, coverage: pd.DataFrame, backtest: pd.DataFrame, scores: DataFrame | None
) -> list[Any]:
    cfg = settings.monitoring
    blocks: list[Any] = [
        Note(
            "Each subscriber's cumulative value over the next h months and CLTV come with an interval at "
            f"level {settings.scoring.interval_level:.0%} (split-conformal residual quantiles by forecast "
            "decile, fitted on held-out subscribers at training; docs/scoring.md). Coverage is the share "
            "of the subscribers scored h months ago whose realized value lies inside their interval: it "
            f"should stay within ±{cfg.coverage_warn:.0%} of the level. CLTV's months 25..60 cannot be "
            "checked yet: their bound assumes the 24-month deviation goes on in proportion."
        )
    ]
    if coverage.empty:
        blocks.append(Note("No coverage yet: no earlier scores with interval bounds and detail arrays."))
    else:
        blocks += image(coverage_figure(coverage, cfg.coverage_warn, cfg.coverage_fail), "coverage")
        wanted = coverage[coverage["horizon"].isin(cfg.metric_horizons)]
        blocks.append(table(wanted, "Coverage by horizon and population", status_col="status"))
        by_dim = backtest[
            (backtest["model_id"] == VALUE_CUM) & (backtest["dimension"] != "all")
            & (backtest["population"] == "all") & backtest["horizon"].isin(cfg.metric_horizons)
        ]  # fmt: skip
        if not by_dim.empty:
            pivot = by_dim.pivot_table(
                index=["dimension", "value"], columns="horizon", values="coverage"
            ).add_prefix("h")
            blocks.append(table(pivot.reset_index(), "Coverage by segment (all subscribers)"))
    if scores is not None:
        blocks.append(table(interval_widths(scores), "Interval width deciles of this month's scores"))
    return blocks


def _load_release(settings: Settings, version: str | None) -> Release | None:
    try:
        return load_release(settings, version or "champion")
    except Unreachable:
        raise
    except Exception as exc:
        log.warning("release %s not loadable (%s): release sections are left out", version, exc)
        return None


# ===================================================================== the job
def build_report(
    spark: SparkSession, settings: Settings, month: dt.date, *, release: Release | None = None
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
    scores = read_scores(spark, settings.paths, month)
    sections = [
        Section("Release metrics by horizon", section_release(settings, info)),
        Section("CLTV distribution and deciles", section_cltv(scores)),
        Section("Top drivers", section_drivers(spark, settings, release, month)),
        Section("Drift", section_drift(settings, monitored["drift"], monitored["prediction_drift"])),
        Section(
            "Backtest: earlier forecasts against this month",
            section_backtest(settings, monitored["backtest"], monitored.get("survival")),
        ),
        Section(
            "Intervals: coverage and width",
            section_intervals(settings, monitored["coverage"], monitored["backtest"], scores),
        ),
    ]
    campaigns = [table(frame, title) for title, frame in review_tables(spark, settings, month)]
    if campaigns:
        sections.append(Section("Retention campaigns", campaigns))
    page = render(
        fmt(month), summary, info, sections, dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    )
    storage = Storage(spark)
    target = report_file(settings.paths, month)
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
