"""Generator throughput: `cltv generate` against a pure-Spark write of an equally sized table, same run.

    .venv/bin/python benchmarks/bench_generate.py --subscribers 1000000 --months 40 --out work/bench/panel-1m

The baseline writes the same number of rows and columns (random doubles from Spark's own `rand`, no Python),
partitioned by month, so the ratio shows what the numpy simulation and the Arrow crossing cost on top of I/O.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from pyspark.sql import functions as F

from spark_app.cli import setup_logging
from spark_app.config import SparkConfig
from spark_app.generate import PanelSpec, generate_panel
from spark_app.months import parse_month
from spark_app.session import get_spark

log = logging.getLogger("bench_generate")


def baseline_write(spark, rows: int, n_cols: int, months: int, out: str) -> float:
    start = time.perf_counter()
    df = spark.range(rows, numPartitions=4).select(
        F.format_string("S%09d", F.col("id")).alias("subscriber_id"),
        (F.col("id") % months).cast("int").alias("report_month"),
        *[F.rand(i).alias(f"c{i}") for i in range(n_cols)],
    )
    df.write.mode("overwrite").partitionBy("report_month").parquet(out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=40)
    parser.add_argument("--start", default="2023-01")
    parser.add_argument("--out", default="work/bench/panel-1m")
    parser.add_argument("--result", default="work/bench/bench_generate.json")
    args = parser.parse_args()
    setup_logging()
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="6g", shuffle_partitions=8))
    spec = PanelSpec(subscribers=args.subscribers, months=args.months, start=parse_month(args.start))

    start = time.perf_counter()
    summary = generate_panel(spark, args.out, spec)
    generate_s = time.perf_counter() - start
    features = spark.read.parquet(f"{args.out}/features")
    rows = int(summary["rows"])
    n_cols = len(features.columns) - 2 + 8  # features + facts value columns
    base_s = baseline_write(spark, rows, n_cols, args.months, str(Path(args.out).parent / "_baseline_write"))
    result = {
        "subscribers": args.subscribers,
        "months": args.months,
        "rows_per_table": rows,
        "generate_seconds": round(generate_s, 1),
        "baseline_write_seconds": round(base_s, 1),
        "ratio": round(generate_s / base_s, 2),
        "monthly_churn": round(float(summary["monthly_churn"]), 4),
        "paid_share": round(float(summary["paid_share"]), 4),
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2))
    log.info("result: %s", json.dumps(result))


if __name__ == "__main__":
    main()
