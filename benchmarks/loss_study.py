"""Which loss makes the amount models conditional means? A measurement, not a timing (docs/training.md).

For one panel and config, the training set is built (or reused) and brought to the driver once; then the
release is trained once per loss variant, and for each amount model and for the month's value the OOT
aggregate bias is measured before and after the per-horizon calibration, beside RMSE, normalized Gini,
decile calibration error and the naive baseline's figures:

    .venv/bin/python benchmarks/loss_study.py --conf work/bench/convergent.yaml --target-end 2026-04
    .venv/bin/python benchmarks/loss_study.py --conf work/bench/prepaid.yaml --target-end 2026-04

Variants: `seed` (the first release's Huber:delta / MAE early stopping, RMSE stopping for sac),
`rmse` (RMSE loss and stopping), `tweedie` (Tweedie:variance_power=1.5, stopping on the same loss).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from spark_app.catalog import ModelCatalog
from spark_app.cli import setup_logging
from spark_app.cltv import ValueFormula
from spark_app.config import Settings, load_settings
from spark_app.dataset import build_dataset, read_dataset
from spark_app.evaluation import (
    VALUE,
    NaiveBaseline,
    actuals,
    agg_bias,
    cumulative_bias,
    markdown_table,
    monthly_values,
)
from spark_app.models import Learner
from spark_app.months import parse_month
from spark_app.session import get_spark
from spark_app.training import evaluate, to_driver

log = logging.getLogger("loss_study")

SEED_HUBER = {"sm_mobile": 2.0, "sm_fmc": 3.0, "sm_fttb": 2.0, "data_gb": 0.3, "voice_min": 5.0, "sac": 1.0}
VARIANTS: dict[str, Any] = {
    "seed": lambda m: {
        "loss_function": f"Huber:delta={SEED_HUBER.get(m, 2.0)}",
        "eval_metric": "RMSE" if m == "sac" else "MAE",
    },
    "rmse": lambda m: {"loss_function": "RMSE", "eval_metric": "RMSE"},
    "tweedie": lambda m: {
        "loss_function": "Tweedie:variance_power=1.5",
        "eval_metric": "Tweedie:variance_power=1.5",
    },
}


def variant_catalog(catalog: ModelCatalog, variant: str) -> ModelCatalog:
    from dataclasses import replace

    entries = tuple(
        e if e.is_survival else replace(e, params={**e.params, **VARIANTS[variant](e.model_id)})
        for e in catalog
    )
    return ModelCatalog(entries, catalog.categorical, catalog.tenure_column)


def study(settings: Settings, frames: dict, variant: str) -> dict[str, Any]:
    catalog = variant_catalog(settings.models.catalog(), variant)
    learner = Learner(catalog, settings.training.thread_count, settings.training.random_seed)
    started = time.perf_counter()
    learner.fit(frames["train_surv"], frames["train_reg"], frames["val"])
    fit_seconds = time.perf_counter() - started
    learner.calibrate(frames["val"], frames["test"])
    naive = NaiveBaseline.fit(
        catalog, frames["train_surv"], frames["train_reg"], settings.training.tenure_bands
    )
    evaluation = evaluate(learner, frames, naive, settings)
    oot = frames["oot"]
    raw = learner.predict(oot, calibrated=False)
    raw = {e.model_id: raw[e.model_id] if e.fact_min is None else np.maximum(raw[e.model_id], e.fact_min)
           for e in catalog}  # fmt: skip
    y = actuals(oot, catalog)
    formula = ValueFormula.from_catalog(catalog, settings.costs)
    h = oot["horizon"].to_numpy()
    raw_value = monthly_values(oot, raw, catalog, formula)
    y_value = monthly_values(oot, y, catalog, formula)
    quality = evaluation.quality.set_index("model_id")
    agg = evaluation.table[(evaluation.table["split"] == "oot") & (evaluation.table["horizon"] == 0)]
    rows = []
    for entry in [*catalog.amounts, None]:
        m = entry.model_id if entry else VALUE
        metric = agg[agg["model_id"] == m].set_index("metric")
        rows.append(
            {
                "variant": variant,
                "model_id": m,
                "bias_raw": agg_bias(y[m], raw[m]) if entry else agg_bias(y_value, raw_value),
                "bias": float(quality.loc[m, "agg_bias"]),
                "bias_se": float(quality.loc[m, "agg_bias_se"]),
                "naive_bias": float(quality.loc[m, "naive_agg_bias"]),
                "cum24_raw": cumulative_bias(h, raw_value, y_value)[0] if not entry else np.nan,
                "cum24": float(quality.loc[m, "cum_bias"]) if not entry else np.nan,
                "rmse": float(metric.loc["rmse", "value"]),
                "naive_rmse": float(metric.loc["rmse", "naive"]),
                "gini": float(metric.loc["gini", "value"]),
                "decile_error": float(metric.loc["decile_error", "value"]),
                "trees": learner.fit_reports[m].tree_count if entry else np.nan,
            }
        )
    survival = {
        e.model_id: {
            "auc": float(
                agg[(agg["model_id"] == e.model_id) & (agg["metric"] == "roc_auc")]["value"].iloc[0]
            ),
            "brier": float(
                agg[(agg["model_id"] == e.model_id) & (agg["metric"] == "brier")]["value"].iloc[0]
            ),
            "recalibrated": e.model_id in learner.calibration,
        }
        for e in catalog.survival
    }
    return {"rows": rows, "survival": survival, "fit_seconds": fit_seconds, "oot_rows": len(oot)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conf", type=Path, required=True)
    parser.add_argument("--target-end", type=parse_month, required=True)
    parser.add_argument("--variants", default="seed,rmse,tweedie")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    settings = load_settings(args.conf)
    spark = get_spark(settings.spark)
    try:
        dataset_id, manifest, splits = read_dataset(spark, settings)
    except Exception:
        dataset_id = build_dataset(spark, settings, args.target_end).dataset_id
        dataset_id, manifest, splits = read_dataset(spark, settings, dataset_id)
    frames = to_driver(spark, splits, manifest, settings, dataset_id)
    results = {v: study(settings, frames, v) for v in args.variants.split(",")}
    import pandas as pd

    table = pd.DataFrame([r for res in results.values() for r in res["rows"]])
    print(markdown_table(table, ".4f"))
    for variant, res in results.items():
        print(variant, json.dumps(res["survival"]), f"fit {res['fit_seconds']:.0f}s, oot {res['oot_rows']}")
    out = args.out or Path("work/loss-study") / f"{args.conf.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": dataset_id, **results}, indent=2, default=float))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
