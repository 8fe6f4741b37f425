"""Monthly monitoring: input drift, prediction drift and backtests of earlier forecasts against the facts.

Three checks for a month T, each a table under `{paths.monitoring}/month=T/`:

- drift: the features of T against the reference sample stored with the release (PSI over quantile
  bins of the reference for numeric features; share of values never seen in training, and PSI over
  categories, for categorical ones);
- prediction_drift: the numeric score columns of T (CLTV, components, survival) against month T-1;
- backtest: every forecast made at T-k (k = 1..24, from the `<model>_h` detail arrays of the scores)
  for month T against the facts of T, per horizon, population (holdout / rest / all) and dimension
  (segment, region, tenure cohort), plus the cumulative value realized over T-k+1..T against its forecast.

The pure computations (PSI, bins, backtest rows and aggregation) take DataFrames / arrays and are
tested without a release; `monitor_month` does the I/O around them.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_app import tracking
from spark_app.catalog import ModelCatalog
from spark_app.cltv import ValueFormula
from spark_app.config import MonitoringConfig, Settings
from spark_app.contract import (
    ID,
    MONTH,
    catalog_features_spec,
    month_dirs,
    read_months,
    read_table,
)
from spark_app.errors import UserError
from spark_app.months import add_months, fmt, months_between
from spark_app.progress import StageTimer
from spark_app.storage import Storage

log = logging.getLogger(__name__)

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"
NULL_LABEL = "<null>"
VALUE = "value_cum"  # pseudo model id of the cumulative value rows of the backtest
SCORE_NON_METRIC = {ID, "score_month", "release_version", "holdout", MONTH}
PSI_FLOOR = 1e-4  # share given to an empty bin, so PSI stays finite


class MonitoringError(UserError):
    """Something monitoring needs is missing (a release's reference sample, a scores partition)."""


@dataclass(frozen=True)
class MonitorResult:
    """What `cltv monitor` found; `failed` makes the command exit 1."""

    month: dt.date
    failed: bool
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    release_version: str | None = None
    run_id: str | None = None
    output: str | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)


# ===================================================================== pure: PSI and bins
def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Distinct interior quantile edges of the reference: bin i holds edges[i-1] < x <= edges[i].

    A discrete feature yields fewer edges than `bins - 1` (one bin per value it takes).
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.array([], dtype=np.float64)
    qs = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    edges = np.unique(qs)
    # the top edge equal to the maximum would leave an empty last bin: drop it
    return edges[edges < x.max()] if edges.size and edges[-1] >= x.max() else edges


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (len(edges) + 1 value bins, then one bin for null/NaN)."""
    x = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(x)
    idx = np.searchsorted(edges, x[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)
    return np.append(counts, int(missing.sum()))


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index Σ (a − e)·ln(a / e) over bin shares; empty bins get `floor`."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def status_of(value: float, warn: float, fail: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return SKIPPED
    if value >= fail:
        return FAIL
    return WARN if value >= warn else OK


def worst(*statuses: str) -> str:
    order = [SKIPPED, OK, WARN, FAIL]
    return max(statuses, key=order.index)


# ===================================================================== Spark: counts in one pass
def _bucket(col: str, edges: np.ndarray):
    """Bin index like `bin_counts`: number of edges below x; null/NaN → len(edges) + 1."""
    c = F.col(col).cast("double")
    idx = sum((c > F.lit(float(e))).cast("int") for e in edges) if len(edges) else F.lit(0)
    return F.when(c.isNull() | F.isnan(c), F.lit(len(edges) + 1)).otherwise(idx)


def numeric_bin_counts(df: DataFrame, edges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Bin counts of many columns in one scan: each row's bin per column is computed once, the
    (column, bin) pairs are counted with a partial aggregation, so only a few hundred rows shuffle.

    (One sum per column × bin in a single `agg` reads nicer but repeats the bin expression per bin and
    grows past Spark's code-generation limit: about 5x slower on a 1M-row month, see the benchmark.)
    """
    if not edges:
        return {}
    cols = list(edges)
    binned = df.select(*[_bucket(c, edges[c]).alias(f"b{i}") for i, c in enumerate(cols)])
    pairs = F.explode(
        F.array(*[F.struct(F.lit(i).alias("f"), F.col(f"b{i}").alias("b")) for i in range(len(cols))])
    )
    rows = binned.select(pairs.alias("p")).select("p.f", "p.b").groupBy("f", "b").count().collect()
    out = {c: np.zeros(len(edges[c]) + 2, dtype=np.int64) for c in cols}
    for r in rows:
        out[cols[r["f"]]][r["b"]] = r["count"]
    return out


def numeric_bin_counts_single_agg(df: DataFrame, edges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The one-`agg` variant (a sum per column × bin), kept for the benchmark's comparison."""
    aggs = []
    for i, (col, e) in enumerate(edges.items()):
        b = _bucket(col, e)
        aggs += [F.sum((b == k).cast("long")).alias(f"c{i}_{k}") for k in range(len(e) + 2)]
    row = df.agg(*aggs).collect()[0]
    return {
        col: np.array([row[f"c{i}_{k}"] or 0 for k in range(len(e) + 2)], dtype=np.int64)
        for i, (col, e) in enumerate(edges.items())
    }


def category_counts(df: DataFrame, cols: list[str]) -> pd.DataFrame:
    """Rows per (feature, value) for categorical columns, in one job; nulls are `<null>`."""
    if not cols:
        return pd.DataFrame(columns=["feature", "value", "n"])
    pairs = F.explode(
        F.array(
            *[
                F.struct(
                    F.lit(c).alias("feature"),
                    F.coalesce(F.col(c).cast("string"), F.lit(NULL_LABEL)).alias("value"),
                )
                for c in cols
            ]
        )
    ).alias("p")
    counted = df.select(pairs).select("p.feature", "p.value").groupBy("feature", "value").count()
    return counted.toPandas().rename(columns={"count": "n"})


def _numeric_row(
    feature: str, ref: np.ndarray, edges: np.ndarray, cur_counts: np.ndarray, cfg: MonitoringConfig
) -> dict[str, Any]:
    ref_counts = bin_counts(ref, edges)
    value = psi(ref_counts, cur_counts)
    return {
        "feature": feature,
        "kind": "numeric",
        "psi": value,
        "unseen_share": float("nan"),
        "unseen_values": "",
        "reference_rows": int(ref_counts.sum()),
        "current_rows": int(cur_counts.sum()),
        "edges": [float(e) for e in edges],
        "reference_share": (ref_counts / max(ref_counts.sum(), 1)).tolist(),
        "current_share": (cur_counts / max(cur_counts.sum(), 1)).tolist(),
        "status": status_of(value, cfg.psi_warn, cfg.psi_fail),
    }


def _categorical_row(
    feature: str, ref: pd.Series, cur: pd.DataFrame, cfg: MonitoringConfig
) -> dict[str, Any]:
    ref_counts = ref.astype("string").fillna(NULL_LABEL).value_counts()
    cur_counts = cur.set_index("value")["n"].astype("int64") if len(cur) else pd.Series(dtype="int64")
    known = list(ref_counts.index)
    unseen = cur_counts[~cur_counts.index.isin(known)].sort_values(ascending=False)
    total = int(cur_counts.sum())
    unseen_share = float(unseen.sum() / total) if total else float("nan")
    e = np.append(ref_counts.reindex(known).to_numpy(dtype=np.int64), 0)
    a = np.append(cur_counts.reindex(known).fillna(0).to_numpy(dtype=np.int64), int(unseen.sum()))
    value = psi(e, a)
    status = worst(
        status_of(unseen_share, cfg.unseen_warn, cfg.unseen_fail),
        status_of(value, cfg.psi_warn, cfg.psi_fail),
    )
    return {
        "feature": feature,
        "kind": "categorical",
        "psi": value,
        "unseen_share": unseen_share,
        "unseen_values": ", ".join(f"{v} ({n})" for v, n in unseen.head(5).items()),
        "reference_rows": int(e.sum()),
        "current_rows": total,
        "edges": [],
        "reference_share": (e / max(e.sum(), 1)).tolist(),
        "current_share": (a / max(a.sum(), 1)).tolist(),
        "status": status,
    }


def feature_drift(
    reference: pd.DataFrame,
    current: DataFrame,
    *,
    numeric: list[str],
    categorical: list[str],
    cfg: MonitoringConfig,
) -> pd.DataFrame:
    """One row per feature: PSI (and unseen share for categoricals) of `current` against `reference`.

    Quantile bins come from the reference, so an unchanged distribution gives about equal shares.
    """
    missing = [c for c in [*numeric, *categorical] if c not in current.columns]
    if missing:
        raise MonitoringError(f"features: columns {missing} of the release's reference are missing")
    edges = {
        c: quantile_edges(reference[c].to_numpy(dtype=np.float64, na_value=np.nan), cfg.psi_bins)
        for c in numeric
    }
    counts = numeric_bin_counts(current, edges)
    cats = category_counts(current, categorical)
    rows = [
        _numeric_row(c, reference[c].to_numpy(dtype=np.float64, na_value=np.nan), edges[c], counts[c], cfg)
        for c in numeric
    ]
    rows += [_categorical_row(c, reference[c], cats[cats["feature"] == c], cfg) for c in categorical]
    return pd.DataFrame(rows)


def prediction_drift(
    previous: DataFrame, current: DataFrame, *, columns: list[str], cfg: MonitoringConfig
) -> pd.DataFrame:
    """Score distributions of this month against the previous month: PSI on the previous month's deciles,
    and quantile shifts (p05..p95) and means, so a reviewer sees where the distribution moved."""
    probs = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    deciles = [i / max(cfg.psi_bins, 2) for i in range(1, max(cfg.psi_bins, 2))]
    grid = sorted(set(probs) | set(deciles))
    if not columns:
        return pd.DataFrame()
    prev_q = previous.approxQuantile(columns, grid, 1e-3)
    cur_q = current.approxQuantile(columns, probs, 1e-3)
    if any(len(q) == 0 for q in [*prev_q, *cur_q]):  # a month with no rows (or only nulls)
        log.warning("prediction drift skipped: a score month has no values in %s", columns)
        return pd.DataFrame()
    edges = {}
    for c, qs in zip(columns, prev_q, strict=True):
        e = np.unique(np.array([q for p, q in zip(grid, qs, strict=True) if p in deciles], dtype=np.float64))
        edges[c] = e
    prev_counts = numeric_bin_counts(previous, edges)
    cur_counts = numeric_bin_counts(current, edges)
    means = {
        "previous": previous.agg(*[F.avg(c).alias(c) for c in columns]).collect()[0].asDict(),
        "current": current.agg(*[F.avg(c).alias(c) for c in columns]).collect()[0].asDict(),
    }
    rows = []
    for i, c in enumerate(columns):
        value = psi(prev_counts[c], cur_counts[c])
        row: dict[str, Any] = {
            "column": c,
            "psi": value,
            "previous_mean": _float(means["previous"][c]),
            "current_mean": _float(means["current"][c]),
            "previous_rows": int(prev_counts[c].sum()),
            "current_rows": int(cur_counts[c].sum()),
        }
        prev_by_p = dict(zip(grid, prev_q[i], strict=True))
        for p, q in zip(probs, cur_q[i], strict=True):
            tag = f"p{round(p * 100):02d}"
            row[f"previous_{tag}"] = _float(prev_by_p.get(p))
            row[f"current_{tag}"] = _float(q)
        row["status"] = status_of(value, cfg.prediction_psi_warn, cfg.prediction_psi_fail)
        rows.append(row)
    return pd.DataFrame(rows)


def _float(x: Any) -> float:
    return float("nan") if x is None else float(x)


# ===================================================================== pure: backtest
def detail_models(columns: list[str], catalog: ModelCatalog) -> list[str]:
    """The catalog's models whose monthly forecasts (`<model>_h`) a scores table carries, in its order."""
    return [m for m in catalog.ids if f"{m}_h" in columns]


def forecast_rows(
    scores: DataFrame, month: dt.date, *, models: list[str], formula: ValueFormula, max_horizon: int
) -> DataFrame:
    """Forecasts for `month` made at earlier score months: element h of `<model>_h` of month T−h.

    Adds `horizon`, `f_<model>` and `f_value_cum` (forecast value of months T−h+1..T, undiscounted, by the
    value formula CLTV uses).
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
    return df.select(
        *[c for c in df.columns if not c.endswith("_h")],
        *[
            F.coalesce(F.element_at(F.col(f"{m}_h"), F.col("horizon")), F.lit(0.0))
            .cast("double")
            .alias(f"f_{m}")
            for m in models
        ],
        cum.alias(f"f_{VALUE}"),
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
    return F.coalesce(label, F.lit(NULL_LABEL))


def backtest_rows(forecasts: DataFrame, realized: DataFrame, *, models: list[str]) -> DataFrame:
    """Forecast beside realization per (subscriber, score month); no facts at T → 0 / out of base."""
    joined = forecasts.join(realized, ID, "left")
    return joined.select(
        *[c for c in forecasts.columns],
        *[F.coalesce(F.col(f"a_{m}"), F.lit(0.0)).alias(f"a_{m}") for m in models],
        F.coalesce(F.element_at(F.col("a_value_by_k"), F.col("horizon")), F.lit(0.0)).alias(f"a_{VALUE}"),
    )


def aggregate_backtest(rows: DataFrame, *, models: list[str], dimensions: list[str]) -> pd.DataFrame:
    """Long table: one row per (score month, horizon, population, dimension, value, model) with sums,
    WAPE, bias and — for the survival models — predicted vs realized share in base.

    Populations: `holdout` (never targeted by campaigns, so unbiased by retention actions), `rest`, `all`.
    Dimensions: `all` plus every column in `dimensions` (e.g. segment, region, tenure_cohort).
    """
    targets = [*models, VALUE]
    population = F.explode(F.array(F.lit("all"), F.when(F.col("holdout"), "holdout").otherwise("rest")))
    dims = F.explode(
        F.array(
            F.struct(F.lit("all").alias("dimension"), F.lit("all").alias("value")),
            *[
                F.struct(
                    F.lit(d).alias("dimension"),
                    F.coalesce(F.col(d).cast("string"), F.lit(NULL_LABEL)).alias("value"),
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
]


def _long_backtest(wide: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    parts = []
    base = ["score_month", "release_version", "horizon", "population", "dimension", "value", "n"]
    for t in targets:
        part = wide[base].copy()
        part["model_id"] = t
        for stat in ("forecast_sum", "actual_sum", "actual_abs_sum", "abs_error_sum", "sq_error_sum"):
            part[stat] = wide[f"{t}__{stat}"].astype("float64")
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
    out["horizon"] = out["horizon"].astype("int32")
    out["n"] = out["n"].astype("int64")
    return out[BACKTEST_COLUMNS].sort_values(
        ["model_id", "population", "dimension", "value", "horizon"], ignore_index=True
    )


# ===================================================================== I/O
def month_dir(settings: Settings, month: dt.date) -> str:
    return f"{settings.paths.monitoring.rstrip('/')}/month={month:%Y-%m-%d}"


def score_dir(settings: Settings, month: dt.date) -> str:
    return f"{settings.paths.scores.rstrip('/')}/score_month={month:%Y-%m-%d}"


def read_scores(spark: SparkSession, settings: Settings, month: dt.date) -> DataFrame | None:
    """Scores of one month (None when the partition is absent or incomplete); `score_month` from the path."""
    storage = Storage(spark)
    path = score_dir(settings, month)
    if not storage.has_success_marker(path):
        return None
    df = spark.read.parquet(path)
    return df.withColumn("score_month", F.lit(month))


def read_month_features(spark: SparkSession, settings: Settings, month: dt.date) -> DataFrame:
    """The features of `month`, every file of it checked against the catalog's contract."""
    spec = catalog_features_spec(settings.models.catalog())
    (features,) = read_months(
        spark, [(settings.paths.features, spec, [month])], context=f"monitor {fmt(month)}"
    )
    return features


def present_months(spark: SparkSession, path: str, table: str, months: list[dt.date]) -> list[dt.date]:
    """Those of `months` whose partition directory exists."""
    found, _ = month_dirs(Storage(spark), path, table)
    return [m for m in months if m in found]


def read_reference(release: Any) -> pd.DataFrame:
    """The drift reference stored with a release (`reference.parquet`, a sample of training features)."""
    blob = release.files.get("reference.parquet") if hasattr(release, "files") else None
    if blob is None:
        raise MonitoringError(
            f"release {getattr(release, 'version', '?')}: no reference.parquet in the bundle"
        )
    return pd.read_parquet(io.BytesIO(blob))


def drift_columns(reference: pd.DataFrame, settings: Settings) -> tuple[list[str], list[str]]:
    """Input features of the enabled models that the reference holds: (numeric, categorical)."""
    wanted = settings.models.catalog().input_columns()
    present = [c for c in wanted if c in reference.columns]
    absent = sorted(set(wanted) - set(present))
    if absent:
        log.warning("reference sample lacks features %s: no drift check for them", absent)
    categorical = [c for c in present if c in settings.models.categorical]
    numeric = [c for c in present if c not in categorical]
    return numeric, categorical


def prediction_columns(scores: DataFrame, cfg: MonitoringConfig) -> list[str]:
    if cfg.prediction_columns:
        return [c for c in cfg.prediction_columns if c in scores.columns]
    numeric = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
    return [
        f.name
        for f in scores.schema.fields
        if isinstance(f.dataType, numeric) and f.name not in SCORE_NON_METRIC
    ]


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
        scores = read_scores(spark, settings, m)
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
    cols = [ID, "score_month", "release_version", "holdout", *[f"{x}_h" for x in models]]
    union = None
    for p in parts:
        sel = p.select(*[F.col(c) if c in p.columns else F.lit(None).alias(c) for c in cols])
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


def _write_tables(spark: SparkSession, target: str, tables: dict[str, pd.DataFrame], summary: dict) -> None:
    """All of the month's tables go to one staging directory that is swapped in whole."""
    storage = Storage(spark)
    with storage.staged(target) as staging:
        for name, pdf in tables.items():
            df = _to_spark(spark, pdf)
            if df is not None:
                df.coalesce(1).write.mode("overwrite").parquet(f"{staging}/{name}")
        storage.write_json(f"{staging}/summary.json", summary)


def _to_spark(spark: SparkSession, pdf: pd.DataFrame) -> DataFrame | None:
    if pdf is None or pdf.empty:
        return None
    clean = pdf.copy()
    for c in clean.columns:
        if clean[c].dtype == object and clean[c].map(lambda v: isinstance(v, (dt.date, dt.datetime))).any():
            clean[c] = pd.to_datetime(clean[c]).dt.date
    return spark.createDataFrame(clean)


def read_monitoring(spark: SparkSession, settings: Settings, month: dt.date) -> dict[str, Any]:
    """The tables and summary `monitor_month` wrote for `month` (pandas; empty tables when skipped)."""
    storage = Storage(spark)
    target = month_dir(settings, month)
    if not storage.has_success_marker(target):
        raise MonitoringError(
            f"monitoring: no output for {fmt(month)} under {target}; run `cltv monitor` first"
        )
    out: dict[str, Any] = {"summary": storage.read_json(f"{target}/summary.json")}
    for name in ("drift", "prediction_drift", "backtest"):
        path = f"{target}/{name}"
        out[name] = spark.read.parquet(path).toPandas() if storage.exists(path) else pd.DataFrame()
    return out


# ===================================================================== MLflow
def _metrics(
    drift: pd.DataFrame, pred: pd.DataFrame, backtest: pd.DataFrame, cfg: MonitoringConfig
) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in drift.itertuples():
        if np.isfinite(r.psi):
            out[f"drift.psi.{r.feature}"] = float(r.psi)
        if r.kind == "categorical" and np.isfinite(r.unseen_share):
            out[f"drift.unseen.{r.feature}"] = float(r.unseen_share)
    for r in pred.itertuples():
        if np.isfinite(r.psi):
            out[f"prediction.psi.{r.column}"] = float(r.psi)
        out[f"prediction.mean.{r.column}"] = float(r.current_mean)
    if not backtest.empty:
        top = backtest[(backtest["dimension"] == "all") & backtest["horizon"].isin(cfg.metric_horizons)]
        for r in top.itertuples():
            key = f"backtest.{r.population}.h{r.horizon:02d}.{r.model_id}"
            if r.model_id in ("paid", "active"):
                out[f"{key}.predicted_share"] = float(r.forecast_mean)
                out[f"{key}.realized_share"] = float(r.actual_mean)
            elif np.isfinite(r.wape):
                out[f"{key}.wape"] = float(r.wape)
                out[f"{key}.bias"] = float(r.bias)
    return {k: v for k, v in out.items() if np.isfinite(v)}


@tracking.guarded
def log_monitoring_run(
    settings: Settings, month: dt.date, result_tables: dict[str, pd.DataFrame], summary: dict[str, Any]
) -> str:
    """One MLflow run per monitored month in the monitoring experiment: metrics, plots, the tables."""
    from spark_app import report

    cfg = settings.mlflow
    mlflow = tracking.client(cfg)
    exp_id = tracking.experiment_id(mlflow, cfg.monitoring_experiment, cfg.artifact_location)
    tags = {
        "month": fmt(month),
        "status": summary["status"],
        "release_version": str(summary["release_version"]),
    }
    run_id = mlflow.create_run(exp_id, run_name=f"monitor {fmt(month)}", tags=tags).info.run_id
    try:
        params = {
            "month": fmt(month),
            "release_version": summary["release_version"],
            "psi_warn": settings.monitoring.psi_warn,
            "psi_fail": settings.monitoring.psi_fail,
            "unseen_warn": settings.monitoring.unseen_warn,
            "unseen_fail": settings.monitoring.unseen_fail,
            "output": summary["output"],
        }
        metrics = _metrics(
            result_tables["drift"],
            result_tables["prediction_drift"],
            result_tables["backtest"],
            settings.monitoring,
        )
        tracking.log_values(mlflow, run_id, params=params, metrics=metrics)
        mlflow.log_dict(run_id, summary, "monitoring/summary.json")
        for name, pdf in result_tables.items():
            if not pdf.empty:
                mlflow.log_text(run_id, pdf.to_csv(index=False), f"monitoring/{name}.csv")
        figures = report.monitoring_figures(
            result_tables,
            settings.models.catalog(),
            settings.monitoring.psi_warn,
            settings.monitoring.psi_fail,
        )
        for name, fig in figures.items():
            mlflow.log_figure(run_id, fig, f"plots/{name}.png")
            report.close(fig)
    except BaseException:
        mlflow.set_terminated(run_id, status="FAILED")
        raise
    mlflow.set_terminated(run_id)
    return run_id


# ===================================================================== the job
def _release_version_of(scores: DataFrame | None) -> str | None:
    if scores is None:
        return None
    row = scores.select("release_version").where(F.col("release_version").isNotNull()).limit(1).collect()
    return str(row[0][0]) if row else None


def monitor_month(
    spark: SparkSession, settings: Settings, month: dt.date, *, release: Any | None = None
) -> MonitorResult:
    """Drift, prediction drift and backtest for `month`; tables under `paths.monitoring`, a run in
    MLflow. `failed` is True when any feature or score column crosses a fail threshold.

    The release (whose reference sample is the drift baseline) is the one that scored `month`, else the
    champion; `release` passes a loaded one instead (the demo pipeline has it at hand already).
    """
    cfg = settings.monitoring
    timer = StageTimer()
    warnings: list[str] = []
    failures: list[str] = []
    current_scores = read_scores(spark, settings, month)
    release_ref = _release_version_of(current_scores) or "champion"

    with timer.stage("feature drift", spark):
        if release is None:
            from spark_app.registry import load_release

            release = load_release(settings, release_ref)
        reference = read_reference(release)
        numeric, categorical = drift_columns(reference, settings)
        features = read_month_features(spark, settings, month)
        if features.limit(1).count() == 0:
            raise MonitoringError(f"features: no rows for {fmt(month)} under {settings.paths.features}")
        drift = feature_drift(reference, features, numeric=numeric, categorical=categorical, cfg=cfg)

    with timer.stage("prediction drift", spark):
        previous_scores = read_scores(spark, settings, add_months(month, -1))
        if current_scores is None or previous_scores is None:
            which = fmt(month) if current_scores is None else fmt(add_months(month, -1))
            warnings.append(f"prediction drift skipped: no scores for {which}")
            pred = pd.DataFrame()
        else:
            cols = [c for c in prediction_columns(current_scores, cfg) if c in previous_scores.columns]
            pred = prediction_drift(previous_scores, current_scores, columns=cols, cfg=cfg)

    with timer.stage("backtest", spark):
        backtest, notes = run_backtest(spark, settings, month)
        warnings += notes

    for r in drift.itertuples():
        detail = f"psi {r.psi:.3f}" + (
            f", unseen {r.unseen_share:.2%} [{r.unseen_values}]" if r.kind == "categorical" else ""
        )
        if r.status == FAIL:
            failures.append(f"feature {r.feature}: {detail}")
        elif r.status == WARN:
            warnings.append(f"feature {r.feature}: {detail}")
    for r in pred.itertuples():
        if r.status in (WARN, FAIL):
            (failures if r.status == FAIL else warnings).append(f"score column {r.column}: psi {r.psi:.3f}")

    status = FAIL if failures else WARN if warnings else OK
    target = month_dir(settings, month)
    summary = {
        "month": fmt(month),
        "status": status,
        "release_version": str(getattr(release, "version", release_ref)),
        "release_run_id": getattr(release, "run_id", None),
        "failures": failures,
        "warnings": warnings,
        "output": target,
        "thresholds": cfg.model_dump(mode="json"),
        "backtest_score_months": sorted({str(m) for m in backtest.get("score_month", [])}),
    }
    tables = {"drift": drift, "prediction_drift": pred, "backtest": backtest}
    with timer.stage("log to MLflow"):
        run_id = log_monitoring_run(settings, month, tables, summary)
    summary["run_id"] = run_id
    with timer.stage("write tables", spark):
        _write_tables(spark, target, tables, summary)
    for msg in failures:
        log.error("FAIL %s", msg)
    for msg in warnings:
        log.warning("WARN %s", msg)
    log.info(
        "monitor %s: %s (%d failures, %d warnings); run %s; %s",
        fmt(month),
        status,
        len(failures),
        len(warnings),
        run_id,
        timer.summary(),
    )
    return MonitorResult(
        month=month,
        failed=bool(failures),
        warnings=warnings,
        failures=failures,
        release_version=summary["release_version"],
        run_id=run_id,
        output=target,
        tables=tables,
    )
