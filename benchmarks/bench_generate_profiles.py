"""The generator's profiles at the same size in one Spark session: rows, zero margins, churn, time.

    .venv/bin/python benchmarks/bench_generate_profiles.py --subscribers 200000 --months 40

Profiles run alternately (`--repeats` rounds) so that a busy machine slows both alike; the ratio uses each
profile's fastest round. Outputs are deleted after every round unless --keep.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from spark_app.cli import setup_logging
from spark_app.config import SparkConfig
from spark_app.generate import PROFILES, PanelSpec, generate_panel
from spark_app.months import parse_month
from spark_app.session import get_spark

log = logging.getLogger("bench_generate_profiles")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=200_000)
    parser.add_argument("--months", type=int, default=40)
    parser.add_argument("--start", default="2023-01")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="work/bench/profiles")
    parser.add_argument("--result", default="work/bench/bench_generate_profiles.json")
    parser.add_argument("--keep", action="store_true", help="keep the last round's panels")
    args = parser.parse_args()
    setup_logging()
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="4g", shuffle_partitions=8))
    result: dict[str, Any] = {}
    for round_ in range(args.repeats):
        for profile in args.profiles:
            spec = PanelSpec(args.subscribers, args.months, parse_month(args.start), profile=profile)
            out = f"{args.out}/{profile}"
            start = time.perf_counter()
            summary = generate_panel(spark, out, spec)
            seconds = time.perf_counter() - start
            best = result.setdefault(profile, {**summary, "rounds_seconds": []})
            best["rounds_seconds"].append(round(seconds, 1))
            if not args.keep or round_ < args.repeats - 1:
                shutil.rmtree(out, ignore_errors=True)
    for r in result.values():
        r["seconds"] = min(r["rounds_seconds"])
        r["rows_per_second"] = round(int(r["rows"]) / r["seconds"])
    if "convergent" in result and "prepaid" in result:
        result["prepaid_over_convergent_seconds"] = round(
            result["prepaid"]["seconds"] / result["convergent"]["seconds"], 2
        )
    result["config"] = {"subscribers": args.subscribers, "months": args.months, "master": "local[2]"}
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2, default=str))
    log.info("result: %s", json.dumps(result, default=str))


if __name__ == "__main__":
    main()
