"""The monthly monitoring job: drift (spark_app.drift) and the backtest (spark_app.backtest) of month T,
their tables under `{paths.monitoring}/month=T/`, one MLflow run with metrics and plots, and the verdict
(`failed` when a check crosses a fail threshold: `cltv monitor` exits 1). With `paths.parties` the backtest
and the interval coverage are also per person and household (`party_backtest`, `party_coverage`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_app import tracking
from spark_app.backtest import (
    NO_PARTY_MODEL,
    VALUE_CUM,
    PartyModelOf,
    coverage_checks,
    run_backtest,
    run_party_backtest,
    survival_checks,
)
from spark_app.checks import FAIL, OK, WARN, MonitoringError
from spark_app.config import MonitoringConfig, Settings
from spark_app.contract import (
    catalog_features_spec,
    read_months,
)
from spark_app.drift import drift_columns, feature_drift, prediction_columns, prediction_drift, read_reference
from spark_app.errors import Unreachable
from spark_app.figures import close, monitoring_figures
from spark_app.layout import monitoring_dir, read_scores
from spark_app.metrics import monitor_figures, push_job_metrics
from spark_app.months import add_months, fmt
from spark_app.parties import LEVELS, PartyModel
from spark_app.progress import StageTimer
from spark_app.registry import Release, load_release
from spark_app.storage import Storage

log = logging.getLogger(__name__)

# the month's tables (`party_*` only with paths.parties: per person and household)
TABLES = ("drift", "prediction_drift", "backtest", "coverage", "survival", "party_backtest", "party_coverage")


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


# ===================================================================== I/O
def read_month_features(spark: SparkSession, settings: Settings, month: dt.date) -> DataFrame:
    """The features of `month`, every file of it checked against the catalog's contract."""
    spec = catalog_features_spec(settings.models.catalog())
    (features,) = read_months(
        spark, [(settings.paths.features, spec, [month])], context=f"monitor {fmt(month)}"
    )
    return features


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
    target = monitoring_dir(settings.paths, month)
    if not storage.has_success_marker(target):
        raise MonitoringError(
            f"monitoring: no output for {fmt(month)} under {target}; run `cltv monitor` first"
        )
    out: dict[str, Any] = {"summary": storage.read_json(f"{target}/summary.json")}
    for name in TABLES:
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
            if np.isfinite(r.coverage):  # the cumulative value's interval
                out[f"{key}.coverage"] = float(r.coverage)
                out[f"{key}.interval_width_mean"] = float(r.interval_width_mean)
    return {k: v for k, v in out.items() if np.isfinite(v)}


def _party_metrics(backtest: pd.DataFrame, cfg: MonitoringConfig) -> dict[str, float]:
    """`party.<level>.hNN.<model>.{bias,wape}` (and the survival models' expected / realized lines in base)
    over parties of every size, `party.<level>.hNN.value_cum.{coverage,interval_width_mean}`, and the
    cumulative value's bias per size (`party.<level>.size<k>.hNN.value_cum.bias`), at `metric_horizons`."""
    out: dict[str, float] = {}
    if backtest is None or backtest.empty:
        return out
    rows = backtest[backtest["horizon"].isin(cfg.metric_horizons)]
    for r in rows.itertuples():
        if r.size != "all":
            if r.model_id == VALUE_CUM:
                size = r.size.rstrip("+")
                out[f"party.{r.level}.size{size}.h{r.horizon:02d}.{VALUE_CUM}.bias"] = float(r.bias)
            continue
        key = f"party.{r.level}.h{r.horizon:02d}.{r.model_id}"
        if r.model_id in ("paid", "active"):
            out[f"{key}.predicted_lines"] = float(r.forecast_mean)
            out[f"{key}.realized_lines"] = float(r.actual_mean)
        else:
            out[f"{key}.bias"] = float(r.bias)
            out[f"{key}.wape"] = float(r.wape)
        if np.isfinite(r.coverage):
            out[f"{key}.coverage"] = float(r.coverage)
            out[f"{key}.interval_width_mean"] = float(r.interval_width_mean)
    return {k: v for k, v in out.items() if np.isfinite(v)}


def party_model_of(settings: Settings, release: Release | None) -> PartyModelOf:
    """What the release of a scored month fitted about parties (`PartyModel` in its release.json), by its
    version: the release monitor loaded already when it is that one, else loaded once per version. A
    release trained without parties has none (NO_PARTY_MODEL); one that cannot be loaded is named (a
    registry that cannot be reached stays an error: exit 75)."""
    found: dict[str, tuple[PartyModel | None, str]] = {}

    def of(version: str) -> tuple[PartyModel | None, str]:
        if version not in found:
            try:
                same = release is not None and str(getattr(release, "version", "")) == version
                manifest = release.manifest if same else load_release(settings, version).manifest
            except Unreachable:
                raise
            except Exception as exc:
                found[version] = (
                    None,
                    f"n/a (release v{version} not loadable: {str(exc).splitlines()[0][:120]})",
                )
            else:
                model = PartyModel.from_json((manifest or {}).get("parties"))
                found[version] = model, "" if model is not None else NO_PARTY_MODEL
        return found[version]

    return of


@tracking.guarded
def log_monitoring_run(
    settings: Settings, month: dt.date, result_tables: dict[str, pd.DataFrame], summary: dict[str, Any]
) -> str:
    """One MLflow run per monitored month in the monitoring experiment: metrics, plots, the tables."""
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
        metrics.update(_party_metrics(result_tables.get("party_backtest"), settings.monitoring))
        tracking.log_values(mlflow, run_id, params=params, metrics=metrics)
        mlflow.log_dict(run_id, summary, "monitoring/summary.json")
        for name, pdf in result_tables.items():
            if not pdf.empty:
                mlflow.log_text(run_id, pdf.to_csv(index=False), f"monitoring/{name}.csv")
        cfg_m = settings.monitoring
        figures = monitoring_figures(
            result_tables,
            settings.models.catalog(),
            cfg_m.psi_warn,
            cfg_m.psi_fail,
            cfg_m.coverage_warn,
            cfg_m.coverage_fail,
        )
        for name, fig in figures.items():
            mlflow.log_figure(run_id, fig, f"plots/{name}.png")
            close(fig)
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
    spark: SparkSession, settings: Settings, month: dt.date, *, release: Release | None = None
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
    current_scores = read_scores(spark, settings.paths, month)
    release_ref = _release_version_of(current_scores) or "champion"

    with timer.stage("feature drift", spark):
        if release is None:
            release = load_release(settings, release_ref)
        reference = read_reference(release)
        numeric, categorical = drift_columns(reference, settings)
        features = read_month_features(spark, settings, month)
        if features.limit(1).count() == 0:
            raise MonitoringError(f"features: no rows for {fmt(month)} under {settings.paths.features}")
        drift = feature_drift(reference, features, numeric=numeric, categorical=categorical, cfg=cfg)

    with timer.stage("prediction drift", spark):
        previous_scores = read_scores(spark, settings.paths, add_months(month, -1))
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
        coverage = coverage_checks(backtest, cfg)
        survival = survival_checks(backtest, [e.model_id for e in settings.models.catalog().survival], cfg)

    parties = None
    if settings.paths.parties is not None:
        with timer.stage("party backtest", spark):
            parties = run_party_backtest(spark, settings, month, party_model_of(settings, release))
        warnings += parties.notes

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
    for r in coverage.itertuples():
        if r.status in (WARN, FAIL):
            (failures if r.status == FAIL else warnings).append(
                f"interval coverage of {r.horizon}-month cumulative value (scored {fmt(r.score_month)}, "
                f"{r.population}): {r.coverage:.1%} of {r.bounded:,} subscribers inside the "
                f"{r.interval_level:.0%} interval ({r.gap:+.1%})"
            )

    for r in survival.itertuples():
        if r.status in (WARN, FAIL):
            (failures if r.status == FAIL else warnings).append(
                f"survival {r.model_id} at horizon {r.horizon} (scored {fmt(r.score_month)}): predicted "
                f"{r.predicted:.1%} in base, realized {r.realized:.1%} ({100 * r.gap:+.1f} points; "
                f"{r.status} beyond {100 * (r.fail if r.status == FAIL else r.warn):.0f})"
            )

    if parties is not None:
        for r in parties.coverage.itertuples():
            if r.status in (WARN, FAIL):
                (failures if r.status == FAIL else warnings).append(
                    f"{r.level} interval coverage of {r.horizon}-month cumulative value (scored "
                    f"{fmt(r.score_month)}): {r.coverage:.1%} of {r.bounded:,} {r.level}s inside the "
                    f"{r.interval_level:.0%} interval ({r.gap:+.1%})"
                )

    status = FAIL if failures else WARN if warnings else OK
    target = monitoring_dir(settings.paths, month)
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
    tables = {"drift": drift, "prediction_drift": pred, "backtest": backtest, "coverage": coverage,
              "survival": survival}  # fmt: skip
    if parties is not None:
        tables.update(party_backtest=parties.backtest, party_coverage=parties.coverage)
        summary["parties"] = {
            "levels": list(LEVELS),
            "score_months": sorted({str(m) for m in parties.backtest.get("score_month", [])}),
            "not_judged": sorted({n for n in parties.coverage.get("note", []) if n}),
        }
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
    push_job_metrics(
        settings.monitoring, "monitor", month, summary["release_version"], timer.seconds,
        monitor_figures(tables, len(failures), len(warnings), cfg.metric_horizons), status,
    )  # fmt: skip
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
