"""Where one scoring batch's time goes, in one process with 1 CatBoost thread (what a Spark task runs).

    .venv/bin/python benchmarks/profile_score_batch.py --panel work/bench/panel-1m --month 2026-04

Uses the release of benchmarks/bench_score.py (trained there if its MLflow store has none) and times the
steps of `scoring.score_frame` on one batch of `--subscribers` rows of the month: horizon rows, Pool
builds, each model's predict, CLTV with the sBG extension. Median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from bench_score import ROOT, bench_settings, ensure_release
from pyspark.sql import functions as F

from spark_app import scoring
from spark_app.cli import setup_logging
from spark_app.cltv import cltv_columns
from spark_app.config import SparkConfig
from spark_app.models import SURVIVAL_FEATURE, MatrixBuilder
from spark_app.months import parse_month
from spark_app.registry import load_release
from spark_app.session import get_spark

log = logging.getLogger("profile_score_batch")


def time_batch(features, learner, plan) -> dict[str, float]:
    seconds: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return result

    frame = timed("horizon rows", scoring.horizon_frame, features, plan)
    builder = MatrixBuilder(frame)
    predictions = {}
    for spec in learner.specs.values():
        timed("pool builds", builder.pool, spec.layout)
        predictions[spec.model_id] = timed(f"predict {spec.model_id}", learner._predict_one, spec, builder)
        if spec.model_id in SURVIVAL_FEATURE:
            builder.add_column(SURVIVAL_FEATURE[spec.model_id], predictions[spec.model_id])
    forecasts = timed("monthly units", scoring.monthly_forecasts, predictions, len(features), plan)
    timed("cltv", cltv_columns, forecasts, plan.score_month_index, plan.rates, plan.extrapolation)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--panel", default="work/bench/panel-1m")
    parser.add_argument("--month", default="2026-04")
    parser.add_argument("--work", default="work/bench/score")
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup_logging()
    month = parse_month(args.month)
    panel = str((ROOT / args.panel).resolve())
    work = (ROOT / args.work).resolve()
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="6g", shuffle_partitions=8))
    settings = bench_settings(panel, work, Path(panel) / "features")
    ensure_release(spark, settings, panel, month, 60_000)
    release = load_release(settings, "challenger")
    plan = scoring.make_plan(settings, release.manifest, release.version, "profile", month, detail=False)
    learner = scoring.cached_learner(plan, scoring.model_files(dict(release.files)))
    features = (
        spark.read.parquet(f"{panel}/features")
        .where(F.col("report_month") == F.lit(month))
        .select("subscriber_id", *plan.input_cols)
        .limit(args.subscribers)
        .toPandas()
    )
    runs = [time_batch(features, learner, plan) for _ in range(args.repeats)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = sum(median.values())
    predict = sum(v for k, v in median.items() if k.startswith("predict "))
    rows = len(features) * plan.horizons
    result = {
        "subscribers": len(features),
        "horizon_rows": rows,
        "batch_seconds": round(total, 3),
        "share": {k: round(v / total, 3) for k, v in median.items()},
        "predict_share": round(predict / total, 3),
        "predictions_per_s_one_thread": round(rows * len(learner.models) / predict),
    }
    log.info("batch profile: %s", json.dumps(result))


if __name__ == "__main__":
    main()
