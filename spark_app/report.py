"""The monthly review page: one static HTML file with embedded PNG plots and tables.

It shows what a reviewer needs to trust (or question) the month's CLTV: the release's metrics by horizon,
the CLTV distribution and deciles, the top drivers (CatBoost importance and SHAP values of a sample),
input and prediction drift, and the backtest of earlier forecasts (holdout and rest apart); with party
scores, persons and households (value by household size, the party backtest and interval coverage). It
reads what `cltv monitor` wrote, so it never recomputes a check; the page is logged to the month's
monitoring run in MLflow and the model version gets a tag pointing at it.

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
from spark_app.backtest import ALL_SIZES, NO_PARTY_MODEL, SIZE, VALUE_CUM, size_label, tenure_cohort
from spark_app.campaigns.evaluate import review_tables
from spark_app.catalog import ModelCatalog
from spark_app.checks import FAIL, OK, SKIPPED, WARN, worst
from spark_app.config import Settings
from spark_app.contract import ID, MONTH
from spark_app.errors import Unreachable, UserError
from spark_app.evaluation import (
    NA,
    Z95,
    finite,
    fmt_metric,
    fmt_money,
    fmt_noise,
    fmt_number,
    fmt_pct,
    fmt_points,
    main_metric_of,
)
from spark_app.figures import (
    STATUS_COLOR,
    bin_share_figure,
    calibration_figure,
    cltv_histogram,
    coverage_figure,
    drift_figure,
    drivers_figure,
    expected_curves_figure,
    main_metric_figure,
    plot_bias_by_horizon,
    png_base64,
    release_metrics_figure,
    value_figure,
    wape_figure,
)
from spark_app.horizons import horizon_frame
from spark_app.layout import read_scores, report_file
from spark_app.metrics import push_job_metrics
from spark_app.models import Learner
from spark_app.monitoring import read_monitoring, read_month_features
from spark_app.months import add_months, fmt, month_index
from spark_app.parties import (
    HOUSEHOLD_LEVEL,
    LEVELS,
    MAX_SIZE,
    MEMBERS,
    PERSON_LEVEL,
    party_partition,
    party_scores_root,
)
from spark_app.registry import (
    CHALLENGER,
    CHAMPION,
    Release,
    load_release,
    mark_classic_experiment,
    set_description_section,
)
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
    tone: str = ""  # the badge's colour as a status (ok / warn / fail) when the text is not one


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    title: str | None = None
    note: str | None = None
    cls: str = ""  # "checks": a table of sentences, left-aligned
    kind: str = "table"


@dataclass(frozen=True)
class Details:
    summary: str
    blocks: list[Any]
    kind: str = "details"


@dataclass(frozen=True)
class Card:
    label: str
    value: str
    sub: str = ""  # a second line: the change against last month
    status: str = ""  # colours the card's edge (ok / warn / fail); empty: neutral


@dataclass(frozen=True)
class Cards:
    """The page's first lines: the figures a reviewer reads before anything else."""

    cards: list[Card]
    kind: str = "cards"


@dataclass(frozen=True)
class Actions:
    """What to do this month, one line per check that is not ok (or a line saying nothing is needed)."""

    items: list[tuple[str, str]]  # (status, text)
    title: str = "What to do"
    kind: str = "actions"


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)


def _cell(value: Any, floatfmt: str | None) -> str:
    """A table cell: floats with thousands separators and 4 significant digits (or `floatfmt`), a
    missing value as n/a — never `nan` or `1.2e+06`."""
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return NA
        if floatfmt:
            return floatfmt.format(value)
        return fmt_number(value) if abs(value) >= 1000 else fmt_metric(value, 4)
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "NO"
    return str(value)


def table(
    df: pd.DataFrame | None,
    title: str | None = None,
    *,
    status_col: str | None = None,
    max_rows: int = 200,
    floatfmt: str | None = None,
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


MIN_MINORITY = 20  # fewer subscribers of one class than this: an AUC is noise, shown as n/a


def mask_degenerate_auc(main: pd.DataFrame, by_horizon: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The main-metric rows with ROC AUC blanked (NaN) where the split × horizon has fewer than
    MIN_MINORITY subscribers of one class (from the logged mean_actual × rows), and what was blanked."""
    if by_horizon is None or by_horizon.empty or "roc_auc" not in set(main["metric"]):
        return main, []
    shares = by_horizon[by_horizon["metric"] == "mean_actual"][["model_id", "split", "horizon", "value"]]
    shares = shares.rename(columns={"value": "share"})
    out = main.merge(shares, on=["model_id", "split", "horizon"], how="left")
    minority = (out["rows"] * np.minimum(out["share"], 1 - out["share"])).round()
    bad = (out["metric"] == "roc_auc") & (minority < MIN_MINORITY)
    notes = [
        f"{r.model_id} {'all horizons' if r.horizon == 0 else f'h{r.horizon}'}: {int(m)} of {int(r.rows):,}"
        for r, m in zip(out[bad].itertuples(index=False), minority[bad], strict=True)
    ]
    out.loc[bad, ["value", "naive"]] = np.nan
    return out.drop(columns="share"), notes


def quality_block(quality: pd.DataFrame) -> Table:
    """The release's OOT quality, bias first in percent ± noise, then the main metric against naive."""
    rows = []
    for r in quality.to_dict("records"):
        beats = bool(r.get("beats_naive"))
        rows.append(
            [
                Cell(str(r["model_id"])),
                Cell(fmt_number(r.get("rows"))),
                Cell(fmt_noise(r.get("agg_bias"), r.get("agg_bias_se"))),
                Cell(fmt_pct(r.get("naive_agg_bias"), 2)),
                Cell(str(r.get("metric", ""))),
                Cell(fmt_metric(r.get("value"), 4)),
                Cell(fmt_metric(r.get("naive"), 4)),
                Cell("yes" if beats else "NO", status=True, tone=OK if beats else WARN),
            ]
        )
    value = quality[quality["model_id"] == "value"]
    cum = ""
    if len(value) and "cum_bias" in value and finite(value["cum_bias"].iloc[0]):
        v = value.iloc[0]
        cum = (
            f" The cumulative 24-month value (the value summed over horizons 1..24) is off by "
            f"{fmt_noise(v['cum_bias'], v.get('cum_bias_se'))}."
        )
    return Table(
        ["model", "OOT rows", "bias ± noise", "naive bias", "main metric", "model", "naive", "beats naive"],
        rows,
        "Out-of-time quality over all horizons, against the naive baseline",
        "CLTV sums expectations, so the aggregate bias (Σ forecast / Σ actual − 1, ± its 95 % sampling "
        "noise) comes first; value is a month's value by the CLTV formula." + cum,
    )


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
        wide = numeric_order(wide.reset_index(), "value", by=["dimension"])
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
        blocks.append(quality_block(quality))
    by_horizon = info.get("by_horizon", pd.DataFrame())
    if by_horizon is not None and not by_horizon.empty:
        blocks += image(plot_bias_by_horizon(by_horizon), "aggregate bias by horizon")
    main = main_metric_table(info.get("by_horizon", pd.DataFrame()), settings)
    if not main.empty:
        main, degenerate = mask_degenerate_auc(main, info.get("by_horizon", pd.DataFrame()))
        blocks += image(main_metric_figure(main), "main metric by horizon")
        keep = [0, *settings.monitoring.metric_horizons]
        sel = main[main["horizon"].isin(keep)]
        wide = sel.pivot_table(
            index=["model_id", "metric"], columns="horizon", values=["value", "naive"], dropna=False
        )
        pairs = pd.MultiIndex.from_frame(main[["model_id", "metric"]].drop_duplicates())
        wide = wide[wide.index.isin(pairs)]  # dropna=False pivots every model × every metric
        order = sorted(wide.columns, key=lambda c: (c[1], c[0] != "value"))
        wide = wide[order]
        wide.columns = [
            f"{'model' if v == 'value' else 'naive'} {'all' if h == 0 else f'h{h}'}" for v, h in order
        ]
        note = None
        if degenerate:
            more = f" and {len(degenerate) - 4} more" if len(degenerate) > 4 else ""
            note = (
                "n/a: ROC AUC is not measurable where the OOT sample holds fewer than "
                f"{MIN_MINORITY} subscribers of one class (leavers of rows): "
                f"{'; '.join(degenerate[:4])}{more}"
                ". On so few leavers "
                "it reads 1.000 (or 0.000) by chance: the hash-sampled OOT month has about 1/(13 × 24) of "
                "the base per horizon, and at h1 nearly all of it is still in the base."
            )
        blocks.append(table(wide.reset_index(), "Main metric at selected horizons", note=note))
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
            pivot = numeric_order(pivot.reset_index(), "value", by=["dimension"])
            blocks.append(table(pivot, "Coverage by segment (all subscribers)"))
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


# ===================================================================== decision first: the headline
LAST_MONTH_MISSING = "no scores of the previous month"


def base_figures(scores: DataFrame | None) -> dict[str, float] | None:
    """Base size (every scored subscriber, holdout included), total and mean CLTV and the sums of the
    interval bounds, the holdout's size: one aggregation, nothing collected but these numbers."""
    if scores is None:
        return None
    aggs = [
        F.count(F.lit(1)).alias("subscribers"),
        F.sum("cltv").alias("total"),
        F.avg("cltv").alias("mean"),
    ]
    if "holdout" in scores.columns:
        aggs.append(F.sum(F.coalesce(F.col("holdout"), F.lit(False)).cast("long")).alias("holdout"))
    if "cltv_24m" in scores.columns:
        aggs.append(F.sum("cltv_24m").alias("total_24m"))
    row = scores.agg(*aggs).first()
    out = {k: (float(v) if v is not None else float("nan")) for k, v in row.asDict().items()}
    return out


def _change(now: float, before: float | None) -> float:
    return now / before - 1 if before is not None and finite(before) and before != 0 else float("nan")


def headline_cards(
    now: dict[str, float] | None, before: dict[str, float] | None, currency: str, month: dt.date
) -> list[Card]:
    """Total and mean CLTV and the base, each with its change against last month."""
    if now is None:
        return [Card("Scores", "none", f"{fmt(month)} is not scored", FAIL)]
    prev = f"vs {fmt(add_months(month, -1))}"

    def sub(key: str, absolute: str) -> str:
        if before is None:
            return LAST_MONTH_MISSING
        return f"{fmt_pct(_change(now[key], before[key]))} {prev} ({absolute})"

    before = before or None
    diff = (now["subscribers"] - before["subscribers"]) if before else float("nan")
    total_diff = (now["total"] - before["total"]) if before else float("nan")
    mean_diff = (now["mean"] - before["mean"]) if before else float("nan")
    holdout = now.get("holdout")
    cards = [
        Card(
            "Total CLTV of the base (60 months)",
            fmt_money(now["total"], currency),
            sub("total", f"{'+' if total_diff >= 0 else ''}{fmt_money(total_diff, currency)}"),
        ),
        Card(
            "Mean CLTV per subscriber",
            fmt_money(now["mean"], currency, 2),
            sub("mean", f"{'+' if mean_diff >= 0 else ''}{fmt_money(mean_diff, currency, 2)}"),
        ),
        Card(
            "Subscribers scored",
            fmt_number(now["subscribers"]),
            sub("subscribers", f"{'+' if diff >= 0 else ''}{fmt_number(diff)}")
            + (f"; holdout {fmt_number(holdout)} included" if finite(holdout) else ""),
        ),
    ]
    if finite(now.get("total_24m")):
        cards.append(
            Card(
                "of which in the first 24 months",
                fmt_money(now["total_24m"], currency),
                f"{fmt_pct(now['total_24m'] / now['total'], 0, signed=False)} of the total"
                if now["total"]
                else "",
            )
        )
    return cards


def numeric_order(frame: pd.DataFrame, column: str, by: list[str] | None = None) -> pd.DataFrame:
    """Rows ordered by the number a label starts with ('0-5', '6-11', '12-23', '48+'), text after: cohorts
    in numeric, not text, order."""
    lead = frame[column].astype(str).str.extract(r"^(-?\d+)", expand=False).astype("float64")
    keys = [*(by or []), "_k", column]
    return frame.assign(_k=lead.fillna(np.inf)).sort_values(keys, kind="stable").drop(columns="_k")


def value_by_group(
    spark: SparkSession, settings: Settings, scores: DataFrame, month: dt.date
) -> dict[str, pd.DataFrame]:
    """CLTV and its interval by segment (the backtest dimensions) and by tenure cohort: the month's scores
    joined with its features, aggregated per group (one row per group reaches the driver)."""
    cfg = settings.monitoring
    try:
        features = read_month_features(spark, settings, month)
    except Exception as exc:
        if isinstance(exc, Unreachable):
            raise
        log.warning("features of %s not readable (%s): no CLTV by segment", fmt(month), exc)
        return {}
    groups = [d for d in cfg.backtest_dimensions if d in features.columns]
    cols = [F.col(d).cast("string").alias(d) for d in groups]
    tenure = settings.models.tenure_column
    if tenure and tenure in features.columns:
        cols.append(tenure_cohort(tenure, cfg.tenure_cohorts).alias("tenure_cohort"))
        groups.append("tenure_cohort")
    if not groups:
        return {}
    bounds = [c for c in ("cltv_lower", "cltv_upper") if c in scores.columns]
    joined = scores.select(ID, "cltv", *bounds).join(features.select(ID, *cols), ID, "left")
    out = {}
    for group in groups:
        t = (
            joined.groupBy(F.coalesce(F.col(group), F.lit("(none)")).alias(group))
            .agg(
                F.count(F.lit(1)).alias("subscribers"),
                F.sum("cltv").alias("total"),
                F.avg("cltv").alias("mean"),
                *[F.avg(c).alias(f"mean_{c}") for c in bounds],
            )
            .toPandas()
        )
        t["share"] = t["total"] / t["total"].sum() if t["total"].sum() else np.nan
        out[group] = numeric_order(t, group) if group == "tenure_cohort" else t.sort_values(group)
    return out


def group_table(frame: pd.DataFrame, group: str, currency: str, level: float) -> Table:
    """CLTV by one grouping, in words and formatted numbers."""
    interval = "mean_cltv_lower" in frame.columns
    rows = []
    for r in frame.to_dict("records"):
        row = [
            Cell(str(r[group])),
            Cell(fmt_number(r["subscribers"])),
            Cell(fmt_money(r["total"], currency)),
            Cell(fmt_pct(r["share"], 1, signed=False)),
            Cell(fmt_number(r["mean"], 2)),
        ]
        if interval:
            row.append(Cell(f"{fmt_number(r['mean_cltv_lower'], 2)} … {fmt_number(r['mean_cltv_upper'], 2)}"))
        rows.append(row)
    columns = [group.replace("_", " "), "subscribers", "total CLTV", "share of total", f"mean ({currency})"]
    if interval:
        columns.append(f"mean interval at {level:.0%} ({currency})")
    return Table(columns, rows, f"CLTV by {group.replace('_', ' ')}")


def curve_figures(scores: DataFrame) -> dict[str, dict[int, float]]:
    """The expected base (Σ P(in base) at month k) and the cumulative value over 60 months, from sums of
    the score columns (and of the detail arrays, months 1..24, when scored with --detail)."""
    points = {
        "active": {12: "p_active_12m", 24: "p_active_24m", 60: "p_active_60m"},
        "paid": {12: "p_paid_12m", 24: "p_paid_24m", 60: "p_paid_60m"},
        "value": {24: "cltv_24m", 60: "cltv"},
    }
    aggs, names = [F.count(F.lit(1)).alias("n")], {}
    for curve, cols in points.items():
        for k, c in cols.items():
            if c in scores.columns:
                names[f"{curve}_{k}"] = (curve, k)
                aggs.append(F.sum(c).alias(f"{curve}_{k}"))
    for curve in ("active", "paid"):
        if f"{curve}_h" in scores.columns:
            for i in range(24):
                names[f"{curve}_d{i + 1}"] = (curve, i + 1)
                # a release of fewer horizons has shorter arrays: months beyond them are null, not an error
                month = F.try_element_at(F.col(f"{curve}_h"), F.lit(i + 1))
                aggs.append(F.sum(month).alias(f"{curve}_d{i + 1}"))
    row = scores.agg(*aggs).first().asDict()
    out: dict[str, dict[int, float]] = {"active": {}, "paid": {}, "value": {0: 0.0}}
    for key, (curve, k) in names.items():
        if row.get(key) is not None:
            out[curve][k] = float(row[key])
    for curve in ("active", "paid"):
        if out[curve]:
            out[curve][0] = float(row["n"])
    return {k: dict(sorted(v.items())) for k, v in out.items() if len(v) > 1}


# ===================================================================== decision first: the checks
@dataclass(frozen=True)
class Check:
    name: str
    status: str
    finding: str  # what was measured, in numbers
    meaning: str  # one sentence: what it means
    action: str  # one sentence: what to do


def _worst_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == worst(*frame["status"])] if len(frame) else frame


def check_bias(settings: Settings, quality: pd.DataFrame, backtest: pd.DataFrame) -> Check:
    """The release's OOT aggregate bias beyond its noise (fail: beyond promotion.max_abs_bias by more than
    the noise, as promotion judges; warn: beyond the noise and above half the limit), and the backtest's
    bias of the amounts at the shortest horizon (warn beyond twice the limit: no noise estimate there)."""
    limit = settings.promotion.max_abs_bias
    found, status = [], OK
    if quality is not None and len(quality):
        amounts = quality[quality["kind"] != "classification"]
        for r in amounts.to_dict("records"):
            bias, se = r.get("agg_bias"), r.get("agg_bias_se")
            if not finite(bias):
                continue
            noise = Z95 * se if finite(se) else 0.0
            if abs(bias) - noise > limit:
                status = worst(status, FAIL)
            elif abs(bias) > noise and abs(bias) > limit / 2:
                status = worst(status, WARN)
            else:
                continue
            found.append(f"{r['model_id']} {fmt_noise(bias, se)} (OOT)")
    if backtest is not None and len(backtest):
        bt = backtest[(backtest["dimension"] == "all") & (backtest["population"] == "all")]
        catalog = settings.models.catalog()
        bt = bt[bt["model_id"].isin([*(e.model_id for e in catalog.amounts), VALUE_CUM])]
        if len(bt):
            h = int(bt["horizon"].min())
            for r in bt[bt["horizon"] == h].to_dict("records"):
                if finite(r["bias"]) and abs(r["bias"]) > 2 * limit:
                    status = worst(status, WARN)
                    found.append(f"{r['model_id']} {fmt_pct(r['bias'])} (backtest h{h})")
    if quality is None or not len(quality):
        return Check("Bias beyond noise", SKIPPED, "the release's OOT quality is not readable", "", "")
    return Check(
        "Bias beyond noise",
        status,
        "; ".join(found)
        if found
        else f"every amount within ±{fmt_pct(limit / 2, 1, signed=False)} or its noise",
        "Totals built from these forecasts (CLTV, plans) are off by about this much."
        if found
        else "Sums of the forecasts can be trusted to within their noise.",
        f"Read the bias by horizon below; a fail (beyond {fmt_pct(limit, 0, signed=False)} and its noise) "
        "calls for retraining before the figures are used in plans."
        if found
        else "Nothing.",
    )


def check_naive(quality: pd.DataFrame) -> Check:
    if quality is None or not len(quality):
        return Check("Beats the naive baseline", SKIPPED, "the release's OOT quality is not readable", "", "")
    losing = [str(m) for m, b in zip(quality["model_id"], quality["beats_naive"], strict=True) if not b]
    if not losing:
        return Check("Beats the naive baseline", OK, f"all {len(quality)} models beat it on OOT",
                     "Every model adds something over a simple rule.", "Nothing.")  # fmt: skip
    return Check(
        "Beats the naive baseline",
        WARN,
        f"not beating it: {', '.join(losing)}",
        "For these components a simple rule (base rate, last month's amount) forecasts as well or better.",
        "Check their features and loss at the next training; their share in CLTV is in the release table.",
    )


def _largest_gap(table: pd.DataFrame) -> tuple[pd.DataFrame | None, str, pd.Series | None]:
    """The judged rows of a gap table (survival, coverage), their worst status and the row of the largest
    |gap| — or (None, SKIPPED, None) when no row could be judged."""
    judged = table[(table["status"] != SKIPPED) & table["gap"].notna()]
    if not len(judged):
        return None, SKIPPED, None
    return judged, worst(*judged["status"]), judged.loc[judged["gap"].abs().idxmax()]


def check_survival(survival: pd.DataFrame | None) -> Check:
    name = "Survival calibration"
    if survival is None or not len(survival):
        return Check(name, SKIPPED, "no backtest of the survival models (no earlier detailed scores)", "", "")
    judged, status, r = _largest_gap(survival)
    if judged is None:
        return Check(name, SKIPPED, "too few subscribers to judge", "", "")
    finding = (
        f"largest gap {r['model_id']} h{int(r['horizon'])}: predicted {fmt_pct(r['predicted'], 1, False)}, "
        f"realized {fmt_pct(r['realized'], 1, False)} ({fmt_points(r['gap'])})"
    )
    if status == OK:
        return Check(name, OK, finding, "The predicted share staying in the base matches what happened.",
                     "Nothing.")  # fmt: skip
    return Check(
        name,
        status,
        finding,
        "The models expect more (gap > 0) or fewer subscribers to stay than did, so CLTV is over- or "
        "under-stated by about that share.",
        "Look for a churn event (price change, campaign) in the month; retrain if the gap persists.",
    )


def check_coverage(coverage: pd.DataFrame | None) -> Check:
    name = "Interval coverage"
    if coverage is None or not len(coverage):
        return Check(name, SKIPPED, "no earlier scores with intervals and detail arrays yet", "", "")
    judged, status, r = _largest_gap(coverage)
    if judged is None:
        return Check(name, SKIPPED, "too few subscribers to judge", "", "")
    finding = (
        f"worst h{int(r['horizon'])} {r['population']}: {fmt_pct(r['coverage'], 1, False)} inside an "
        f"interval of level {fmt_pct(r['interval_level'], 0, False)} ({fmt_points(r['gap'])})"
    )
    if status == OK:
        return Check(name, OK, finding, "The intervals hold as often as they claim.", "Nothing.")
    return Check(
        name,
        status,
        finding,
        "The intervals are too narrow (coverage below the level) or too wide; ranges quoted from them "
        "mislead.",
        "Quote ranges with care; refit the intervals at the next training.",
    )


def check_party_coverage(coverage: pd.DataFrame | None) -> Check:
    """The party interval coverage (monitor's `party_coverage`): judged as the subscribers'; not judged
    (n/a) where the release fitted no party intervals."""
    name = "Party interval coverage"
    if coverage is None or not len(coverage):
        return Check(name, SKIPPED, "no party backtest (no earlier detailed scores, or monitor ran without "
                     "paths.parties)", "", "")  # fmt: skip
    judged, status, r = _largest_gap(coverage)
    if judged is None:
        notes = sorted({n for n in coverage["note"] if n}) if "note" in coverage else []
        return Check(name, SKIPPED, "; ".join(notes[:2]) or "too few parties to judge", "", "")
    finding = (
        f"worst {r['level']} h{int(r['horizon'])}: {fmt_pct(r['coverage'], 1, False)} of "
        f"{fmt_number(r['bounded'])} inside an interval of level {fmt_pct(r['interval_level'], 0, False)} "
        f"({fmt_points(r['gap'])})"
    )
    if status == OK:
        return Check(
            name, OK, finding, "Household and person ranges hold as often as they claim.", "Nothing."
        )
    return Check(
        name,
        status,
        finding,
        "The intervals of a household's (or person's) value are too narrow or too wide: members do not move "
        "together the way the release learned.",
        "Quote household ranges with care; refit the party intervals at the next training.",
    )


def check_drift(drift: pd.DataFrame, pred: pd.DataFrame) -> Check:
    name = "Drift"
    statuses = [*(drift["status"] if len(drift) else []), *(pred["status"] if len(pred) else [])]
    if not statuses:
        return Check(name, SKIPPED, "no drift tables", "", "")
    status = worst(*statuses)
    moved = []
    if len(drift):
        moved += [
            f"{r.feature} PSI {fmt_metric(r.psi, 2)}"
            for r in _worst_rows(drift).itertuples()
            if r.status != OK
        ]
    if len(pred):
        moved += [
            f"score {r.column} PSI {fmt_metric(r.psi, 2)}"
            for r in _worst_rows(pred).itertuples()
            if r.status != OK
        ]
    if status in (OK, SKIPPED):
        return Check(name, status, "inputs and scores close to the release's training sample and last month",
                     "The models see the kind of data they learned from.", "Nothing.")  # fmt: skip
    return Check(
        name,
        status,
        ", ".join(moved[:5]) + (f" and {len(moved) - 5} more" if len(moved) > 5 else ""),
        "Inputs (or scores) moved away from what the release learned from, so its forecasts for them are "
        "less certain.",
        "Find the cause (a source change, a new tariff); retrain when the shift is real and persists.",
    )


def month_checks(
    settings: Settings, info: dict[str, Any], monitored: dict[str, Any], parties: bool = False
) -> list[Check]:
    """Every check of the month; `parties` (party scores or a party backtest exist) adds the party
    interval coverage."""
    quality = info.get("quality", pd.DataFrame())
    checks = [
        check_bias(settings, quality, monitored["backtest"]),
        check_naive(quality),
        check_survival(monitored.get("survival")),
        check_coverage(monitored["coverage"]),
        check_drift(monitored["drift"], monitored["prediction_drift"]),
    ]
    if parties:
        checks.insert(4, check_party_coverage(monitored.get("party_coverage")))
    return checks


def checks_table(checks: list[Check]) -> Table:
    rows = [
        [Cell(c.name), Cell(c.status, status=True), Cell(c.finding), Cell(c.meaning), Cell(c.action)]
        for c in checks
    ]
    return Table(["check", "status", "found", "what it means", "what to do"], rows, None, cls="checks")


def actions(checks: list[Check], summary: dict[str, Any]) -> Actions:
    todo = [(c.status, f"{c.name} — {c.finding}. {c.action}") for c in checks if c.status in (WARN, FAIL)]
    todo.sort(key=lambda t: t[0] != FAIL)
    if summary.get("status") == FAIL and not any(s == FAIL for s, _ in todo):
        todo.insert(0, (FAIL, "Monitoring failed (below): read its failures before publishing."))
    return Actions(
        todo or [(OK, "Nothing to do: every check is within its thresholds. The figures can be used.")]
    )


# ===================================================================== champion and challenger
def release_pair(settings: Settings) -> tuple[int | None, int | None]:
    """(champion, challenger) version numbers from the registry's aliases; None where there is none."""
    client = tracking.client(settings.mlflow)
    out = []
    for alias in (CHAMPION, CHALLENGER):
        try:
            out.append(int(client.get_model_version_by_alias(settings.mlflow.model_name, alias).version))
        except Exception as exc:
            if tracking.is_unreachable(exc):
                raise
            out.append(None)
    return out[0], out[1]


def side_by_side(champion: pd.DataFrame, challenger: pd.DataFrame, versions: tuple[int, int]) -> Table:
    """Each release's OOT quality (its own OOT month) side by side: bias ± noise, then the main metric."""
    a, b = (f"v{v}" for v in versions)
    left = champion.set_index("model_id")
    rows = []
    for r in challenger.to_dict("records"):
        m = r["model_id"]
        c = left.loc[m].to_dict() if m in left.index else {}
        rows.append(
            [
                Cell(str(m)),
                Cell(fmt_noise(c.get("agg_bias"), c.get("agg_bias_se")) if c else NA),
                Cell(fmt_noise(r.get("agg_bias"), r.get("agg_bias_se"))),
                Cell(str(r.get("metric", ""))),
                Cell(fmt_metric(c.get("value"), 4) if c else NA),
                Cell(fmt_metric(r.get("value"), 4)),
                Cell(("yes" if c.get("beats_naive") else "NO") if c else NA),
                Cell("yes" if r.get("beats_naive") else "NO"),
            ]
        )
    columns = [
        "model", f"bias ± noise, champion {a}", f"bias ± noise, challenger {b}", "main metric",
        f"champion {a}", f"challenger {b}", f"{a} beats naive", f"{b} beats naive",
    ]  # fmt: skip
    note = (
        "Each release on its own out-of-time month (the figures its training logged); the promote run in "
        "MLflow compares both on the same rows."
    )
    return Table(columns, rows, f"Champion {a} and challenger {b}", note)


def section_releases(settings: Settings, info: dict[str, Any]) -> list[Any]:
    champion, challenger = release_pair(settings)
    if champion is None or challenger is None or champion == challenger:
        return []
    tables = {}
    for v in (champion, challenger):
        if str(v) == str(info.get("version")) and "quality" in info:
            tables[v] = info["quality"]
            continue
        try:
            mv = tracking.client(settings.mlflow).get_model_version(settings.mlflow.model_name, str(v))
            tables[v] = evaluation_tables(settings, mv.run_id).get("quality", pd.DataFrame())
        except Exception as exc:
            if tracking.is_unreachable(exc):
                raise
            log.warning("release v%s: quality not readable (%s)", v, exc)
            return []
    if any(t is None or t.empty for t in tables.values()):
        return []
    return [side_by_side(tables[champion], tables[challenger], (champion, challenger))]


def section_headline(
    settings: Settings,
    month: dt.date,
    now: dict[str, float] | None,
    before: dict[str, float] | None,
    checks: list[Check],
    summary: dict[str, Any],
) -> list[Any]:
    return [
        Note(answer(now, before, checks, settings.costs.currency, month)),
        Cards(headline_cards(now, before, settings.costs.currency, month)),
        actions(checks, summary),
        checks_table(checks),
        *monitor_messages(summary),
    ]


def monitor_messages(summary: dict[str, Any]) -> list[Any]:
    """Monitor's own failures and warnings, folded under the checks (which already say what they mean)."""
    items = [(FAIL, m) for m in summary.get("failures", [])] + [
        (WARN, m) for m in summary.get("warnings", [])
    ]
    if not items:
        return []
    failures, warnings = len(summary.get("failures", [])), len(summary.get("warnings", []))
    title = f"Monitor's messages: {failures} failures, {warnings} warnings"
    return [Details(title, [Actions(items, title="")])]


def answer(
    now: dict[str, float] | None,
    before: dict[str, float] | None,
    checks: list[Check],
    currency: str,
    month: dt.date,
) -> Markup:
    """The page's first sentence: what the base is worth, how that moved, whether anything is wrong."""
    if now is None:
        return Markup("<b>{} is not scored</b>: nothing to review.").format(fmt(month))
    failing = [c.name for c in checks if c.status == FAIL]
    warning = [c.name for c in checks if c.status == WARN]
    moved = (
        f", {fmt_pct(_change(now['total'], before['total']))} against {fmt(add_months(month, -1))}"
        if before
        else ""
    )
    verdict = (
        f"{len(failing)} check(s) fail ({', '.join(failing)})"
        if failing
        else f"no check fails, {len(warning)} warn ({', '.join(warning)})"
        if warning
        else "every check is ok"
    )
    return Markup("<b>{} subscribers are worth {} over the next 60 months</b>{}; {}.").format(
        fmt_number(now["subscribers"]), fmt_money(now["total"], currency), moved, verdict
    )


def section_value(
    spark: SparkSession, settings: Settings, scores: DataFrame | None, month: dt.date
) -> list[Any]:
    if scores is None:
        return [Note("No scores for this month.")]
    currency = settings.costs.currency
    blocks: list[Any] = image(
        expected_curves_figure(curve_figures(scores), currency), "expected base and value"
    )
    for group, frame in value_by_group(spark, settings, scores, month).items():
        blocks.append(group_table(frame, group, currency, settings.scoring.interval_level))
    blocks.append(
        Note(
            "Interval: the mean of the subscribers' own lower and upper CLTV bounds — the range a typical "
            "subscriber of the group falls in, not a range for the group's total (which is much narrower)."
        )
    )
    return blocks


# ===================================================================== persons and households
def party_scores(spark: SparkSession, settings: Settings, month: dt.date) -> dict[str, DataFrame]:
    """The month's party scores per level, where `cltv score` wrote them (paths.parties); {} when none."""
    try:
        root = party_scores_root(settings.paths)
    except UserError:  # paths.scores at a filesystem root and no paths.party_scores: there are none
        return {}
    storage = Storage(spark)
    paths = {level: party_partition(root, level, month) for level in LEVELS}
    return {level: spark.read.parquet(p) for level, p in paths.items() if storage.has_success_marker(p)}


def party_figures(levels: dict[str, DataFrame]) -> dict[str, dict[str, float]]:
    """Per level: parties, lines (members), total and mean CLTV — one aggregation each."""
    out = {}
    for level, frame in levels.items():
        row = frame.agg(
            F.count(F.lit(1)).alias("parties"),
            F.sum(MEMBERS).alias("lines"),
            F.sum("cltv").alias("total"),
            F.avg("cltv").alias("mean"),
        ).first()
        out[level] = {k: float(v) if v is not None else float("nan") for k, v in row.asDict().items()}
    return out


def households_by_size(households: DataFrame) -> pd.DataFrame:
    """CLTV of the households by size (1..4, 5+ lines): households, lines, total, share, mean and the mean
    of the households' own interval bounds — one aggregation, one row per size reaches the driver."""
    bounds = [c for c in ("cltv_lower", "cltv_upper") if c in households.columns]
    t = (
        households.groupBy(size_label().alias(SIZE))
        .agg(
            F.count(F.lit(1)).alias("households"),
            F.sum(MEMBERS).alias("lines"),
            F.sum("cltv").alias("total"),
            F.avg("cltv").alias("mean"),
            *[F.avg(c).alias(f"mean_{c}") for c in bounds],
        )
        .toPandas()
    )
    t["share"] = t["total"] / t["total"].sum() if t["total"].sum() else np.nan
    return numeric_order(t, SIZE)


def _ratio(a: Any, b: Any) -> float:
    return float(a) / float(b) if finite(a) and finite(b) and float(b) else float("nan")


def _interval(lower: Any, upper: Any, digits: int = 2) -> str:
    return (
        f"{fmt_number(lower, digits)} … {fmt_number(upper, digits)}"
        if finite(lower) and finite(upper)
        else NA
    )


def household_size_table(frame: pd.DataFrame, currency: str, level: float) -> Table:
    """CLTV by household size, in words and formatted numbers, with the mean interval."""
    rows = [
        [
            Cell(f"{r[SIZE]} line{'' if r[SIZE] == '1' else 's'}"),
            Cell(fmt_number(r["households"])),
            Cell(fmt_number(r["lines"])),
            Cell(fmt_money(r["total"], currency)),
            Cell(fmt_pct(r["share"], 1, signed=False)),
            Cell(fmt_number(r["mean"], 2)),
            Cell(_interval(r.get("mean_cltv_lower"), r.get("mean_cltv_upper"))),
        ]
        for r in frame.to_dict("records")
    ]
    columns = ["household size", "households", "lines", "total CLTV", "share of total", f"mean ({currency})",
               f"mean interval at {level:.0%} ({currency})"]  # fmt: skip
    note = (
        "Interval: the mean of the households' own CLTV bounds (the release's party intervals, fitted on "
        f"held-out households); n/a where it fitted none. {MAX_SIZE}+: {MAX_SIZE} lines or more."
    )
    return Table(columns, rows, "CLTV by household size", note)


def party_bias_status(bias: Any, parties: Any, settings: Settings) -> str:
    """The party backtest's bias judged as the subscribers' at the shortest horizon (`check_bias`): warn
    beyond twice `promotion.max_abs_bias` (no noise estimate), skipped under `coverage_min_rows` parties."""
    if not finite(bias) or not finite(parties) or parties < settings.monitoring.coverage_min_rows:
        return SKIPPED
    return WARN if abs(float(bias)) > 2 * settings.promotion.max_abs_bias else OK


def party_backtest_table(settings: Settings, backtest: pd.DataFrame) -> Table:
    """Per level, horizon and model (parties of every size): the members' forecasts summed against what
    their customers realized, bias and WAPE, with a status for the bias."""
    t = backtest[
        (backtest[SIZE] == ALL_SIZES) & backtest["horizon"].isin(settings.monitoring.metric_horizons)
    ]
    rows = [
        [
            Cell(str(r["level"])),
            Cell(f"h{int(r['horizon'])}"),
            Cell(str(r["score_month"])),
            Cell(str(r["model_id"])),
            Cell(fmt_number(r["parties"])),
            Cell(fmt_number(r[MEMBERS])),
            Cell(fmt_number(r["forecast_sum"], 1)),
            Cell(fmt_number(r["actual_sum"], 1)),
            Cell(fmt_pct(r["bias"])),
            Cell(fmt_pct(r["wape"], 1, signed=False)),
            Cell(party_bias_status(r["bias"], r["parties"], settings), status=True),
        ]
        for r in t.sort_values(["level", "model_id", "horizon"]).to_dict("records")
    ]
    columns = [
        "level", "horizon", "scored", "model", "parties", "lines", "forecast", "realized", "bias", "WAPE",
        "status",
    ]  # fmt: skip
    note = (
        "Each party's members' forecasts for this month summed, against what their customers realized (a "
        "number change: the new number's facts count for the old); value_cum = the value realized since the "
        "forecast; paid / active = lines in the base. Bias = (Σ forecast − Σ realized) / Σ |realized|; warn "
        f"beyond ±{fmt_pct(2 * settings.promotion.max_abs_bias, 0, signed=False)}."
    )
    return Table(columns, rows, "Backtest per person and household", note)


def party_size_table(backtest: pd.DataFrame) -> Table | None:
    """The cumulative value's backtest by party size at the shortest horizon."""
    t = backtest[(backtest["model_id"] == VALUE_CUM) & (backtest[SIZE] != ALL_SIZES)]
    if t.empty:
        return None
    h = int(t["horizon"].min())
    t = numeric_order(t[t["horizon"] == h], SIZE, by=["level"])
    rows = [
        [
            Cell(str(r["level"])),
            Cell(str(r[SIZE])),
            Cell(fmt_number(r["parties"])),
            Cell(fmt_number(r["forecast_mean"], 2)),
            Cell(fmt_number(r["actual_mean"], 2)),
            Cell(fmt_pct(r["bias"])),
            Cell(fmt_pct(r["coverage"], 1, signed=False)),
        ]
        for r in t.to_dict("records")
    ]
    columns = ["level", "lines", "parties", "forecast per party", "realized per party", "bias", "coverage"]
    return Table(columns, rows, f"Cumulative value by party size at horizon {h}")


def party_coverage_table(coverage: pd.DataFrame, settings: Settings) -> Table:
    rows = [
        [
            Cell(str(r["level"])),
            Cell(f"h{int(r['horizon'])}"),
            Cell(str(r["score_month"])),
            Cell(fmt_number(r["parties"])),
            Cell(fmt_number(r["bounded"])),
            Cell(fmt_pct(r["coverage"], 1, signed=False)),
            Cell(fmt_pct(r["interval_level"], 0, signed=False)),
            Cell(fmt_points(r["gap"])),
            Cell(str(r["status"]), status=True),
            Cell(str(r["note"] or "")),
        ]
        for r in coverage.sort_values(["level", "horizon"]).to_dict("records")
    ]
    cfg = settings.monitoring
    columns = [
        "level", "horizon", "scored", "parties", "with an interval", "coverage", "interval level", "gap",
        "status", "note",
    ]  # fmt: skip
    note = (
        "The share of the parties scored h months ago whose realized cumulative value lies inside the party "
        f"interval (the release's relative edges at h); judged as the subscribers' (a gap beyond "
        f"±{100 * cfg.coverage_warn:g} points warns, ±{100 * cfg.coverage_fail:g} fails) from "
        f"{cfg.coverage_min_rows:,} parties on."
    )
    return Table(columns, rows, "Party interval coverage", note)


def section_parties(
    settings: Settings,
    levels: dict[str, DataFrame],
    monitored: dict[str, Any],
    base: dict[str, float] | None,
) -> list[Any]:
    """Persons and households: how many, what a household is worth (by size, with its interval), and the
    party backtest and coverage monitor wrote."""
    currency = settings.costs.currency
    blocks: list[Any] = []
    found = party_figures(levels)
    persons, households = found.get(PERSON_LEVEL), found.get(HOUSEHOLD_LEVEL)
    cards = []
    if persons:
        cards.append(
            Card(
                "Persons",
                fmt_number(persons["parties"]),
                f"{fmt_number(_ratio(persons['lines'], persons['parties']), 2)} lines per person; mean CLTV "
                f"{fmt_money(persons['mean'], currency, 2)}",
            )
        )
    if households:
        share = _ratio(households["total"], base["total"]) if base else float("nan")
        cards += [
            Card(
                "Households",
                fmt_number(households["parties"]),
                f"{fmt_number(households['lines'])} lines in households",
            ),
            Card(
                "Total CLTV of the households",
                fmt_money(households["total"], currency),
                f"{fmt_pct(share, 0, signed=False)} of the base's total" if finite(share) else "",
            ),
            Card(
                "Mean CLTV per household",
                fmt_money(households["mean"], currency, 2),
                f"{fmt_number(_ratio(households['lines'], households['parties']), 2)} lines per household",
            ),
        ]
    if cards:
        blocks.append(Cards(cards))
    if HOUSEHOLD_LEVEL in levels:
        blocks.append(
            household_size_table(
                households_by_size(levels[HOUSEHOLD_LEVEL]), currency, settings.scoring.interval_level
            )
        )
    backtest = monitored.get("party_backtest", pd.DataFrame())
    if backtest is None or backtest.empty:
        blocks.append(Note("No party backtest: no earlier scores with detail arrays, or monitor ran without "
                           "paths.parties."))  # fmt: skip
    else:
        blocks.append(party_backtest_table(settings, backtest))
        by_size = party_size_table(backtest)
        if by_size is not None:
            blocks.append(by_size)
    coverage = monitored.get("party_coverage", pd.DataFrame())
    if coverage is not None and set(coverage.get("note", [])) == {NO_PARTY_MODEL}:
        blocks.append(
            Note(
                f"Party interval coverage: {NO_PARTY_MODEL}. The release was trained without parties, so "
                "persons and households have no interval and its coverage cannot be checked."
            )
        )
    elif coverage is not None and not coverage.empty:
        blocks.append(party_coverage_table(coverage, settings))
    return blocks


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
    previous = read_scores(spark, settings.paths, add_months(month, -1))
    levels = party_scores(spark, settings, month)
    with_parties = bool(levels) or not monitored.get("party_coverage", pd.DataFrame()).empty
    checks = month_checks(settings, info, monitored, parties=with_parties)
    now = base_figures(scores)
    headline = section_headline(settings, month, now, base_figures(previous), checks, summary)
    pair = section_releases(settings, info)
    sections = [
        Section("The month at a glance", headline),
        Section(
            "Value of the base: over 60 months, by segment, by tenure",
            section_value(spark, settings, scores, month),
        ),
        *(
            [Section("Persons and households", section_parties(settings, levels, monitored, now))]
            if with_parties
            else []
        ),
        *([Section("Champion and challenger", pair)] if pair else []),
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
    overall = worst(summary.get("status", SKIPPED), *(c.status for c in checks))
    page = render(
        fmt(month),
        {**summary, "status": overall},
        info,
        sections,
        dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
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
    push_job_metrics(settings.monitoring, "report", month, info["version"], {}, {}, "ok")
    return location[len("file:") :] if location.startswith("file:") else location


REPORT_TAG = "monitoring_report"  # model version tag monitoring_report.YYYY-MM = the review page's link
REVIEW_SECTION = "Monthly review pages"
# MLflow 3.17's UI picks its layout from this URL parameter (else from the browser's last choice,
# GenAI by default), not from the experiment's mlflow.experimentKind tag: links ask for the classic one
CLASSIC_LAYOUT = "workflowType=machine_learning"


def report_link(ui_url: str | None, experiment_id: str, run_id: str, path: str) -> str:
    """Where a person opens the review page: the artifact in the MLflow UI when `mlflow.ui_url` is set,
    else the run-relative MLflow URI (runs:/…) — never a local file path."""
    if ui_url:
        page = f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"
        return f"{ui_url.rstrip('/')}/{page}?{CLASSIC_LAYOUT}"
    return f"runs:/{run_id}/{path}"


def review_links(tags: dict[str, str]) -> str:
    """The version description's list of review pages, newest month first (links when they are URLs)."""
    months = sorted((k.split(".", 1)[1], v) for k, v in tags.items() if k.startswith(f"{REPORT_TAG}."))
    lines = [
        f"- [{m}]({v})" if v.startswith(("http://", "https://")) else f"- {m}: `{v}`" for m, v in months[::-1]
    ]
    hint = (
        ""
        if any(v.startswith("http") for _, v in months)
        else ("\n\nSet `mlflow.ui_url` to have these as links the MLflow UI opens.")
    )
    return (
        "The monthly review page of every month this release scored and monitored:\n\n"
        + "\n".join(lines)
        + hint
    )


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
    run = client.get_run(run_id)
    mark_classic_experiment(client, run.info.experiment_id)
    uri = report_link(settings.mlflow.ui_url, run.info.experiment_id, run_id, f"report/{name}")
    client.set_tag(run_id, "report", uri)
    key = f"{REPORT_TAG}.{fmt(month)}"
    try:
        client.set_model_version_tag(settings.mlflow.model_name, str(version), key, uri)
        tags = client.get_model_version(settings.mlflow.model_name, str(version)).tags
        set_description_section(settings, version, REVIEW_SECTION, review_links(tags))
    except Exception as exc:
        if tracking.is_unreachable(exc):
            raise
        log.warning("model version %s of %s not tagged: %s", version, settings.mlflow.model_name, exc)
    if release_run_id:
        try:
            client.set_tag(release_run_id, key, uri)
        except Exception as exc:
            log.warning("release run %s not tagged: %s", release_run_id, exc)
    return uri
