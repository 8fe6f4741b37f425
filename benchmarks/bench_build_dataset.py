"""Benchmark `build_dataset` against what Spark needs just to read its inputs and write as much output.

    .venv/bin/python benchmarks/bench_build_dataset.py \
        --panel work/bench/panel-1m --target-end 2026-04 --repeats 3

Per repeat, in the same SparkSession and the same run (timings on a shared machine are noisy, so only
the ratio to a baseline measured alongside means something):
- build: `build_dataset` end to end (validation, one-pass build, write, manifest);
- baseline: read the same feature columns over the same months and write a hash-chosen sample of as
  many rows as the dataset has (Parquet), plus read the same fact columns over the same months (noop
  sink).
An untimed warm-up read comes first; the order alternates between repeats. Medians, the ratio (goal:
build ≤ 2 × baseline) and the build's per-stage seconds go to the log and to
work/bench/bench_build_dataset.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_app.config import Settings, load_settings
from spark_app.contract import ID, MONTH, read_table
from spark_app.dataset import DatasetPlan, build_dataset
from spark_app.months import parse_month
from spark_app.session import get_spark
from spark_app.storage import Storage

log = logging.getLogger("bench_build_dataset")
ROOT = Path(__file__).resolve().parent.parent


def settings_for(args: argparse.Namespace) -> Settings:
    panel = args.panel.rstrip("/")
    overrides = {
        "paths": {
            "features": f"{panel}/features",
            "facts": f"{panel}/facts",
            "datasets": f"{args.workdir}/datasets",
        },
        "spark": {"master": args.master, "driver_memory": args.driver_memory},
    }
    return load_settings(ROOT / "conf" / "local.yaml", overrides=overrides, environ={})


def feature_rows_in_window(spark: SparkSession, settings: Settings, plan: DatasetPlan) -> int:
    fm = plan.feature_months
    features = read_table(spark, settings.paths.features, "features")
    return features.where(F.col(MONTH).between(F.lit(fm[0]), F.lit(fm[-1]))).count()


def baseline(spark: SparkSession, settings: Settings, plan: DatasetPlan, keep: float, out: str) -> float:
    """Read the inputs the build reads, write a `keep` share of the feature rows; return seconds."""
    start = time.perf_counter()
    cols = settings.models.catalog().input_columns()
    features = read_table(spark, settings.paths.features, "features")
    facts = read_table(spark, settings.paths.facts, "facts")
    fm, tm = plan.feature_months, plan.fact_months
    in_features = features.where(F.col(MONTH).between(F.lit(fm[0]), F.lit(fm[-1]))).select(ID, MONTH, *cols)
    sample = in_features.where(F.pmod(F.xxhash64(ID, MONTH), F.lit(1_000_000)) < F.lit(int(keep * 1_000_000)))
    sample.write.mode("overwrite").parquet(out)
    fact_cols = [c for c in facts.columns if c not in (ID, MONTH)]
    facts.where(F.col(MONTH).between(F.lit(tm[0]), F.lit(tm[-1]))).select(ID, MONTH, *fact_cols).write.format(
        "noop"
    ).mode("overwrite").save()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--panel", default="work/bench/panel-1m")
    parser.add_argument("--target-end", type=parse_month, default=dt.date(2026, 4, 1))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--workdir", default="work/bench/_dataset")
    parser.add_argument("--out", default="work/bench/bench_build_dataset.json")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    settings = settings_for(args)
    spark = get_spark(settings.spark)
    storage = Storage(spark)
    plan = DatasetPlan.from_config(settings.dataset, args.target_end, settings.models.catalog())
    builds: list[float] = []
    baselines: list[float] = []
    stages: list[dict[str, float]] = []
    rows = 0
    window_rows = feature_rows_in_window(spark, settings, plan)
    # untimed warm-up of the JVM and the OS file cache, so the first timed run is not penalised
    baseline(spark, settings, plan, 0.01, f"{args.workdir}/baseline-write")
    for i in range(args.repeats):
        order = ("build", "baseline") if i % 2 == 0 or not rows else ("baseline", "build")  # alternate
        for what in order:
            if what == "build":
                start = time.perf_counter()
                result = build_dataset(spark, settings, args.target_end)
                builds.append(time.perf_counter() - start)
                rows = result.manifest["rows"]
                stages.append(result.manifest["seconds"])
                log.info("repeat %d: build %.1fs (%s rows)", i + 1, builds[-1], f"{rows:,}")
            else:
                keep = rows / max(window_rows, 1)
                baselines.append(baseline(spark, settings, plan, keep, f"{args.workdir}/baseline-write"))
                log.info("repeat %d: baseline %.1fs", i + 1, baselines[-1])
    storage.delete(f"{args.workdir}/baseline-write")

    build_median, baseline_median = statistics.median(builds), statistics.median(baselines)
    ratio = build_median / baseline_median
    figures = {
        "panel": args.panel,
        "target_end": args.target_end.isoformat(),
        "target_months": len(plan.target_months),
        "horizons": len(plan.horizons),
        "master": args.master,
        "dataset_rows": rows,
        "feature_rows_in_window": window_rows,
        "repeats": args.repeats,
        "build_seconds": [round(x, 1) for x in builds],
        "baseline_seconds": [round(x, 1) for x in baselines],
        "build_median_seconds": round(build_median, 1),
        "baseline_median_seconds": round(baseline_median, 1),
        "ratio_build_to_baseline": round(ratio, 2),
        "goal_ratio": 2.0,
        "build_stage_seconds": stages,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    log.info(
        "build median %.1fs, baseline median %.1fs, ratio %.2f (goal <= 2.0); %s",
        build_median,
        baseline_median,
        ratio,
        out,
    )


if __name__ == "__main__":
    main()
