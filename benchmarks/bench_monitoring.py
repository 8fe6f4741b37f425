"""Monitoring cost on a large panel, each check against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_monitoring.py --panel work/bench/panel-1m --month 2026-04 \
        --score-months 3

Setup (not timed against anything): naive scores with the 24-month detail arrays of all eight models for
months T-k..T, written like the scoring output, and a 50k-row reference sample of month T-12 features.

Pairs (median of --repeats, seconds, ratio = check / baseline):
- feature drift (PSI + unseen) vs a plain scan that sums every feature column of month T (the I/O floor
  of any one-pass check); and the numeric binning three ways: bin once per row + explode + count (used),
  one `agg` with a sum per column x bin, one Spark job per feature;
- backtest (T-1..T-k forecasts vs facts of T, by population and dimension) vs a plain join of the same
  scores with the facts of T counted (the floor of any backtest);
- prediction drift (T vs T-1) vs a plain scan of both score months.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_app.backtest import run_backtest
from spark_app.cli import setup_logging
from spark_app.config import load_settings
from spark_app.contract import ID, MONTH, read_table
from spark_app.drift import (
    _bucket,
    feature_drift,
    numeric_bin_counts,
    prediction_columns,
    prediction_drift,
    quantile_edges,
)
from spark_app.generate import FEATURE_CATEGORICAL, FEATURE_NUMERIC
from spark_app.layout import read_scores, scores_dir, workdir_layers
from spark_app.months import add_months, parse_month
from spark_app.session import get_spark
from spark_app.storage import Storage

log = logging.getLogger("bench_monitoring")
FACT = {"paid": "in_paid_base", "active": "in_active_base"}
MODELS = ("paid", "active", "sm_mobile", "sm_fmc", "sm_fttb", "data_gb", "voice_min", "sac")  # the panel's


def numeric_bin_counts_single_agg(df: DataFrame, edges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The one-`agg` variant (a sum per column × bin), drift.numeric_bin_counts's baseline."""
    aggs = []
    for i, (col, e) in enumerate(edges.items()):
        b = _bucket(col, e)
        aggs += [F.sum((b == k).cast("long")).alias(f"c{i}_{k}") for k in range(len(e) + 2)]
    row = df.agg(*aggs).collect()[0]
    return {
        col: np.array([row[f"c{i}_{k}"] or 0 for k in range(len(e) + 2)], dtype=np.int64)
        for i, (col, e) in enumerate(edges.items())
    }


def write_naive_scores(spark, settings, month) -> None:
    """Scores of `month` in the scoring layout from a naive forecaster (last month's facts × decay)."""
    facts = read_table(spark, settings.paths.facts, "facts").where(F.col(MONTH) == F.lit(month))

    def arr(col):
        return F.transform(F.sequence(F.lit(1), F.lit(24)), lambda h: F.col(col) * F.pow(F.lit(0.97), h))

    out = facts.select(
        ID,
        F.lit(month).alias("score_month"),
        F.lit(1).alias("release_version"),
        (F.col("sm_mobile") + F.col("sm_fmc") + F.col("sm_fttb")).cast("double").alias("cltv"),
        (F.col("in_paid_base") * 0.8).cast("double").alias("p_paid_12m"),
        *[arr(FACT.get(m, m)).alias(f"{m}_h") for m in MODELS],
        (F.pmod(F.xxhash64(ID, F.lit("holdout")), F.lit(100)) < 5).alias("holdout"),
    )
    storage = Storage(spark)
    with storage.staged(scores_dir(settings.paths, month)) as staging:
        out.write.mode("overwrite").parquet(staging)


def timed(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    log.info("%s: runs %s", getattr(fn, "__name__", "?"), [round(r, 1) for r in runs])
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--panel", default="work/bench/panel-1m")
    parser.add_argument("--month", default="2026-04")
    parser.add_argument(
        "--score-months", type=int, default=3, help="k: forecasts from T-1..T-k are backtested"
    )
    parser.add_argument("--work", default="work/bench/monitoring")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--result", default="work/bench/bench_monitoring.json")
    args = parser.parse_args()
    setup_logging()
    month = parse_month(args.month)
    work = Path(args.work).resolve()
    panel = Path(args.panel).resolve()
    settings = load_settings(
        Path(__file__).resolve().parent.parent / "conf" / "local.yaml",
        overrides={
            **workdir_layers(work, panel),
            "spark": {"master": "local[2]", "shuffle_partitions": 8},
            "monitoring": {"backtest_max_horizon": 24},
        },
        environ={},
    )
    spark = get_spark(settings.spark)
    figures: dict[str, object] = {
        "panel": str(panel),
        "month": args.month,
        "score_months": args.score_months,
        "repeats": args.repeats,
    }

    start = time.perf_counter()
    for k in range(args.score_months + 1):
        m = add_months(month, -k)
        if not Storage(spark).has_success_marker(scores_dir(settings.paths, m)):
            write_naive_scores(spark, settings, m)
    figures["setup_scores_s"] = round(time.perf_counter() - start, 1)

    features = read_table(spark, settings.paths.features, "features")
    current = features.where(F.col(MONTH) == F.lit(month))
    reference = (
        features.where(F.col(MONTH) == F.lit(add_months(month, -12)))
        .sample(fraction=0.06, seed=3)
        .limit(settings.monitoring.reference_rows)
        .toPandas()
    )
    numeric, categorical = list(FEATURE_NUMERIC), list(FEATURE_CATEGORICAL)
    figures["rows_month"] = current.count()
    figures["reference_rows"] = len(reference)

    def scan():
        current.agg(
            F.count(F.lit(1)), *[F.sum(c) for c in numeric], *[F.countDistinct(c) for c in categorical]
        ).collect()

    def drift():
        feature_drift(reference, current, numeric=numeric, categorical=categorical, cfg=settings.monitoring)

    edges = {
        c: quantile_edges(reference[c].to_numpy(dtype="float64"), settings.monitoring.psi_bins)
        for c in numeric
    }

    def bins_loop():
        for c, e in edges.items():
            current.groupBy(_bucket(c, e).alias("b")).count().collect()

    figures["scan_features_s"] = timed(scan, args.repeats)
    figures["feature_drift_s"] = timed(drift, args.repeats)
    figures["bins_explode_s"] = timed(lambda: numeric_bin_counts(current, edges), args.repeats)
    figures["bins_single_agg_s"] = timed(lambda: numeric_bin_counts_single_agg(current, edges), args.repeats)
    figures["bins_loop_s"] = timed(bins_loop, args.repeats)

    facts_t = read_table(spark, settings.paths.facts, "facts").where(F.col(MONTH) == F.lit(month))
    past = [
        read_scores(spark, settings.paths, add_months(month, -k)) for k in range(1, args.score_months + 1)
    ]
    union = past[0]
    for p in past[1:]:
        union = union.unionByName(p)

    def join_floor():
        union.select(ID, "score_month", *[f"{m}_h" for m in MODELS]).join(facts_t, ID, "left").agg(
            F.count(F.lit(1)), *[F.sum(F.element_at(f"{m}_h", 1)) for m in MODELS]
        ).collect()

    table = {}

    def backtest():
        table["bt"], _ = run_backtest(spark, settings, month)

    figures["join_floor_s"] = timed(join_floor, args.repeats)
    figures["backtest_s"] = timed(backtest, args.repeats)
    figures["backtest_rows"] = len(table["bt"])

    cur_s, prev_s = (
        read_scores(spark, settings.paths, month),
        read_scores(spark, settings.paths, add_months(month, -1)),
    )
    cols = prediction_columns(cur_s, settings.monitoring)

    def scores_scan():
        for s in (prev_s, cur_s):
            s.agg(*[F.sum(c) for c in cols]).collect()

    figures["scan_scores_s"] = timed(scores_scan, args.repeats)
    figures["prediction_drift_s"] = timed(
        lambda: prediction_drift(prev_s, cur_s, columns=cols, cfg=settings.monitoring), args.repeats
    )

    figures = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    figures["ratio_drift_vs_scan"] = round(figures["feature_drift_s"] / figures["scan_features_s"], 2)
    figures["ratio_bins_single_agg_vs_explode"] = round(
        figures["bins_single_agg_s"] / figures["bins_explode_s"], 2
    )
    figures["ratio_bins_loop_vs_explode"] = round(figures["bins_loop_s"] / figures["bins_explode_s"], 2)
    figures["ratio_backtest_vs_join"] = round(figures["backtest_s"] / figures["join_floor_s"], 2)
    figures["ratio_prediction_drift_vs_scan"] = round(
        figures["prediction_drift_s"] / figures["scan_scores_s"], 2
    )
    log.info("monitoring benchmark: %s", json.dumps(figures))
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
