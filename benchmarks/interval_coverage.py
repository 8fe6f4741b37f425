"""Do the intervals hold? Coverage of realized cumulative value against the level, on a panel, end to end.

Through the library calls the CLI makes: build the training set ending at --target-end, train (the release
fits its interval table on held-out subscribers), score the months after it with detail, monitor the month
after those; then the coverage monitoring measured, by horizon and population, and the median interval
width relative to the forecast in the last scored month. docs/scoring.md quotes the figures.

    # 50k subscribers, 24 scored months: coverage at horizons 1..24
    .venv/bin/cltv generate --out work/bench/panel-50k --subscribers 50000 --months 62 --start 2022-01
    .venv/bin/python benchmarks/interval_coverage.py --conf work/bench/intervals-50k.yaml \\
        --target-end 2025-01 --score 2025-02..2027-01 --monitor 2027-02
    # the 1M panel: horizons 1..3
    .venv/bin/python benchmarks/interval_coverage.py --conf work/bench/convergent.yaml \\
        --target-end 2026-01 --score 2026-01..2026-03 --monitor 2026-04
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
from pyspark.sql import functions as F

from spark_app.cli import setup_logging
from spark_app.config import load_settings
from spark_app.dataset import build_dataset
from spark_app.evaluation import markdown_table
from spark_app.layout import read_scores
from spark_app.monitoring import monitor_month
from spark_app.months import month_range, parse_month
from spark_app.registry import load_release
from spark_app.scoring import score_month
from spark_app.session import get_spark
from spark_app.training import train_release

log = logging.getLogger("interval_coverage")


def months_arg(text: str) -> list:
    if ".." in text:
        first, last = text.split("..")
        return month_range(parse_month(first), parse_month(last))
    return [parse_month(m) for m in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conf", type=Path, required=True)
    parser.add_argument("--target-end", type=parse_month, required=True)
    parser.add_argument("--score", type=months_arg, required=True, help="A..B or comma-separated months")
    parser.add_argument("--monitor", type=parse_month, required=True)
    parser.add_argument("--release", default=None, help="score with this version instead of training one")
    parser.add_argument("--scored", action="store_true", help="the --score months are scored already")
    parser.add_argument("--horizons", default="1,3,6,12,24")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    settings = load_settings(args.conf)
    spark = get_spark(settings.spark)
    version = args.release
    if version is None:
        dataset = build_dataset(spark, settings, args.target_end)
        version = str(train_release(spark, settings, dataset.dataset_id).version)
    seconds = {}
    for month in [] if args.scored else args.score:
        summary = score_month(spark, settings, month, release=version, detail=True)
        seconds[str(month)] = summary.seconds.get("score and write")
    result = monitor_month(spark, settings, args.monitor, release=load_release(settings, version))
    coverage = result.tables["coverage"]
    wanted = [int(h) for h in args.horizons.split(",")]
    shown = coverage[coverage["horizon"].isin(wanted)]
    pivot = shown.pivot_table(index="population", columns="horizon", values="coverage").add_prefix("h")
    gap = coverage["gap"].abs()
    scores = read_scores(spark, settings.paths, args.score[-1])
    widths = {}
    for point in ("value_12m", "value_24m", "cltv"):
        relative = (F.col(f"{point}_upper") - F.col(f"{point}_lower")) / F.abs(F.col(point))
        widths[point] = scores.select(relative.alias("r")).approxQuantile("r", [0.5], 1e-3)[0]
    print(markdown_table(pivot.reset_index(), ".3f"))
    per_horizon = coverage.loc[coverage["population"] == "all", "bounded"]
    print(
        f"level {settings.scoring.interval_level}; max |coverage − level| over horizons "
        f"1..{coverage['horizon'].max()} and populations: {gap.max():.3f}; subscribers per horizon (all): "
        f"{int(per_horizon.min()):,}..{int(per_horizon.max()):,}"
    )
    print("median relative width (upper − lower) / |forecast|:", {k: round(v, 3) for k, v in widths.items()})
    backtest = result.tables["backtest"]
    by_segment = backtest[(backtest["model_id"] == "value_cum") & (backtest["population"] == "all")
                          & (backtest["dimension"] != "all") & (backtest["bounded"] > 0)]  # fmt: skip
    if len(by_segment):
        table = by_segment.pivot_table(index=["dimension", "value"], columns="horizon", values="coverage")
        print("coverage by segment (all subscribers):")
        print(markdown_table(table.add_prefix("h").reset_index(), ".3f"))
    out = args.out or Path("work/bench") / f"intervals-{args.conf.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "release": version,
                "level": settings.scoring.interval_level,
                "coverage": json.loads(pd.DataFrame(coverage).to_json(orient="records", date_format="iso")),
                "max_abs_gap": float(gap.max()),
                "median_relative_width": widths,
                "score_seconds": seconds,
            },
            indent=2,
        )
    )
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
