"""Where one scoring batch's time goes, in one process with 1 CatBoost thread (what a Spark task runs).

    .venv/bin/python benchmarks/profile_score_batch.py --release bench-early
    .venv/bin/python benchmarks/profile_score_batch.py --release bench-full

Uses a release of benchmarks/bench_score.py (its MLflow store; run that first) and times the steps of
`batch.score_inputs` on one batch of `--subscribers` rows of the month: Arrow → arrays (with the input
checks), horizon rows, each model's Pool build and predict, daily → monthly units, the sBG fit and the
rest of CLTV, the intervals (with a stand-in table of the same shape for a release without one), the
output batch. Median of --repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from bench_score import ROOT, bench_settings

from spark_app import batch, cltv, intervals
from spark_app.catalog import stacked_feature
from spark_app.cli import setup_logging
from spark_app.models import log_link
from spark_app.months import parse_month
from spark_app.registry import load_release
from spark_app.scoring import make_plan

log = logging.getLogger("profile_score_batch")


def time_batch(record_batch: pa.RecordBatch, learner, plan: batch.BatchPlan) -> dict[str, float]:
    """One pass of the worker's path, step by step (same calls as batch.score_inputs)."""
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return result

    inputs = timed("arrow -> arrays, input checks", batch.inputs_from_arrow, record_batch, plan,
                   batch.BatchStats())  # fmt: skip
    builder = timed("horizon rows", batch.horizon_rows, inputs, plan)
    predictions = {}
    for entry in learner.entries:
        pool = timed("pool builds", builder.pool, learner.catalog.layout(entry))
        model = learner.models[entry.model_id]
        if entry.is_survival:
            raw = timed(f"predict {entry.model_id}", model.predict, pool, prediction_type="Probability",
                        thread_count=learner.thread_count)[:, 1]  # fmt: skip
            builder.add_column(stacked_feature(entry.model_id), raw)
        else:
            kind = "Exponent" if log_link(entry) else "RawFormulaVal"
            raw = timed(f"predict {entry.model_id}", model.predict, pool, prediction_type=kind,
                        thread_count=learner.thread_count)  # fmt: skip
        predictions[entry.model_id] = raw
    horizons, months = builder.numeric("horizon"), builder.numeric("target_calendar_month")
    for entry in learner.entries:
        predictions[entry.model_id] = timed(
            "calibration", learner.finish, entry, np.asarray(predictions[entry.model_id], np.float64),
            horizons, months,
        )  # fmt: skip
    forecasts = timed("monthly units", batch.monthly_forecasts, predictions, len(inputs), plan)
    for model_id in plan.formula.survival:  # the sBG fit alone (cltv_columns runs it again below)
        timed("  of which sBG fit", cltv.extend_survival, forecasts[model_id], plan.extrapolation.months)
    values = timed("cltv (incl. sBG)", cltv.cltv_columns, forecasts, plan.score_month_index, plan.formula,
                   plan.extrapolation)  # fmt: skip
    timed("intervals", batch.interval_columns, forecasts, values["cltv"], plan)
    detail = dataclasses.replace(plan, detail=True)
    timed("  intervals with --detail (h = 1..24)", batch.interval_columns, forecasts, values["cltv"], detail)
    columns = batch.score_inputs(inputs, learner, plan)  # the same columns again, to time their output
    timed("output batch", batch.to_arrow, columns, plan)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--panel", default="work/bench/panel-1m")
    parser.add_argument("--month", default="2026-04")
    parser.add_argument("--work", default="work/bench/score")
    parser.add_argument("--release", default="bench-early", help="an alias or version in the bench's store")
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup_logging()
    month = parse_month(args.month)
    panel = (ROOT / args.panel).resolve()
    settings = bench_settings(str(panel), (ROOT / args.work).resolve())
    release = load_release(settings, args.release)
    plan = make_plan(settings, release.manifest, release.version, "profile", month, detail=False)
    plan = dataclasses.replace(plan, threads=1)
    if plan.intervals is None:  # a release from before intervals: a table of the same shape (10 bins × 24 h)
        rng = np.random.default_rng(0)
        forecast = np.cumsum(rng.gamma(2.0, 10.0, (5000, plan.horizons)), axis=1)
        table = intervals.fit_intervals(forecast, forecast * rng.normal(1, 0.3, forecast.shape),
                                        feature_month="profile")  # fmt: skip
        plan = dataclasses.replace(plan, intervals=table)
    learner = batch.cached_learner(plan, release.files)
    table = ds.dataset(panel / "features" / f"report_month={month:%Y-%m-%d}", format="parquet").head(
        args.subscribers, columns=["subscriber_id", *plan.input_cols]
    )
    record_batch = table.append_column(batch.HOLDOUT, pa.array(np.zeros(table.num_rows, bool)))
    record_batch = record_batch.combine_chunks().to_batches()[0]
    runs = [time_batch(record_batch, learner, plan) for _ in range(args.repeats)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = sum(v for k, v in median.items() if not k.startswith("  "))
    predict = sum(v for k, v in median.items() if k.startswith("predict "))
    rows = record_batch.num_rows * plan.horizons
    trees = {m: r["tree_count"] for m, r in release.manifest["fit"].items()}
    result = {
        "release": release.version,
        "trees": trees,
        "subscribers": record_batch.num_rows,
        "horizon_rows": rows,
        "batch_seconds": round(total, 3),
        "seconds": {k: round(v, 3) for k, v in median.items()},
        "share": {k: round(v / total, 3) for k, v in median.items()},
        "predict_share": round(predict / total, 3),
        "not_predict_us_per_subscriber": round(1e6 * (total - predict) / record_batch.num_rows, 1),
        "predictions_per_s_one_thread": round(rows * len(learner.models) / predict),
    }
    log.info("batch profile: %s", json.dumps(result))


if __name__ == "__main__":
    main()
