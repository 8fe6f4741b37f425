"""One month of 10M subscribers scored on this machine, against 1M, as a user runs it (issue 23.5).

    .venv/bin/python benchmarks/bench_score_scale.py --source work/bench/party-rollup/n1660000/panel \\
        --month 2025-10 --copies 1,10 --release-work work/bench/score-fresh --release 1

The scored month of --source (1.00M subscribers on the rollup benchmark's 1.66M panel) is written
--copies times with the ids suffixed (…-c1, …-c2: distinct subscribers with the same features, so the
work per subscriber is the panel's), once per size under --work; only that month is generated, nothing
else scoring does not read. Then one fresh `cltv score` per size (benchmarks/bench_score.py
`fresh_score`: the job's own stage total, the process's wall time, the workers' time by step, and the
peak RSS of the driver's Python, its JVM and the largest Python worker), with the release of
benchmarks/bench_score.py's store. Goals: t(10M) / t(1M) ≤ 11; the driver's and the largest worker's
peak RSS flat. The disk used by the inputs and the scores of each size is stated.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
from pathlib import Path

from bench_score import ROOT, env_conf, fresh_score
from pyspark.sql import functions as F

from spark_app.cli import setup_logging
from spark_app.config import SparkConfig
from spark_app.months import parse_month
from spark_app.session import get_spark

log = logging.getLogger("bench_score_scale")


def disk_mb(path: Path) -> float:
    done = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[0])


def build_month(spark, source: Path, month, copies: int, out: Path) -> int:
    """`out`/features/report_month=… holding `copies` suffixed copies of the month (reused when done)."""
    done = out / "_DONE"
    if done.exists():
        return int(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    part = f"report_month={month:%Y-%m-%d}"
    rows = spark.read.parquet(str(source / "features" / part))
    copied = rows.crossJoin(spark.range(copies).withColumnRenamed("id", "_copy")).withColumn(
        "subscriber_id",
        F.when(F.col("_copy") == 0, F.col("subscriber_id")).otherwise(
            F.concat(F.col("subscriber_id"), F.lit("-c"), F.col("_copy").cast("string"))
        ),
    )
    files = max(4, copies * 4)
    copied.drop("_copy").repartition(files).write.mode("overwrite").parquet(str(out / "features" / part))
    n = spark.read.parquet(str(out / "features" / part)).count()
    done.write_text(str(n))
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="work/bench/party-rollup/n1660000/panel")
    parser.add_argument("--month", default="2025-10")
    parser.add_argument("--copies", default="1,10")
    parser.add_argument("--work", default="work/bench/score-scale")
    parser.add_argument("--release-work", default="work/bench/score-fresh")
    parser.add_argument("--release", default="1")
    parser.add_argument("--result", default="work/bench/bench_score_scale.json")
    args = parser.parse_args()
    setup_logging()
    month = parse_month(args.month)
    work = (ROOT / args.work).resolve()
    sizes = [int(c) for c in args.copies.split(",")]
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="4g", shuffle_partitions=8))
    inputs = {c: build_month(spark, (ROOT / args.source).resolve(), month, c, work / f"x{c}") for c in sizes}
    spark.stop()
    result: dict = {"release": args.release, "sizes": {}}
    for copies in sizes:
        run_work = work / f"run-x{copies}"
        shutil.rmtree(run_work / "scores", ignore_errors=True)
        conf = env_conf(run_work, work / f"x{copies}", (ROOT / args.release_work).resolve())
        run = fresh_score(conf, month, int(args.release))
        run.update(
            subscribers=inputs[copies],
            inputs_disk_mb=disk_mb(work / f"x{copies}"),
            scores_disk_mb=disk_mb(run_work / "scores"),
        )
        result["sizes"][copies] = run
        log.info("%s subscribers: %s", f"{inputs[copies]:,}", json.dumps(run))
    small, large = result["sizes"][sizes[0]], result["sizes"][sizes[-1]]
    result["wall_ratio"] = round(large["job_total_s"] / small["job_total_s"], 2)
    result["size_ratio"] = round(large["subscribers"] / small["subscribers"], 2)
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2))
    log.info("t(%s) / t(%s) = %.2f for %.1fx the subscribers; peak RSS %s → %s", f"{large['subscribers']:,}",
             f"{small['subscribers']:,}", result["wall_ratio"], result["size_ratio"],
             small["peak_memory_mb"], large["peak_memory_mb"])  # fmt: skip


if __name__ == "__main__":
    main()
