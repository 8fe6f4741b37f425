"""Backtest: every forecast made at T−k (k = 1..24, from the `<model>_h` detail arrays of the scores) for
month T against the facts of T, per horizon, population (holdout / rest / all) and dimension (segment,
region, tenure cohort), plus the cumulative value realized over T−k+1..T against its forecast. With
`paths.parties`, the same per person and household (`run_party_backtest`): the members' forecasts summed
against what their customers realized, by party size, with the coverage of the release's party interval.

The transforms (forecast rows, realized rows, their join, the aggregation) are DataFrame → DataFrame and
are tested on small frames; `run_backtest` finds the scored months and the facts around them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app.batch import VALUE_BOUNDS_H
from spark_app.catalog import NULL_CATEGORY, ModelCatalog
from spark_app.checks import SKIPPED, status_of
from spark_app.cltv import ValueFormula
from spark_app.config import MonitoringConfig, PathsConfig, Settings
from spark_app.contract import ID, MONTH, month_dirs, read_table
from spark_app.layout import SCORE_MONTH, SCORE_SUMMARY, read_scores, scores_dir
from spark_app.months import add_months, fmt, months_between
from spark_app.parties import (
    CUSTOMER,
    GENERATION,
    HOUSEHOLD,
    LEVEL,
    LEVEL_COLUMN,
    LEVELS,
    MEMBERS,
    PARTY,
    PERSON,
    PartyModel,
    read_party_inputs,
    size_label_column,
    with_customer,
)
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


def error_sums(targets: list[str]) -> list[Column]:
    """Per target (forecast column f_<t>, actual a_<t>): the sums every backtest figure is computed from —
    forecast, actual, |actual|, |error|, error² — so a sum over groups is still the group's figure."""
    aggs = []
    for t in targets:
        f, a = F.col(f"f_{t}"), F.col(f"a_{t}")
        aggs += [
            F.sum(f).alias(f"{t}__forecast_sum"),
            F.sum(a).alias(f"{t}__actual_sum"),
            F.sum(F.abs(a)).alias(f"{t}__actual_abs_sum"),
            F.sum(F.abs(a - f)).alias(f"{t}__abs_error_sum"),
            F.sum((a - f) * (a - f)).alias(f"{t}__sq_error_sum"),
        ]
    return aggs


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
    aggs = [F.count(F.lit(1)).alias("n"), *error_sums(targets)]
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


def detail_scores(
    spark: SparkSession, settings: Settings, month: dt.date
) -> tuple[DataFrame | None, list[str], list[str], list[dt.date]]:
    """Union of the scores of T−1..T−k that carry detail arrays (the columns both backtests read). Returns
    (rows or None, the models every month carries, notes, the months found)."""
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
    if not parts or models is None:
        return None, [], notes, []
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
    return union, models, notes, months


def backtest_inputs(
    spark: SparkSession, settings: Settings, month: dt.date
) -> tuple[DataFrame | None, list[str], list[str], int]:
    """Union of the scores of T−1..T−k that carry detail arrays, with the breakdown columns from the
    features of their scoring month. Returns (rows or None, models, notes, deepest horizon found)."""
    union, models, notes, months = detail_scores(spark, settings, month)
    if union is None:
        return None, [], notes, 0
    cfg = settings.monitoring
    catalog = settings.models.catalog()
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


# ---------------------------------------------------------------- persons and households (paths.parties)
SIZE = "size"  # lines of the party in its scored month: "1" .. "4", "5+" (parties.size_label), or "all"
ALL_SIZES = "all"
NO_PARTY_MODEL = "n/a (release fitted no party intervals)"
PARTY_KEYS = [LEVEL, SCORE_MONTH, "release_version", "horizon"]
PARTY_BACKTEST_COLUMNS = [
    LEVEL, SCORE_MONTH, "release_version", "horizon", SIZE, "model_id", "parties", MEMBERS, "forecast_sum",
    "actual_sum", "forecast_mean", "actual_mean", "wape", "bias", "rmse", "abs_error_sum", "actual_abs_sum",
    "sq_error_sum", "bounded", "covered", "coverage", INTERVAL_LEVEL, "interval_width_mean",
]  # fmt: skip
PARTY_COVERAGE_COLUMNS = [
    LEVEL, SCORE_MONTH, "horizon", "release_version", "parties", "bounded", "coverage", INTERVAL_LEVEL, "gap",
    "status", "note",
]  # fmt: skip

# what the release of a scored month fitted about parties: (model or None, why there is none)
PartyModelOf = Callable[[str], tuple[PartyModel | None, str]]
# (level, score month, release version) → the relative (lower, upper) edges of its horizon by party size
# (parties.size_label), or why none
PartyEdges = Mapping[tuple[str, dt.date, str], dict[str, tuple[float, float]] | str]


def continued_members(parties: DataFrame, chains: DataFrame) -> DataFrame:
    """(subscriber_id, score_month) of the old ids whose successor is in the parties rows of the same month
    (the overlap month of a number change): their customer's facts are counted once, on the newest id.
    Only chain members are joined (broadcast) and shuffled: number changes are few."""
    chained = parties.select(ID, F.col(MONTH).alias(SCORE_MONTH)).join(F.broadcast(chains), ID)
    newest = chained.groupBy(SCORE_MONTH, CUSTOMER).agg(F.max(GENERATION).alias("_newest"))
    return (
        chained.join(newest, [SCORE_MONTH, CUSTOMER])
        .where(F.col(GENERATION) < F.col("_newest"))
        .select(ID, SCORE_MONTH, F.lit(True).alias("_continued"))
    )


def party_members(
    forecasts: DataFrame, parties: DataFrame | None, chains: DataFrame | None, *, models: list[str]
) -> DataFrame:
    """Forecast rows (`forecast_rows`) with the person, household and customer of each subscriber in its
    score month — the parties table's rows of that month (`report_month` = score month); a subscriber
    without one is its own person, in no household, as `parties.attach_parties` rolls it up — and
    `_continued` (the old id of a number change in its overlap month, `continued_members`)."""
    keep = forecasts.select(
        ID, SCORE_MONTH, "release_version", "horizon", *[f"f_{t}" for t in [*models, VALUE_CUM]]
    )
    if parties is None:
        joined = keep.withColumn(PERSON, F.lit(None).cast("string")).withColumn(
            HOUSEHOLD, F.lit(None).cast("string")
        )
    else:
        rows = parties.select(ID, F.col(MONTH).alias(SCORE_MONTH), PERSON, HOUSEHOLD)
        joined = keep.join(rows, [ID, SCORE_MONTH], "left")
    joined = with_customer(joined.withColumn(PERSON, F.coalesce(PERSON, ID)), chains)
    if parties is None or chains is None:
        return joined.withColumn("_continued", F.lit(False))
    continued = F.broadcast(continued_members(parties, chains))
    return joined.join(continued, [ID, SCORE_MONTH], "left").withColumn(
        "_continued", F.coalesce("_continued", F.lit(False))
    )


def customer_realized(
    facts: DataFrame,
    chains: DataFrame | None,
    month: dt.date,
    *,
    models: list[str],
    catalog: ModelCatalog,
    formula: ValueFormula,
    max_horizon: int,
) -> DataFrame:
    """`realized_rows` per customer (customer_id: the first id of a number-change chain): what the
    customer realized at T and over the last k months, whichever of its ids carried it. A customer is in
    a base once, even in the month its old and new ids both are (survival flags capped at 1)."""
    keyed = with_customer(facts, chains).drop(ID, GENERATION).withColumnRenamed(CUSTOMER, ID)
    realized = realized_rows(
        keyed, month, models=models, catalog=catalog, formula=formula, max_horizon=max_horizon
    )
    survival = {e.model_id for e in catalog.survival}
    return realized.select(
        F.col(ID).alias(CUSTOMER),
        *[
            (
                F.least(F.coalesce(f"a_{m}", F.lit(0.0)), F.lit(1.0)) if m in survival else F.col(f"a_{m}")
            ).alias(f"a_{m}")
            for m in models
        ],
        "a_value_by_k",
    )


def party_sums(members: DataFrame, realized: DataFrame, *, models: list[str]) -> DataFrame:
    """One row per (level, score month, release, horizon, party): members (subscribers scored), and per
    model and the cumulative value the members' forecasts `f_*` and their customers' realizations `a_*`
    summed. A subscriber joins its person and, when it has one, its household (one explode, one groupBy
    for both levels); an old id in its overlap month realizes nothing (its successor carries the facts)."""
    targets = [*models, VALUE_CUM]
    joined = members.join(realized, CUSTOMER, "left")
    gone = F.col("_continued")
    actual = [
        F.when(gone, F.lit(0.0)).otherwise(F.coalesce(F.col(f"a_{m}"), F.lit(0.0))).alias(f"a_{m}")
        for m in models
    ]
    cum = F.coalesce(F.element_at(F.col("a_value_by_k"), F.col("horizon")), F.lit(0.0))
    actual.append(F.when(gone, F.lit(0.0)).otherwise(cum).alias(f"a_{VALUE_CUM}"))
    levels = F.array(
        *[F.struct(F.lit(level).alias(LEVEL), F.col(LEVEL_COLUMN[level]).alias(PARTY)) for level in LEVELS]
    )
    exploded = joined.select(
        SCORE_MONTH, "release_version", "horizon", F.explode(levels).alias("_p"),
        *[F.col(f"f_{t}") for t in targets], *actual,
    ).where(F.col(f"_p.{PARTY}").isNotNull())  # fmt: skip
    return exploded.groupBy(
        F.col(f"_p.{LEVEL}").alias(LEVEL), SCORE_MONTH, "release_version", "horizon",
        F.col(f"_p.{PARTY}").alias(PARTY),
    ).agg(
        F.count(F.lit(1)).alias(MEMBERS),
        *[F.sum(f"f_{t}").alias(f"f_{t}") for t in targets],
        *[F.sum(f"a_{t}").alias(f"a_{t}") for t in targets],
    )  # fmt: skip


def size_label() -> Column:
    """'1' .. '4', or '5+' lines (parties.MAX_SIZE)."""
    return size_label_column(F.col(MEMBERS))


def edge_column(edges: PartyEdges, side: int) -> Column:
    """The relative edge (0: lower, 1: upper) of each party row's (level, score month, release, size): the
    release's party interval at the row's horizon for parties of its size; null where it fitted none."""
    out = F.lit(None).cast("double")
    for (level, score_month, version), by_size in edges.items():
        if isinstance(by_size, dict):
            at = (
                (F.col(LEVEL) == F.lit(level))
                & (F.col(SCORE_MONTH) == F.lit(score_month))
                & (F.col("release_version") == F.lit(version))
            )
            for size, edge in by_size.items():
                out = F.when(at & (size_label() == F.lit(size)), F.lit(float(edge[side]))).otherwise(out)
    return out


def aggregate_party_backtest(
    parties: DataFrame, *, models: list[str], edges: PartyEdges, interval_level: float
) -> pd.DataFrame:
    """Long table per (level, score month, horizon, size, model): parties, members, the sums and WAPE /
    bias / RMSE over parties, and for the cumulative value the coverage of the party interval (the
    release's relative edges at the horizon: forecast + |forecast| · edge) — as `aggregate_backtest`
    computes them per subscriber. One aggregation per size over the party rows; `all` sizes are the sums
    of the sizes (every figure is a sum), added here."""
    targets = [*models, VALUE_CUM]
    lo, hi = edge_column(edges, 0), edge_column(edges, 1)
    f, a = F.col(f"f_{VALUE_CUM}"), F.col(f"a_{VALUE_CUM}")
    lower, upper = f + F.abs(f) * lo, f + F.abs(f) * hi
    bounded = lo.isNotNull() & hi.isNotNull()
    aggs = [F.count(F.lit(1)).alias("n"), F.sum(MEMBERS).alias(MEMBERS), *error_sums(targets)]
    aggs += [
        F.coalesce(F.sum(bounded.cast("long")), F.lit(0)).alias("bounded"),
        F.coalesce(F.sum((bounded & (a >= lower) & (a <= upper)).cast("long")), F.lit(0)).alias("covered"),
        F.sum(F.when(bounded, upper - lower)).alias("width_sum"),
    ]
    wide = parties.groupBy(*PARTY_KEYS, size_label().alias(SIZE)).agg(*aggs).toPandas()
    if wide.empty:
        return pd.DataFrame(columns=PARTY_BACKTEST_COLUMNS)
    sums = [c for c in wide.columns if c not in (*PARTY_KEYS, SIZE)]
    overall = wide.groupby(PARTY_KEYS, as_index=False, dropna=False)[sums].sum(min_count=1)
    wide = pd.concat([wide, overall.assign(**{SIZE: ALL_SIZES})], ignore_index=True)
    wide[INTERVAL_LEVEL] = np.where(wide["bounded"] > 0, interval_level, np.nan)
    members = wide[[*PARTY_KEYS, SIZE, MEMBERS]]
    renamed = wide.rename(columns={LEVEL: "population", SIZE: "value"}).assign(dimension=SIZE)
    long = _long_backtest(renamed, targets).rename(
        columns={"population": LEVEL, "value": SIZE, "n": "parties"}
    )
    long = long.merge(members, on=[*PARTY_KEYS, SIZE], how="left")
    long[MEMBERS] = long[MEMBERS].astype("int64")
    return long[PARTY_BACKTEST_COLUMNS].sort_values([LEVEL, "model_id", SIZE, "horizon"], ignore_index=True)


def party_coverage_checks(
    backtest: pd.DataFrame, cfg: MonitoringConfig, why: Mapping[tuple[str, dt.date], str]
) -> pd.DataFrame:
    """Coverage of the party interval of cumulative value per level and score month (horizon), over
    parties of every size, judged as the subscribers' (`coverage_checks`): |coverage − level| against
    `coverage_warn` / `coverage_fail`, skipped under `coverage_min_rows` bounded parties of the level.
    `note` says why a row is not judged (`why`: the release fitted no party interval there)."""
    if backtest.empty:
        return pd.DataFrame(columns=PARTY_COVERAGE_COLUMNS)
    rows = backtest[(backtest["model_id"] == VALUE_CUM) & (backtest[SIZE] == ALL_SIZES)].copy()
    rows["gap"] = rows["coverage"] - rows[INTERVAL_LEVEL]
    judged = rows["bounded"] >= cfg.coverage_min_rows
    rows["status"] = [
        status_of(abs(gap), cfg.coverage_warn, cfg.coverage_fail) if ok else SKIPPED
        for gap, ok in zip(rows["gap"], judged, strict=True)
    ]
    rows["note"] = [
        ""
        if ok
        else why.get((level, month)) or f"too few parties to judge ({bounded:,} < {cfg.coverage_min_rows:,})"
        for level, month, bounded, ok in zip(
            rows[LEVEL], rows[SCORE_MONTH], rows["bounded"], judged, strict=True
        )
    ]
    return rows[PARTY_COVERAGE_COLUMNS].sort_values([LEVEL, "horizon"], ignore_index=True)


def scored_release(spark: SparkSession, paths: PathsConfig, month: dt.date) -> str | None:
    """The release version that scored `month`, from its `_summary.json` (no Spark job), else one row."""
    storage = Storage(spark)
    summary = f"{scores_dir(paths, month)}/{SCORE_SUMMARY}"
    if storage.exists(summary):
        version = storage.read_json(summary).get("release_version")
        if version is not None:
            return str(version)
    scores = read_scores(spark, paths, month)
    if scores is None:
        return None
    row = scores.select("release_version").where(F.col("release_version").isNotNull()).limit(1).collect()
    return str(row[0][0]) if row else None


def party_edges(
    versions: Mapping[dt.date, str | None], month: dt.date, model_of: PartyModelOf, interval_level: float
) -> tuple[PartyEdges, dict[tuple[str, dt.date], str]]:
    """Per (level, score month, release): the release's relative party edges at the month's horizon by
    party size (`PartyModel.sized_edges`), or why there are none — and the same reasons by (level, score
    month)."""
    edges: dict[tuple[str, dt.date, str], dict[str, tuple[float, float]] | str] = {}
    why: dict[tuple[str, dt.date], str] = {}
    for score_month, version in versions.items():
        h = months_between(score_month, month)
        model, reason = model_of(version) if version is not None else (None, "n/a (release unknown)")
        for level in LEVELS:
            found = model.sized_edges(level, interval_level, h) if model is not None else None
            if found is None:
                reason_h = reason or f"n/a (the release fitted no {level} interval at {h} months)"
                why[(level, score_month)] = reason_h
                found = reason_h
            edges[(level, score_month, str(version))] = found
    return edges, why


@dataclass(frozen=True)
class PartyBacktest:
    """The party backtest of month T (`run_party_backtest`): the long table, its coverage checks, notes."""

    backtest: pd.DataFrame
    coverage: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def run_party_backtest(
    spark: SparkSession, settings: Settings, month: dt.date, model_of: PartyModelOf
) -> PartyBacktest:
    """The backtest of T per person and household (paths.parties set): for each score month T−h with detail
    arrays, its subscribers grouped into the parties of that month, the members' forecasts for T summed
    against what their customers realized (a number change: the successor's facts count for the old id;
    chains over the parties table up to T), by party size; and the coverage of the party interval of the
    cumulative value with the edges of the release that scored the month (`model_of(version)`).

    Spark: the parties' chains (one small job per link, `parties.chain_members`), then one job — the union
    of the detail scores joined once with the parties of their months and once with the facts per
    customer, one groupBy per (level, party) for both levels (an explode), one aggregation by size."""
    cfg = settings.monitoring
    empty = PartyBacktest(pd.DataFrame(columns=PARTY_BACKTEST_COLUMNS),
                          pd.DataFrame(columns=PARTY_COVERAGE_COLUMNS))  # fmt: skip
    scored, models, _, months = detail_scores(spark, settings, month)
    if scored is None:
        return empty
    deepest = max(months_between(m, month) for m in months)
    window = [add_months(month, -k) for k in range(deepest - 1, -1, -1)]
    arrived = present_months(spark, settings.paths.facts, "facts", window)
    if month not in arrived:
        return empty
    inputs = read_party_inputs(spark, settings.paths, sorted(months), month, None, validate=False)
    notes = []
    if inputs is None:
        notes.append(
            f"parties: no rows for the score months {fmt(min(months))}..{fmt(max(months))}: every "
            "subscriber is its own person, in no household"
        )
    parties, chains = (inputs.parties, inputs.chains) if inputs is not None else (None, None)
    catalog = settings.models.catalog()
    formula = ValueFormula.from_catalog(catalog.subset(models), settings.costs)
    facts = read_table(spark, settings.paths.facts, "facts", arrived)
    forecasts = forecast_rows(scored, month, models=models, formula=formula, max_horizon=deepest)
    members = party_members(forecasts, parties, chains, models=models)
    realized = customer_realized(
        facts, chains, month, models=models, catalog=catalog, formula=formula, max_horizon=deepest
    )
    level = settings.scoring.interval_level
    versions = {m: scored_release(spark, settings.paths, m) for m in months}
    edges, why = party_edges(versions, month, model_of, level)
    table = aggregate_party_backtest(
        party_sums(members, realized, models=models), models=models, edges=edges, interval_level=level
    )
    return PartyBacktest(table, party_coverage_checks(table, cfg, why), notes)
