"""What Spark's side of a scoring run costs on this machine with no model at all (issue 23: the floor under
the job's total that no change to the batch can remove).

    .venv/bin/python benchmarks/bench_score_floor.py \\
        --case m335k=work/bench/gen-500k:2025-08:$FRESH/fresh-m335k-early/scores \\
        --case m1m=work/bench/party-rollup/n1660000/panel:2025-10:$FRESH/fresh-m1m-early/scores --repeats 3

($FRESH = work/bench/score-fresh.)

Each case is a panel, a month and the scores a fresh `cltv score` wrote for it (benchmarks/bench_score.py
--fresh-months). Every measurement is a new process (the session built by `spark_app.session.get_spark`
from the embedded defaults, as `cltv score` builds it; its start-up excluded, as the job's total excludes
it), with the scoring job's task split and Arrow batch size:
- exchange: the month's features read and sent through a Python worker and back (`mapInArrow` of the
  identity) — what the job pays before its batches do anything;
- read scores / rewrite scores: the month's written scores read (noop sink), and read and written again as
  Parquet — the difference is the write of the scores.
The floor = exchange + (rewrite − read scores). CatBoost alone + the floor bounds the job's total from
below, so it bounds what `alone ÷ job` can reach on this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spark_app.cli import setup_logging

log = logging.getLogger("bench_score_floor")
VARIANTS = ("exchange", "read scores", "rewrite scores")


def measure(features: str, month: str, scores: str, variant: str) -> float:
    """One variant in this (fresh) process: seconds from the session's first job to the last."""
    from spark_app.config import ScoringConfig, SparkConfig
    from spark_app.scoring import scoring_job_conf, scoring_parallelism
    from spark_app.session import get_spark, session_conf

    spark = get_spark(SparkConfig())
    job_conf = scoring_job_conf(spark, ScoringConfig())
    with session_conf(spark, **job_conf), tempfile.TemporaryDirectory(dir=Path(scores).parent) as out:
        start = time.perf_counter()
        if variant == "exchange":
            month_rows = spark.read.parquet(f"{features}/report_month={month}-01")

            def identity(batches):
                yield from batches

            sent = scoring_parallelism(spark, month_rows).mapInArrow(identity, month_rows.schema)
            sent.write.format("noop").mode("overwrite").save()
        elif variant == "read scores":
            spark.read.parquet(scores).write.format("noop").mode("overwrite").save()
        else:
            shutil.rmtree(out)
            spark.read.parquet(scores).write.parquet(out)
        return time.perf_counter() - start


def fresh(features: str, month: str, scores: str, variant: str) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", variant, features, month, scores],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", action="append", default=[], help="NAME=PANEL:YYYY-MM:SCORES_ROOT")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        variant, features, month, scores = args.measure
        logging.disable(logging.INFO)
        print(measure(features, month, scores, variant))
        return
    setup_logging()
    results = {}
    for case in args.case:
        name, spec = case.split("=", 1)
        panel, month, scores_root = spec.split(":")
        features, scores = f"{panel}/features", f"{scores_root}/score_month={month}-01"
        seconds = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):  # interleaved, so drift of the machine hits every variant alike
            for variant in VARIANTS:
                seconds[variant].append(fresh(features, month, scores, variant))
        median = {v: statistics.median(s) for v, s in seconds.items()}
        write = median["rewrite scores"] - median["read scores"]
        results[name] = {
            "seconds": seconds,
            "exchange": round(median["exchange"], 2),
            "write scores": round(write, 2),
            "floor": round(median["exchange"] + write, 2),
        }
        log.info("%s: %s", name, json.dumps(results[name]))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
