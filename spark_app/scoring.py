"""The monthly scoring job: every subscriber of month T, 24 horizons × the release's models, 60-month CLTV.

The release is loaded from the MLflow registry on the driver and its bundle bytes are broadcast once; each
Python worker rebuilds the `Learner` once per release (module-level cache) and scores Arrow batches of the
month's features with `mapInPandas`: a subscriber's features cross into Python once, the horizon rows are
built in numpy, and CLTV is computed in the same batch (spark_app.cltv). The month's partition is written
to a staging directory and swapped in whole. docs/scoring.md describes the output and the method.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_app import tracking
from spark_app.catalog import CALENDAR_MONTH, HORIZON, ModelCatalog
from spark_app.cltv import (
    SURVIVAL_POINTS,
    Extrapolation,
    ValueFormula,
    cltv_columns,
    forecast_days,
    target_calendar_months,
)
from spark_app.config import Settings
from spark_app.contract import ID, InputContractError, features_spec, read_months, validate
from spark_app.errors import UserError
from spark_app.models import RELEASE_JSON, Learner
from spark_app.months import fmt, month_index
from spark_app.progress import StageTimer
from spark_app.storage import Storage

log = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
FLOAT32_MAX = float(np.finfo(np.float32).max)
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


class ScoringError(UserError):
    """The release cannot score this month (e.g. its horizons are not 1..H); the message says why."""


@dataclass(frozen=True)
class ScoreSummary:
    """What one scoring run did: the closing log line, the MLflow run and `cltv score`'s result."""

    month: dt.date
    release_version: int
    path: str
    rows: int
    holdout_rows: int
    cltv_mean: float
    cltv_quantiles: dict[str, float]
    missing_values: dict[str, int] = field(default_factory=dict)  # nulls per input column
    non_finite_values: dict[str, int] = field(default_factory=dict)  # NaN, ±inf, beyond float32
    unseen_categorical: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    detail: bool = False


@dataclass(frozen=True)
class BatchPlan:
    """All a Python worker needs to score a batch; small and picklable (the bundle goes by broadcast)."""

    release_key: str  # version + digest of the bundle: workers are reused across jobs and releases
    release_version: int
    models: tuple[str, ...]  # model ids of the release, survival models first
    amounts: frozenset[str]  # the regressors among them (daily units → monthly)
    input_cols: tuple[str, ...]  # feature-table columns the models read
    categorical: tuple[str, ...]
    horizons: int
    score_month: dt.date
    formula: ValueFormula
    extrapolation: Extrapolation
    detail: bool
    threads: int = 1  # CatBoost threads per Python worker: the cores of one Spark task

    @property
    def score_month_index(self) -> int:
        return month_index(self.score_month)

    @property
    def total_months(self) -> int:
        return max(self.extrapolation.months, self.horizons)


# ---------------------------------------------------------------- release → plan
def release_catalog(manifest: dict[str, Any]) -> ModelCatalog:
    """The models of a release as its release.json declares them (survival models first)."""
    if not isinstance(manifest.get("models"), dict) or not manifest["models"]:
        raise ScoringError("release manifest has no models")
    try:
        return ModelCatalog.from_json(manifest)
    except (KeyError, TypeError) as exc:
        raise ScoringError(
            f"release manifest: a model entry lacks {exc} (a release of an older format?)"
        ) from None


def release_horizons(manifest: dict[str, Any]) -> int:
    """H of a release whose horizons are 1..H (the only shape the 24-row-per-subscriber layout supports)."""
    horizons = manifest.get("horizons")
    if horizons is None:
        horizons = manifest.get("config", {}).get("dataset", {}).get("horizons")
    if not horizons:
        raise ScoringError("release manifest: no horizons")
    horizons = sorted(int(h) for h in horizons)
    if horizons != list(range(1, len(horizons) + 1)):
        raise ScoringError(f"release horizons must be 1..H without gaps, got {horizons}")
    return len(horizons)


def bundle_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        h.update(hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def make_plan(
    settings: Settings, manifest: dict[str, Any], version: int, digest: str, month: dt.date, detail: bool
) -> BatchPlan:
    catalog = release_catalog(manifest)
    model_inputs = [c for e in catalog for c in e.feature_cols if c in catalog.input_columns()]
    cols = tuple(dict.fromkeys(model_inputs))
    return BatchPlan(
        release_key=f"{version}:{digest}",
        release_version=int(version),
        models=catalog.ids,
        amounts=frozenset(e.model_id for e in catalog.amounts),
        input_cols=cols,
        categorical=tuple(c for c in cols if c in catalog.categorical),
        horizons=release_horizons(manifest),
        score_month=month,
        formula=ValueFormula.from_catalog(catalog, settings.costs),
        extrapolation=Extrapolation(
            months=settings.scoring.extrapolation_months,
            trend_floor=settings.scoring.trend_floor,
            trend_cap=settings.scoring.trend_cap,
        ),
        detail=detail,
    )


def output_schema(plan: BatchPlan) -> T.StructType:
    """Columns of a month's scores, in order (the holdout flag is added by Spark after the batches)."""
    total = plan.total_months
    fields = [
        T.StructField(ID, T.StringType(), False),
        T.StructField("score_month", T.DateType(), False),
        T.StructField("release_version", T.IntegerType(), False),
        T.StructField("cltv", T.DoubleType()),
        T.StructField(f"cltv_{min(24, total)}m", T.DoubleType()),
        *[T.StructField(f"{c}_{total}m", T.DoubleType()) for c in plan.formula.components],
        *[
            T.StructField(f"p_{base}_{p}m", T.DoubleType())
            for base in plan.formula.survival
            for p in SURVIVAL_POINTS
            if p <= total
        ],
    ]
    if plan.detail:
        fields += [T.StructField(f"{m}_h", T.ArrayType(T.DoubleType(), False)) for m in plan.models]
    return T.StructType(fields)


# ---------------------------------------------------------------- the batch (runs in Python workers)
_LEARNERS: dict[str, Learner] = {}


def cached_learner(plan: BatchPlan, bundle: Any) -> Learner:
    """The worker's Learner for a release, built from the broadcast bundle on first use only."""
    learner = _LEARNERS.get(plan.release_key)
    if learner is None:
        files = bundle.value if hasattr(bundle, "value") else bundle
        _LEARNERS.clear()  # one release at a time: a reused worker does not pile up old models
        learner = Learner.from_bundle_bytes(files, thread_count=plan.threads)
        _LEARNERS[plan.release_key] = learner
        log.info("release %s loaded in worker", plan.release_key)
    return learner


def model_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """What workers need of a bundle: release.json and the .cbm files (not the drift reference sample)."""
    return {k: v for k, v in files.items() if k == RELEASE_JSON or k.endswith(".cbm")}


def horizon_frame(features: pd.DataFrame, plan: BatchPlan) -> pd.DataFrame:
    """n subscribers → n×H rows (subscriber-major), with `horizon` and `target_calendar_month` added.

    Numerics are converted to float32 (what CatBoost reads) and categoricals to codes before the rows
    are repeated, so the H-fold frame costs integer takes, not H copies of Python strings.
    """
    n, horizons = len(features), plan.horizons
    rows = np.repeat(np.arange(n), horizons)
    frame: dict[str, Any] = {}
    for c in plan.input_cols:
        if c in plan.categorical:
            cat = pd.Categorical(features[c])
            frame[c] = pd.Categorical.from_codes(cat.codes[rows], categories=cat.categories)
        else:
            with np.errstate(over="ignore"):
                values = pd.to_numeric(features[c], errors="raise").to_numpy(
                    dtype=np.float32, na_value=np.nan
                )
            values[~np.isfinite(values)] = (
                np.nan
            )  # NaN, ±inf, beyond float32: missing (counted on the driver)
            frame[c] = values[rows]
    frame[HORIZON] = np.tile(np.arange(1, horizons + 1, dtype=np.int64), n)
    frame[CALENDAR_MONTH] = np.tile(target_calendar_months(plan.score_month_index, horizons), n)
    return pd.DataFrame(frame)


def monthly_forecasts(predictions: dict[str, np.ndarray], n: int, plan: BatchPlan) -> dict[str, np.ndarray]:
    """Learner output (n×H flat) → (n, H) per model; amounts from daily to monthly units."""
    days = forecast_days(plan.score_month_index, plan.horizons)[None, :]
    out = {}
    for model_id in plan.models:
        values = np.asarray(predictions[model_id], dtype=np.float64).reshape(n, plan.horizons)
        out[model_id] = values * days if model_id in plan.amounts else values
    return out


def score_frame(features: pd.DataFrame, learner: Learner, plan: BatchPlan) -> pd.DataFrame:
    """Scores of one batch of subscribers (one row each), from their features of the score month."""
    n = len(features)
    predictions = learner.predict(horizon_frame(features, plan))
    forecasts = monthly_forecasts(predictions, n, plan)
    cols = cltv_columns(forecasts, plan.score_month_index, plan.formula, plan.extrapolation)
    out: dict[str, Any] = {
        ID: features[ID].to_numpy(),
        "score_month": np.full(n, plan.score_month),
        "release_version": np.full(n, plan.release_version, dtype=np.int32),
    }
    for name in output_schema(plan).names[3:]:
        if name.endswith("_h"):
            out[name] = list(forecasts[name[:-2]])
        else:
            out[name] = cols.get(name, np.full(n, np.nan))
    return pd.DataFrame(out)


def score_batches(batches: Iterator[pd.DataFrame], plan: BatchPlan, bundle: Any) -> Iterator[pd.DataFrame]:
    """mapInPandas body: batches stream through, so a task's memory does not grow with the month."""
    learner = cached_learner(plan, bundle)
    for features in batches:
        if len(features):
            yield score_frame(features, learner, plan)


# ---------------------------------------------------------------- Spark side
def holdout_flag(salt: str, share: float) -> Column:
    """Hash-chosen control group: the same subscribers every month for a given salt and share."""
    bucket = F.pmod(F.xxhash64(F.col(ID), F.lit(salt)), F.lit(1_000_000))
    return bucket < F.lit(round(share * 1_000_000))


def with_scores(
    features: DataFrame, *, plan: BatchPlan, bundle: Any, holdout_salt: str, holdout_share: float
) -> DataFrame:
    """Features of the month (one row per subscriber) → scores of the month."""

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return score_batches(batches, plan, bundle)

    return features.mapInPandas(body, output_schema(plan)).withColumn(
        "holdout", holdout_flag(holdout_salt, holdout_share)
    )


def read_month_features(
    spark: SparkSession, settings: Settings, month: dt.date, plan: BatchPlan
) -> DataFrame:
    """The month's features, checked against the contract for the columns the release reads: every file
    of the month (contract.read_months), then null ids and duplicate keys."""
    numeric = [c for c in plan.input_cols if c not in plan.categorical]
    spec = features_spec(numeric, plan.categorical)
    context = f"scoring {fmt(month)}, release v{plan.release_version}"
    (features,) = read_months(spark, [(settings.paths.features, spec, [month])], context=context)
    validate(features, spec, [month], context=context)
    return features.select(ID, *plan.input_cols)


def input_quality(
    features: DataFrame, plan: BatchPlan, seen: dict[str, list[str]]
) -> dict[str, dict[str, int]]:
    """Missing values, numbers that are not finite for the models (NaN, ±inf, beyond float32, which
    CatBoost reads) and categorical values the release never saw: scored anyway, but counted."""
    numeric = [c for c in plan.input_cols if c not in plan.categorical]
    aggs = [F.sum(F.col(c).isNull().cast("long")).alias(f"missing:{c}") for c in numeric]
    aggs += [
        F.sum((F.isnan(F.col(c)) | (F.abs(F.col(c)) > F.lit(FLOAT32_MAX))).cast("long")).alias(
            f"non_finite:{c}"
        )
        for c in numeric
    ]
    aggs += [F.sum(F.col(c).isNull().cast("long")).alias(f"missing:{c}") for c in plan.categorical]
    for c, values in seen.items():
        if c in plan.categorical:
            unseen = ~F.col(c).isin(list(values)) & F.col(c).isNotNull()
            aggs.append(F.sum(unseen.cast("long")).alias(f"unseen:{c}"))
    row = features.agg(*aggs).collect()[0].asDict()
    counts: dict[str, dict[str, int]] = {"missing": {}, "non_finite": {}, "unseen": {}}
    for key, value in row.items():
        kind, column = key.split(":", 1)
        if value:
            counts[kind][column] = int(value)
    return counts


def seen_categories(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Categorical values the release was trained on, when its manifest records them."""
    for key in ("categories", "categorical_values", "seen_categories"):
        found = manifest.get(key)
        if isinstance(found, dict):
            return {str(c): [str(v) for v in values] for c, values in found.items()}
    return {}


@contextlib.contextmanager
def arrow_batch_rows(spark: SparkSession, rows: int) -> Iterator[None]:
    """Cap the rows of an Arrow batch for the duration of the job (restored afterwards)."""
    previous = spark.conf.get(ARROW_BATCH_CONF, None)
    spark.conf.set(ARROW_BATCH_CONF, str(rows))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(ARROW_BATCH_CONF)
        else:
            spark.conf.set(ARROW_BATCH_CONF, previous)


def scoring_parallelism(spark: SparkSession, features: DataFrame) -> DataFrame:
    """At least two tasks per core, so the CPU-bound batches keep every core busy to the end."""
    want = 2 * spark.sparkContext.defaultParallelism
    if features.rdd.getNumPartitions() < want:
        return features.repartition(want, ID)
    return features


def score_dir(settings: Settings, month: dt.date) -> str:
    return f"{settings.paths.scores.rstrip('/')}/score_month={month:%Y-%m-%d}"


def summarize(spark: SparkSession, target: str) -> dict[str, Any]:
    """Rows, holdout size and the CLTV distribution of the written partition."""
    scores = spark.read.parquet(target).select("cltv", "holdout")
    row = scores.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("holdout").cast("long")).alias("holdout"),
        F.mean("cltv").alias("mean"),
        F.percentile_approx("cltv", list(QUANTILES), 10_000).alias("q"),
    ).collect()[0]
    quantiles = {f"p{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, row["q"] or [], strict=False)}
    return {
        "rows": int(row["rows"]),
        "holdout": int(row["holdout"] or 0),
        "mean": float(row["mean"]) if row["mean"] is not None else float("nan"),
        "quantiles": quantiles,
    }


@tracking.guarded
def log_score_run(settings: Settings, summary: ScoreSummary) -> None:
    """Record the run in the MLflow experiment (params, counts, CLTV quantiles, stage times)."""
    cfg = settings.mlflow
    mlflow = tracking.client(cfg)
    experiment = tracking.experiment_id(mlflow, cfg.experiment, cfg.artifact_location)
    run = mlflow.create_run(
        experiment,
        run_name=f"score {fmt(summary.month)}",
        tags={"cltv.job": "score", "cltv.score_month": fmt(summary.month)},
    )
    params = {
        "score_month": fmt(summary.month),
        "release_version": summary.release_version,
        "detail": summary.detail,
        "path": summary.path,
    }
    metrics = {"rows": summary.rows, "holdout_rows": summary.holdout_rows, "cltv_mean": summary.cltv_mean}
    metrics.update({f"cltv_{k}": v for k, v in summary.cltv_quantiles.items()})
    metrics.update({f"missing_{k}": v for k, v in summary.missing_values.items()})
    metrics.update({f"non_finite_{k}": v for k, v in summary.non_finite_values.items()})
    metrics.update({f"unseen_{k}": v for k, v in summary.unseen_categorical.items()})
    metrics.update({f"seconds_{k.replace(' ', '_')}": v for k, v in summary.seconds.items()})
    tracking.log_values(mlflow, run.info.run_id, params=params, metrics=metrics)
    mlflow.set_terminated(run.info.run_id)


def score_month(
    spark: SparkSession,
    settings: Settings,
    month: dt.date,
    release: str = "champion",
    detail: bool = False,
) -> ScoreSummary:
    """Score every subscriber in the features of `month` with a registered release; write and summarize."""
    from spark_app.registry import load_release

    timer = StageTimer()
    storage = Storage(spark)
    target = score_dir(settings, month)
    # one run writes a month: taken first, so a second run fails fast and what a killed run of the month
    # left is recovered before anything else
    with storage.lock(target) as lease:
        with timer.stage("load release"):
            loaded = load_release(settings, str(release))
            files = model_files(dict(loaded.files))
            plan = make_plan(settings, loaded.manifest, loaded.version, bundle_digest(files), month, detail)
            plan = replace(plan, threads=int(spark.conf.get("spark.task.cpus", "1")))
            log.info(
                "scoring %s with release v%s (%s), models %s, %d horizons → %d months%s",
                fmt(month), plan.release_version, release, ",".join(plan.models), plan.horizons,
                plan.total_months, ", with detail" if detail else "",
            )  # fmt: skip
        with timer.stage("check inputs", spark):
            features = read_month_features(spark, settings, month, plan)
            quality = input_quality(features, plan, seen_categories(loaded.manifest))
            if quality["missing"]:
                log.warning("features %s: missing values (scored as such) %s", fmt(month), quality["missing"])
            if quality["non_finite"]:
                log.warning(
                    "features %s: NaN, infinite or beyond-float32 numbers (scored as missing) %s",
                    fmt(month), quality["non_finite"],
                )  # fmt: skip
            if quality["unseen"]:
                log.warning("features %s: categories unseen in training %s", fmt(month), quality["unseen"])
        bundle = spark.sparkContext.broadcast(files)
        try:
            batch_rows = settings.scoring.arrow_batch_rows
            with timer.stage("score and write", spark), arrow_batch_rows(spark, batch_rows):
                scores = scoring_parallelism(spark, features).transform(
                    with_scores,
                    plan=plan,
                    bundle=bundle,
                    holdout_salt=settings.scoring.holdout_salt,
                    holdout_share=settings.scoring.holdout_share,
                )
                with storage.staged(target, lease) as staging:
                    scores.write.mode("overwrite").parquet(staging)
        finally:
            bundle.unpersist()
    with timer.stage("summary", spark):
        stats = summarize(spark, target)
    summary = ScoreSummary(
        month=month,
        release_version=plan.release_version,
        path=storage.qualify(target),
        rows=stats["rows"],
        holdout_rows=stats["holdout"],
        cltv_mean=stats["mean"],
        cltv_quantiles=stats["quantiles"],
        missing_values=quality["missing"],
        non_finite_values=quality["non_finite"],
        unseen_categorical=quality["unseen"],
        seconds=dict(timer.seconds),
        detail=detail,
    )
    with timer.stage("log to mlflow"):
        log_score_run(settings, summary)
    log.info(
        "scored %s: %s subscribers (%s holdout) with release v%s; CLTV mean %.1f, quantiles %s; "
        "inputs: missing %s, non-finite %s, unseen categories %s; %s",
        fmt(month),
        f"{summary.rows:,}",
        f"{summary.holdout_rows:,}",
        summary.release_version,
        summary.cltv_mean,
        {k: round(v, 1) for k, v in summary.cltv_quantiles.items()},
        summary.missing_values or "none",
        summary.non_finite_values or "none",
        summary.unseen_categorical or "none",
        timer.summary(),
    )
    return summary


__all__ = ["InputContractError", "ScoreSummary", "score_month"]
