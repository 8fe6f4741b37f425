"""Training time of a full release on the embedded default (local Spark, SQLite MLflow), per model.

    .venv/bin/python benchmarks/bench_train.py [--panel work/bench/panel-1m] [--target-end 2026-04]
        [--sample-rate 1.0] [--max-rows 400000] [--repeats 3]

1. builds the training set of the panel once (reused when its id already exists under --workdir);
2. `train_release` into a fresh SQLite store under --workdir: per-model rows, best iteration, fit seconds,
   and the stage times of the job;
3. prediction speed of the trained release, measured against a baseline in the same run: the Learner
   (float32 columns and pandas Categoricals shared by the models) vs. the plain approach (a pandas
   DataFrame with string categoricals per model), on the same 20k subscribers x 24 horizons; medians
   of --repeats.
Figures go to the log and to work/bench/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spark_app.catalog import NULL_CATEGORY, stacked_feature
from spark_app.cli import setup_logging
from spark_app.config import load_settings
from spark_app.dataset import build_dataset, dataset_id_for, read_dataset
from spark_app.horizons import horizon_frame
from spark_app.layout import MANIFEST, dataset_dir
from spark_app.models import Learner, log_link
from spark_app.months import parse_month
from spark_app.registry import load_release
from spark_app.session import get_spark
from spark_app.storage import Storage
from spark_app.training import train_release

log = logging.getLogger("bench_train")


def plain_predict(learner: Learner, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Baseline: each model on its own pandas DataFrame (categoricals as str), stacked the same way."""
    frame = frame.copy()
    out = {}
    for entry in learner.entries:
        model = learner.models[entry.model_id]
        _, categorical = learner.catalog.layout(entry)
        x = frame[list(model.feature_names_)].copy()
        for c in categorical:
            x[c] = x[c].astype("string").fillna(NULL_CATEGORY).astype(str)
        if entry.is_survival:
            out[entry.model_id] = model.predict_proba(x, thread_count=learner.thread_count)[:, 1]
            frame[stacked_feature(entry.model_id)] = out[entry.model_id]
        else:
            kind = "Exponent" if log_link(entry) else "RawFormulaVal"
            out[entry.model_id] = model.predict(x, prediction_type=kind, thread_count=learner.thread_count)
    return out


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", default="work/bench/panel-1m")
    parser.add_argument("--target-end", default="2026-04")
    parser.add_argument("--workdir", default="work/bench/train")
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--max-rows", type=int, default=None, help="training.max_rows_per_model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict-subscribers", type=int, default=20_000)
    parser.add_argument("--out", default="work/bench/bench_train.json")
    args = parser.parse_args()
    setup_logging()

    work = Path(args.workdir).resolve()
    run_dir = work / time.strftime("run-%Y%m%d-%H%M%S")
    overrides = {
        "paths": {
            "features": f"{args.panel}/features",
            "facts": f"{args.panel}/facts",
            "datasets": str(work / "datasets"),
        },
        "mlflow": {
            "tracking_uri": f"sqlite:///{run_dir / 'mlflow.db'}",
            "artifact_location": str(run_dir / "mlartifacts"),
        },
        "dataset": {"sample_rate": args.sample_rate},
    }
    if args.max_rows:
        overrides["training"] = {"max_rows_per_model": args.max_rows}
    settings = load_settings(Path("conf/local.yaml"), overrides=overrides)
    run_dir.mkdir(parents=True, exist_ok=True)

    spark = get_spark(settings.spark)
    target_end = parse_month(args.target_end)
    dataset_id = dataset_id_for(settings, target_end)
    storage = Storage(spark)
    build_seconds = None
    if storage.exists(f"{dataset_dir(settings.paths, dataset_id)}/{MANIFEST}"):
        log.info("reusing training set %s", dataset_id)
    else:
        start = time.perf_counter()
        build_dataset(spark, settings, target_end)
        build_seconds = time.perf_counter() - start

    start = time.perf_counter()
    info = train_release(spark, settings, dataset_id)
    train_seconds = time.perf_counter() - start

    release = load_release(settings, str(info.version))
    learner = release.learner()
    fit = release.manifest["fit"]
    for model_id, r in fit.items():
        log.info(
            "fit %-9s %8s rows, best iteration %4s, %6.1fs",
            model_id,
            f"{r['rows']:,}",
            r["best_iteration"],
            r["seconds"],
        )

    # prediction: Learner vs plain per-model DataFrames, same rows, same run
    _, _, splits = read_dataset(spark, settings, dataset_id)
    cols = [c for c in settings.models.catalog().input_columns()]
    subs = splits["oot"].select("feature_month", *cols).limit(args.predict_subscribers).toPandas()
    months = pd.to_datetime(subs["feature_month"])
    frame = horizon_frame(subs, (months.dt.year * 12 + months.dt.month - 1).to_numpy(), list(range(1, 25)))
    ours = learner.predict(frame, calibrated=False)  # the models' own outputs, as the baseline gives
    base = plain_predict(learner, frame)
    max_diff = max(float(np.max(np.abs(ours[m] - base[m]))) for m in ours)
    learner_s = timed(lambda: learner.predict(frame, calibrated=False), args.repeats)
    plain_s = timed(lambda: plain_predict(learner, frame), args.repeats)
    ratio = statistics.median(plain_s) / statistics.median(learner_s)
    log.info(
        "predict %s rows x %d models: Learner median %.2fs, plain DataFrame median %.2fs -> %.2fx faster "
        "(max |difference| %.2e)",
        f"{len(frame):,}",
        len(ours),
        statistics.median(learner_s),
        statistics.median(plain_s),
        ratio,
        max_diff,
    )

    figures = {
        "panel": args.panel,
        "dataset_id": dataset_id,
        "sample_rate": args.sample_rate,
        "max_rows_per_model": settings.training.max_rows_per_model,
        "thread_count": settings.training.thread_count,
        "build_dataset_seconds": build_seconds,
        "train_release_seconds": round(train_seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in info.seconds.items()},
        "fit": fit,
        "quality_oot": info.quality,
        "predict": {
            "rows": len(frame),
            "learner_seconds": learner_s,
            "plain_dataframe_seconds": plain_s,
            "median_ratio_plain_over_learner": round(ratio, 2),
            "max_abs_difference": max_diff,
        },
        "release_version": info.version,
        "mlflow": settings.mlflow.tracking_uri,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str))
    log.info("train_release %.0fs total; figures in %s", train_seconds, out)
    quality = pd.DataFrame(info.quality)
    if len(quality):
        log.info("OOT quality:\n%s", quality.to_string(index=False))


if __name__ == "__main__":
    main()
