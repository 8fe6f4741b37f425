"""Are the forecasts unbiased expectations? The release's OOT figures and the backtest of scored months.

The whole pipeline on one panel and config, through the library calls the CLI makes: build the training
set ending at --target-end, train and promote, score the months after it with detail, monitor the month
after those. Prints (and writes as JSON) what docs/training.md quotes:

- OOT, per amount model and for the value: aggregate bias ± its 95 % sampling noise, beside the naive
  baseline's; the cumulative 24-month value's bias; Gini, decile calibration error, main metric vs naive;
- the monitoring backtest at horizons 1..k over the whole base (holdout and rest together): aggregate bias
  of each model and of the value realized so far (value_cum).

    .venv/bin/python benchmarks/bias_figures.py --conf work/bench/convergent.yaml --target-end 2026-01 \\
        --score 2026-01,2026-02,2026-03 --monitor 2026-04
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from spark_app.cli import setup_logging
from spark_app.config import load_settings
from spark_app.dataset import build_dataset
from spark_app.evaluation import markdown_table
from spark_app.monitoring import monitor_month
from spark_app.months import parse_month
from spark_app.registry import promote
from spark_app.scoring import score_month
from spark_app.session import get_spark
from spark_app.training import train_release

log = logging.getLogger("bias_figures")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conf", type=Path, required=True)
    parser.add_argument("--target-end", type=parse_month, required=True)
    parser.add_argument("--score", required=True, help="comma-separated months to score with detail")
    parser.add_argument("--monitor", type=parse_month, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    settings = load_settings(args.conf)
    spark = get_spark(settings.spark)
    dataset = build_dataset(spark, settings, args.target_end)
    release = train_release(spark, settings, dataset.dataset_id)
    promote(settings, version=release.version)
    for month in args.score.split(","):
        score_month(spark, settings, parse_month(month), release=str(release.version), detail=True)
    result = monitor_month(spark, settings, args.monitor)
    quality = pd.DataFrame(release.quality)
    backtest = result.tables["backtest"]
    overall = backtest[(backtest["dimension"] == "all") & (backtest["population"] == "all")]
    survival_ids = [e.model_id for e in settings.models.catalog().survival]
    amounts = overall[~overall["model_id"].isin(survival_ids)]
    bias = amounts.pivot_table(index="model_id", columns="horizon", values="bias").add_prefix("h")
    survival = overall[overall["model_id"].isin(survival_ids)]
    shares = survival.pivot_table(
        index="model_id", columns="horizon", values=["forecast_mean", "actual_mean"]
    )
    shares.columns = [f"{stat} h{h}" for stat, h in shares.columns]
    columns = ["model_id", "agg_bias", "agg_bias_se", "naive_agg_bias", "cum_bias", "cum_bias_se", "metric",
               "value", "naive", "beats_naive"]  # fmt: skip
    print(markdown_table(quality[[c for c in columns if c in quality]], ".4f"))
    print(markdown_table(bias.reset_index(), ".4f"))
    print(markdown_table(shares.reset_index(), ".4f"))
    out = args.out or Path("work/bias-figures") / f"{args.conf.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "dataset": dataset.dataset_id,
                "release": release.version,
                "quality": release.quality,
                "backtest_bias": bias.reset_index().to_dict("records"),
                "survival_shares": json.loads(shares.reset_index().to_json()),
            },
            indent=2,
            default=str,
        )
    )
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
