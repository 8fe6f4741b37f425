"""Backtest: every forecast made at T−k (k = 1..24, from the `<model>_h` detail arrays of the scores) for
month T against the facts of T, per horizon, population (holdout / rest / all) and dimension (segment,
region, tenure cohort), plus the cumulative value realized over T−k+1..T against its forecast.

The transforms (forecast rows, realized rows, their join, the aggregation) are DataFrame → DataFrame and
are tested on small frames; `run_backtest` finds the scored months and the facts around them.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app.batch import VALUE_BOUNDS_H
from spark_app.catalog import NULL_CATEGORY, ModelCatalog
from spark_app.checks import SKIPPED, status_of
from spark_app.cltv import ValueFormula
from spark_app.config import MonitoringConfig, Settings
from spark_app.contract import ID, MONTH, month_dirs, read_table
from spark_app.layout import read_scores
from spark_app.months import add_months, fmt, months_between
from spark_app.storage import Storage

VALUE_CUM = "value_cum"  # pseudo model id of the cumulative value rows of the backtest
INTERVAL_LEVEL = "interval_level"


def missing_type(column: str) -> str:
    """Type of a scores column absent from an older month (bounds and level came with intervals)."""
    return "double" if column == INTERVAL_LEVEL else "array<double>"


# ---------------------------------------------------------------- forecasts beside facts (Spark transforms)
def detail_models(columns: list[str], catalog: ModelCatalog) -> list[str]:
    """The catalog's models whose monthly forecasts (`<model>_h`) a scores table carries, in its order."""
    return [m for m in catalog.ids if f"{m}_h" in columns]


def forecast_rows(
    scores: DataFrame, month: dt.date, *, models: list[str], formula: ValueFormula, max_horizon: int
) -> DataFrame:
    """Forecasts for `month` made at earlier score months: element h of `<model>_h` of month T−h.

    Adds `horizon`, `f_<model>` and `f_value_cum` (forecast value of months T−h+1..T, undiscounted, by the
    value formula CLTV uses), and its interval `f_value_cum_lower` / `_upper` (null where the scores have
    no bounds: a release without intervals, or scores from before them).
    """
    horizon = F.months_between(F.lit(month), F.col("score_month")).cast("int")
    df = scores.withColumn("horizon", horizon).where(
        (F.col("horizon") >= 1) & (F.col("horizon") <= max_horizon)
    )
    available = set(models)
    monthly_value = F.transform(
        F.sequence(F.lit(1), F.lit(max_horizon)),
        lambda i: (
            F.lit(0.0)
            + formula.monthly_value(
                lambda m: F.coalesce(F.element_at(F.col(f"{m}_h"), i), F.lit(0.0)), available
            )
        ),
    )
    cum = F.aggregate(F.slice(monthly_value, 1, F.col("horizon")), F.lit(0.0), lambda acc, x: acc + x)
    bounds = [
        (F.element_at(F.col(name), F.col("horizon")) if name in df.columns else F.lit(None))
        .cast("double")
        .alias(f"f_{VALUE_CUM}_{side}")
        for name, side in zip(VALUE_BOUNDS_H, ("lower", "upper"), strict=True)
    ]
    return df.select(
        *[c for c in df.columns if not c.endswith("_h")],
        *[
            F.coalesce(F.element_at(F.col(f"{m}_h"), F.col("horizon")), F.lit(0.0))
            .cast("double")
            .alias(f"f_{m}")
            for m in models
        ],
        cum.alias(f"f_{VALUE_CUM}"),
        *bounds,
    )


def realized_rows(
    facts: DataFrame,
    month: dt.date,
    *,
    models: list[str],
    catalog: ModelCatalog,
    formula: ValueFormula,
    max_horizon: int,
) -> DataFrame:
    """Per subscriber with facts in T−max_horizon+1..T: `a_<model>` at T, and `a_value_by_k`, an array
    whose element k is the value realized over the last k months (T−k+1..T)."""
    first = add_months(month, -(max_horizon - 1))
    window = facts.where((F.col(MONTH) >= F.lit(first)) & (F.col(MONTH) <= F.lit(month)))
    offset = F.months_between(F.lit(month), F.col(MONTH)).cast("int")  # 0 = T, 1 = T−1, ...

    def fact(m: str):
        return F.col(catalog[m].fact).cast("double")

    value = F.lit(0.0) + formula.monthly_value(fact, set(models))
    rows = window.select(ID, offset.alias("ago"), value.alias("v"), *[fact(m).alias(m) for m in models])
    per_sub = rows.groupBy(ID).agg(
        *[F.sum(F.when(F.col("ago") == 0, F.col(m))).alias(f"a_{m}") for m in models],
        *[F.sum(F.when(F.col("ago") == j, F.col("v"))).alias(f"v{j}") for j in range(max_horizon)],
    )
    cum, parts = None, []
    for j in range(max_horizon):
        term = F.coalesce(F.col(f"v{j}"), F.lit(0.0))
        cum = term if cum is None else cum + term
        parts.append(cum)
    return per_sub.select(ID, *[f"a_{m}" for m in models], F.array(*parts).alias("a_value_by_k"))


def tenure_cohort(col: str, lower_edges: list[int]):
    """'0-5', '6-11', ..., '48+' from the tenure in months at the scoring month."""
    edges = sorted(lower_edges)
    c = F.col(col)
    label = F.lit(None).cast("string")
    for i, lo in enumerate(edges):
        name = f"{lo}+" if i == len(edges) - 1 else f"{lo}-{edges[i + 1] - 1}"
        label = F.when(c >= F.lit(lo), F.lit(name)).otherwise(label)
    return F.coalesce(label, F.lit(NULL_CATEGORY))


def backtest_rows(forecasts: DataFrame, realized: DataFrame, *, models: list[str]) -> DataFrame:
    """Forecast beside realization per (subscriber, score month); no facts at T → 0 / out of base."""
    joined = forecasts.join(realized, ID, "left")
    return joined.select(
        *[c for c in forecasts.columns],
        *[F.coalesce(F.col(f"a_{m}"), F.lit(0.0)).alias(f"a_{m}") for m in models],
        F.coalesce(F.element_at(F.col("a_value_by_k"), F.col("horizon")), F.lit(0.0)).alias(f"a_{VALUE_CUM}"),
    )


def aggregate_backtest(rows: DataFrame, *, models: list[str], dimensions: list[str]) -> pd.DataFrame:
    """Long table: one row per (score month, horizon, population, dimension, value, model) with sums,
    WAPE, bias, — for the survival models — predicted vs realized share in base, and — for the cumulative
    value — the coverage of its interval (share of the bounded rows whose realized value lies inside).

    Populations: `holdout` (never targeted by campaigns, so unbiased by retention actions), `rest`, `all`.
    Dimensions: `all` plus every column in `dimensions` (e.g. segment, region, tenure_cohort).
    """
    targets = [*models, VALUE_CUM]
    population = F.explode(F.array(F.lit("all"), F.when(F.col("holdout"), "holdout").otherwise("rest")))
    dims = F.explode(
        F.array(
            F.struct(F.lit("all").alias("dimension"), F.lit("all").alias("value")),
            *[
                F.struct(
                    F.lit(d).alias("dimension"),
                    F.coalesce(F.col(d).cast("string"), F.lit(NULL_CATEGORY)).alias("value"),
                )
                for d in dimensions
            ],
        )
    )
    keys = ["score_month", "release_version", "horizon"]
    stacked = rows.select(
        *keys,
        population.alias("population"),
        dims.alias("d"),
        *[F.col(f"f_{t}") for t in targets],
        *[F.col(f"a_{t}") for t in targets],
        *[F.col(f"f_{VALUE_CUM}_{side}") for side in ("lower", "upper")],
        F.col(INTERVAL_LEVEL) if INTERVAL_LEVEL in rows.columns else F.lit(None).cast("double"),
    )
    aggs = [F.count(F.lit(1)).alias("n")]
    for t in targets:
        f, a = F.col(f"f_{t}"), F.col(f"a_{t}")
        aggs += [
            F.sum(f).alias(f"{t}__forecast_sum"),
            F.sum(a).alias(f"{t}__actual_sum"),
            F.sum(F.abs(a)).alias(f"{t}__actual_abs_sum"),
            F.sum(F.abs(a - f)).alias(f"{t}__abs_error_sum"),
            F.sum((a - f) * (a - f)).alias(f"{t}__sq_error_sum"),
        ]
    lower, upper, realized = (F.col(f"f_{VALUE_CUM}_lower"), F.col(f"f_{VALUE_CUM}_upper"),
                              F.col(f"a_{VALUE_CUM}"))  # fmt: skip
    bounded = lower.isNotNull() & upper.isNotNull() & ~F.isnan(lower) & ~F.isnan(upper)
    aggs += [
        F.sum(bounded.cast("long")).alias("bounded"),
        F.sum((bounded & (realized >= lower) & (realized <= upper)).cast("long")).alias("covered"),
        F.sum(F.when(bounded, upper - lower)).alias("width_sum"),
        F.max(F.when(bounded, F.col(INTERVAL_LEVEL))).alias(INTERVAL_LEVEL),
    ]
    wide = (
        stacked.groupBy(
            *keys, "population", F.col("d.dimension").alias("dimension"), F.col("d.value").alias("value")
        )
        .agg(*aggs)
        .toPandas()
    )
    return _long_backtest(wide, targets)


BACKTEST_COLUMNS = [
    "score_month",
    "release_version",
    "horizon",
    "population",
    "dimension",
    "value",
    "model_id",
    "n",
    "forecast_sum",
    "actual_sum",
    "forecast_mean",
    "actual_mean",
    "wape",
    "bias",
    "rmse",
    "abs_error_sum",
    "actual_abs_sum",
    "sq_error_sum",
    "bounded",
    "covered",
    "coverage",
    "interval_level",
    "interval_width_mean",
]


def _long_backtest(wide: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    parts = []
    base = ["score_month", "release_version", "horizon", "population", "dimension", "value", "n"]
    for t in targets:
        part = wide[base].copy()
        part["model_id"] = t
        for stat in ("forecast_sum", "actual_sum", "actual_abs_sum", "abs_error_sum", "sq_error_sum"):
            part[stat] = wide[f"{t}__{stat}"].astype("float64")
        interval = t == VALUE_CUM  # the interval is of the cumulative value only
        part["bounded"] = wide["bounded"].fillna(0).astype("int64") if interval else 0
        part["covered"] = wide["covered"].fillna(0).astype("int64") if interval else 0
        part["width_sum"] = wide["width_sum"].astype("float64") if interval else np.nan
        part[INTERVAL_LEVEL] = wide[INTERVAL_LEVEL].astype("float64") if interval else np.nan
        parts.append(part)
    if not parts or wide.empty:
        return pd.DataFrame(columns=BACKTEST_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    n = out["n"].astype("float64")
    denom = out["actual_abs_sum"].where(out["actual_abs_sum"] > 0)
    out["forecast_mean"] = out["forecast_sum"] / n
    out["actual_mean"] = out["actual_sum"] / n  # for paid / active: realized share in base
    out["wape"] = out["abs_error_sum"] / denom
    out["bias"] = (out["forecast_sum"] - out["actual_sum"]) / denom
    out["rmse"] = np.sqrt(out["sq_error_sum"] / n)
    bounded = out["bounded"].astype("float64").where(out["bounded"] > 0)
    out["coverage"] = out["covered"] / bounded
    out["interval_width_mean"] = out["width_sum"] / bounded
    out["horizon"] = out["horizon"].astype("int32")
    out["n"] = out["n"].astype("int64")
    return out[BACKTEST_COLUMNS].sort_values(
        ["model_id", "population", "dimension", "value", "horizon"], ignore_index=True
    )


def coverage_checks(backtest: pd.DataFrame, cfg: MonitoringConfig) -> pd.DataFrame:
    """Coverage of the cumulative value's interval against its level, per score month (horizon) and
    population, over all subscribers (dimension `all`; segments are shown, not judged: they are small),
    with a status: |coverage − level| against `coverage_warn` / `coverage_fail`; skipped under
    `coverage_min_rows` bounded subscribers."""
    columns = ["score_month", "horizon", "population", "bounded", "coverage", INTERVAL_LEVEL, "gap", "status"]
    if backtest.empty or "coverage" not in backtest:
        return pd.DataFrame(columns=columns)
    rows = backtest[(backtest["model_id"] == VALUE_CUM) & (backtest["dimension"] == "all")]
    rows = rows[rows["bounded"] > 0].copy()
    rows["gap"] = rows["coverage"] - rows["interval_level"]
    judged = rows["bounded"] >= cfg.coverage_min_rows
    rows["status"] = [
        status_of(abs(gap), cfg.coverage_warn, cfg.coverage_fail) if ok else SKIPPED
        for gap, ok in zip(rows["gap"], judged, strict=True)
    ]
    return rows[columns].sort_values(["population", "horizon"], ignore_index=True)


def survival_checks(backtest: pd.DataFrame, survival: list[str], cfg: MonitoringConfig) -> pd.DataFrame:
    """Predicted against realized share in base of each survival model, per score month (horizon), over
    all subscribers, with a status from `survival_warn` / `survival_fail` at that horizon: a curve that
    drifts off what the base does is seen in the first months, long before CLTV would show it."""
    columns = ["model_id", "score_month", "horizon", "n", "predicted", "realized", "gap", "warn", "fail",
               "status"]  # fmt: skip
    if backtest.empty:
        return pd.DataFrame(columns=columns)
    wanted = backtest["model_id"].isin(survival) & (backtest["dimension"] == "all")
    rows = backtest[wanted & (backtest["population"] == "all")].copy()
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows["predicted"], rows["realized"] = rows["forecast_mean"], rows["actual_mean"]
    rows["gap"] = rows["predicted"] - rows["realized"]
    limits = [cfg.survival_thresholds(int(h)) for h in rows["horizon"]]
    rows["warn"], rows["fail"] = [w for w, _ in limits], [f for _, f in limits]
    judged = rows["n"] >= cfg.coverage_min_rows
    rows["status"] = [
        status_of(abs(g), w, f) if ok else SKIPPED
        for g, w, f, ok in zip(rows["gap"], rows["warn"], rows["fail"], judged, strict=True)
    ]
    return rows[columns].sort_values(["model_id", "horizon"], ignore_index=True)


# ---------------------------------------------------------------- the month's inputs and the job
def present_months(spark: SparkSession, path: str, table: str, months: list[dt.date]) -> list[dt.date]:
    """Those of `months` whose partition directory exists."""
    found, _ = month_dirs(Storage(spark), path, table)
    return [m for m in months if m in found]


def backtest_inputs(
    spark: SparkSession, settings: Settings, month: dt.date
) -> tuple[DataFrame | None, list[str], list[str], int]:
    """Union of the scores of T−1..T−k that carry detail arrays, with the breakdown columns from the
    features of their scoring month. Returns (rows or None, models, notes, deepest horizon found)."""
    cfg = settings.monitoring
    catalog = settings.models.catalog()
    notes: list[str] = []
    parts = []
    months: list[dt.date] = []
    models: list[str] | None = None
    for k in range(1, cfg.backtest_max_horizon + 1):
        m = add_months(month, -k)
        scores = read_scores(spark, settings.paths, m)
        if scores is None:
            continue
        found = detail_models(scores.columns, catalog)
        if not found:
            notes.append(f"scores {fmt(m)} have no detail arrays (score with --detail): not backtested")
            continue
        models = found if models is None else [x for x in models if x in found]
        parts.append(scores)
        months.append(m)
    if not parts:
        return None, [], notes, 0
    cols = [ID, "score_month", "release_version", "holdout", *[f"{x}_h" for x in models], *VALUE_BOUNDS_H,
            INTERVAL_LEVEL]  # fmt: skip
    union = None
    for p in parts:
        sel = p.select(
            *[F.col(c) if c in p.columns else F.lit(None).cast(missing_type(c)).alias(c) for c in cols]
        )
        sel = sel.withColumn("release_version", F.col("release_version").cast("string"))
        sel = sel.withColumn("holdout", F.coalesce(F.col("holdout").cast("boolean"), F.lit(False)))
        union = sel if union is None else union.unionByName(sel)
    present = present_months(spark, settings.paths.features, "features", months)
    features = read_table(spark, settings.paths.features, "features", present)
    dims = [d for d in cfg.backtest_dimensions if d in features.columns]
    notes += [
        f"backtest dimension {d!r} is not a feature column: skipped"
        for d in cfg.backtest_dimensions
        if d not in dims
    ]
    group_cols = [F.col(d) for d in dims]
    tenure = catalog.tenure_column
    if tenure and tenure in features.columns:
        group_cols.append(tenure_cohort(tenure, cfg.tenure_cohorts).alias("tenure_cohort"))
    elif tenure:
        notes.append(f"tenure column {tenure!r} is not a feature column: no tenure cohorts")
    groups = features.select(ID, F.col(MONTH).alias("score_month"), *group_cols)
    deepest = max(months_between(m, month) for m in months)
    return union.join(groups, [ID, "score_month"], "left"), models, notes, deepest


def run_backtest(spark: SparkSession, settings: Settings, month: dt.date) -> tuple[pd.DataFrame, list[str]]:
    cfg = settings.monitoring
    scored, models, notes, deepest = backtest_inputs(spark, settings, month)
    if scored is None:
        notes.append(
            f"no scores with detail arrays in {fmt(add_months(month, -cfg.backtest_max_horizon))}.."
            f"{fmt(add_months(month, -1))}: nothing to backtest"
        )
        return pd.DataFrame(columns=BACKTEST_COLUMNS), notes
    window = [add_months(month, -k) for k in range(deepest - 1, -1, -1)]
    arrived = present_months(spark, settings.paths.facts, "facts", window)
    if month not in arrived:
        notes.append(f"facts of {fmt(month)} have not arrived: nothing to backtest")
        return pd.DataFrame(columns=BACKTEST_COLUMNS), notes
    facts = read_table(spark, settings.paths.facts, "facts", arrived)
    dims = [c for c in scored.columns if c in {*cfg.backtest_dimensions, "tenure_cohort"}]
    # facts only as far back as the oldest forecast found (realized value over T-k+1..T)
    catalog = settings.models.catalog()
    formula = ValueFormula.from_catalog(catalog.subset(models), settings.costs)
    forecasts = forecast_rows(scored, month, models=models, formula=formula, max_horizon=deepest)
    realized = realized_rows(
        facts, month, models=models, catalog=catalog, formula=formula, max_horizon=deepest
    )
    rows = backtest_rows(forecasts, realized, models=models)
    return aggregate_backtest(rows, models=models, dimensions=dims), notes
