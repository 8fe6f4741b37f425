"""Scoring throughput: `cltv score` end to end against CatBoost's own predict and the usual Spark UDF way.

    .venv/bin/python benchmarks/bench_score.py --panel work/bench/panel-1m --month 2026-04

In one run, on local[2], with one real-size release (the profiles of conf/models.yaml: 8 models,
iterations 600, depth 6, trained here without early stopping so every model has its full 600 trees):

  (a) `score_month` end to end (validation, scoring, CLTV, staged write, summary) on months of 250k, 500k
      and 1M subscribers: predictions/s = subscribers × 24 horizons × 8 models / wall time;
  (b) CatBoost's own `predict` in this process, 2 threads, no Spark, same models and horizon rows, on a
      subsample scaled to predictions/s — from a prebuilt Pool (the pure limit) and from a pandas frame
      (CatBoost's own conversion included);
  (c) the usual way: horizons exploded in Spark, one `mlflow.pyfunc.spark_udf` per model (survival first,
      their outputs fed to the regressors), on a subsample, as predictions/s.

Also peak RSS of the driver (Python and JVM) and of the Python workers, sampled from /proc during (a).
The 1M-subscriber month is built from the panel's last three months (ids suffixed so they are distinct
subscribers), since a month of the 1M panel holds ~450k subscribers in the base.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from spark_app.cli import setup_logging
from spark_app.config import ALL_MODELS, AMOUNT_MODELS, SparkConfig, load_settings
from spark_app.months import add_months, days_in_month_index, month_index, parse_month
from spark_app.session import get_spark

log = logging.getLogger("bench_score")
ROOT = Path(__file__).resolve().parent.parent
HORIZONS = 24
FACT_OF = {"paid": "in_paid_base", "active": "in_active_base", **{m: m for m in AMOUNT_MODELS}}


# ---------------------------------------------------------------- /proc memory sampling
def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class MemorySampler:
    """Peak RSS of this driver process, its JVM, and the Python workers below the JVM."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.peak = {
            "driver_python_mb": 0.0,
            "driver_jvm_mb": 0.0,
            "worker_max_mb": 0.0,
            "workers_sum_mb": 0.0,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        kids = _children()
        jvms = [p for p in kids.get(me, []) if "java" in _cmd(p)]
        workers: list[int] = []
        todo = [c for j in jvms for c in kids.get(j, [])]
        while todo:
            pid = todo.pop()
            if "python" in _cmd(pid):
                workers.append(pid)
            todo.extend(kids.get(pid, []))
        rss = {p: _rss_mb(p) for p in workers}
        values = {
            "driver_python_mb": _rss_mb(me),
            "driver_jvm_mb": sum(_rss_mb(j) for j in jvms),
            "worker_max_mb": max(rss.values(), default=0.0),
            "workers_sum_mb": sum(rss.values()),
        }
        for k, v in values.items():
            self.peak[k] = max(self.peak[k], v)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# ---------------------------------------------------------------- settings
def bench_settings(panel: str, work: Path, features: Path):
    """The embedded default pointed at the bench panel, with the bench's own scores and MLflow store."""
    return load_settings(
        ROOT / "conf" / "local.yaml",
        overrides={
            "paths": {"features": str(features), "facts": f"{panel}/facts", "scores": str(work / "scores")},
            "mlflow": {
                "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
                "artifact_location": str(work / "mlartifacts"),
            },
            "spark": {"master": "local[2]"},
        },
        environ={},
    )


# ---------------------------------------------------------------- inputs
def month_of_size(spark, panel: str, month: dt.date, subscribers: int, out: Path) -> int:
    """A features table holding one month of about `subscribers` distinct subscribers."""
    path = out / "features" / f"report_month={month:%Y-%m-%d}"
    if (path / "_SUCCESS").exists():
        return spark.read.parquet(str(path)).count()
    features = spark.read.parquet(f"{panel}/features")
    parts = []
    for k, suffix in enumerate(("", "-b", "-c")):
        m = add_months(month, -k)
        parts.append(
            features.where(F.col("report_month") == F.lit(m))
            .drop("report_month")
            .withColumn("subscriber_id", F.concat(F.col("subscriber_id"), F.lit(suffix)))
        )
    pool = parts[0].unionByName(parts[1]).unionByName(parts[2])
    available = pool.count()
    share = min(1.0, subscribers / available)
    picked = pool.where(
        F.pmod(F.xxhash64("subscriber_id", F.lit("bench")), F.lit(1_000_000)) < int(share * 1e6)
    )
    picked.repartition(max(4, subscribers // 100_000)).write.mode("overwrite").parquet(str(path))
    return spark.read.parquet(str(path)).count()


def training_frames(spark, panel: str, month: dt.date, rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A horizon-lagged sample (features at F, facts at F+h) from the panel, split for stacking."""
    last_feature = add_months(month, -HORIZONS - 1)
    features = spark.read.parquet(f"{panel}/features").where(
        (F.col("report_month") >= F.lit(add_months(last_feature, -11)))
        & (F.col("report_month") <= F.lit(last_feature))
    )
    total = features.count()
    sample = features.where(F.rand(3) < min(1.0, rows / max(total, 1)))
    sample = sample.withColumn(
        "horizon", (F.pmod(F.xxhash64("subscriber_id", "report_month"), F.lit(HORIZONS)) + 1).cast("int")
    )
    sample = sample.withColumn("target_month", F.expr("add_months(report_month, horizon)"))
    facts = spark.read.parquet(f"{panel}/facts").withColumnRenamed("report_month", "target_month")
    joined = sample.join(facts, ["subscriber_id", "target_month"], "left").toPandas()
    target = joined["target_month"].map(month_index).to_numpy()
    joined["target_calendar_month"] = target % 12 + 1
    days = days_in_month_index(target)
    for model_id, col in FACT_OF.items():
        values = joined[col].fillna(0.0).to_numpy(dtype=np.float64)
        joined[f"{model_id}_fact"] = values if model_id in ("paid", "active") else values / days
    half = joined["subscriber_id"].str[-1].astype(int) % 2 == 0
    return joined[half].reset_index(drop=True), joined[~half].reset_index(drop=True)


def ensure_release(spark, settings, panel: str, month: dt.date, rows: int) -> int:
    """The benchmark's release: real profiles, full 600 trees, registered in the bench MLflow store."""
    from spark_app.models import Learner
    from spark_app.registry import ReleaseNotFoundError, load_release, log_release, model_input
    from spark_app.training import Evaluation, categories_seen

    try:
        return load_release(settings, "challenger").version
    except ReleaseNotFoundError:
        pass
    surv, reg = training_frames(spark, panel, month, rows)
    log.info("training the bench release on %d + %d rows", len(surv), len(reg))
    learner = Learner.from_settings(settings).fit(surv, reg)
    learner.meta = {
        "horizons": list(range(1, HORIZONS + 1)),
        "dataset_id": "bench-score",
        "categories": categories_seen([surv, reg], list(settings.models.categorical)),
    }
    work = Path(settings.paths.scores).parent / "release-build"
    shutil.rmtree(work, ignore_errors=True)
    bundle = learner.save_bundle(work / "bundle")
    (work / "evaluation").mkdir(parents=True)
    evaluation = Evaluation(
        table=pd.DataFrame(
            columns=["model_id", "kind", "split", "horizon", "rows", "metric", "value", "naive"]
        ),
        calibration={},
        deciles=pd.DataFrame(),
        quality=pd.DataFrame(columns=["model_id", "metric", "value", "naive", "beats_naive"]),
    )
    version, _ = log_release(
        settings,
        learner=learner,
        bundle_dir=bundle,
        evaluation_dir=work / "evaluation",
        evaluation=evaluation,
        rows={"train_surv": len(surv), "train_reg": len(reg)},
        input_example=model_input(reg, learner),
    )
    return version


# ---------------------------------------------------------------- (b) CatBoost alone
def catboost_alone(settings, features: pd.DataFrame, month: dt.date, repeats: int) -> dict[str, float]:
    """CatBoost predict on the horizon rows of `features`, 2 threads, one process: Pool and DataFrame."""
    from catboost import Pool

    from spark_app.registry import load_release
    from spark_app.scoring import horizon_frame, make_plan

    release = load_release(settings, "challenger")
    learner = release.learner()
    plan = make_plan(settings, release.manifest, release.version, "bench", month, detail=False)
    frame = horizon_frame(features, plan)
    stacked = learner.predict(frame)  # the survival outputs the regressors read
    frame = frame.assign(p_paid=stacked["paid"], p_active=stacked["active"])
    # object (string) categoricals, as a user of CatBoost would hand them over
    frame_obj = frame.assign(**{c: frame[c].astype(object) for c in plan.categorical})
    pool_s, df_s = [], []
    for _ in range(repeats):
        pool_t = df_t = 0.0
        for spec in learner.specs.values():
            model = learner.models[spec.model_id]
            x = frame_obj[[*spec.numeric_cols, *spec.cat_features]]  # the Learner's matrix layout
            kind = "Probability" if spec.kind == "classification" else "RawFormulaVal"
            pool = Pool(x, cat_features=list(spec.cat_features))
            start = time.perf_counter()
            model.predict(pool, prediction_type=kind, thread_count=2)
            pool_t += time.perf_counter() - start
            start = time.perf_counter()
            model.predict(x, prediction_type=kind, thread_count=2)
            df_t += time.perf_counter() - start
        pool_s.append(pool_t)
        df_s.append(df_t)
    n_pred = len(frame) * len(learner.models)
    return {
        "subscribers": len(features),
        "predictions": n_pred,
        "pool_seconds_median": statistics.median(pool_s),
        "dataframe_seconds_median": statistics.median(df_s),
        "pool_predictions_per_s": n_pred / statistics.median(pool_s),
        "dataframe_predictions_per_s": n_pred / statistics.median(df_s),
    }


# ---------------------------------------------------------------- (c) the usual way
def udf_baseline(spark, settings, features_path: str, month: dt.date, subscribers: int, work: Path) -> dict:
    """Horizons exploded in Spark, one mlflow.pyfunc.spark_udf per model, survival outputs fed on."""
    import mlflow
    from catboost import CatBoostClassifier, CatBoostRegressor

    from spark_app.registry import load_release

    release = load_release(settings, "challenger")
    manifest = release.manifest
    model_dir = work / "pyfunc"
    shutil.rmtree(model_dir, ignore_errors=True)

    class CatBoostScore(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            kind = json.loads(Path(context.artifacts["spec"]).read_text())["kind"]
            self.model = CatBoostClassifier() if kind == "classification" else CatBoostRegressor()
            self.model.load_model(context.artifacts["cbm"])
            self.proba = kind == "classification"

        def predict(self, context, model_input, params=None):
            if self.proba:
                return self.model.predict_proba(model_input)[:, 1]
            return self.model.predict(model_input)

    uris = {}
    for model_id, entry in manifest["models"].items():
        src = work / "cbm" / model_id
        src.mkdir(parents=True, exist_ok=True)
        (src / "model.cbm").write_bytes(release.files[entry["file"]])
        (src / "spec.json").write_text(json.dumps(entry))
        path = model_dir / model_id
        mlflow.pyfunc.save_model(
            str(path),
            python_model=CatBoostScore(),
            artifacts={"cbm": str(src / "model.cbm"), "spec": str(src / "spec.json")},
        )
        uris[model_id] = str(path)
    features = spark.read.parquet(features_path).where(F.col("report_month") == F.lit(month))
    total = features.count()
    features = features.where(F.rand(5) < subscribers / total)
    n = features.count()
    rows = features.withColumn("horizon", F.explode(F.sequence(F.lit(1), F.lit(HORIZONS))))
    rows = rows.withColumn("target_calendar_month", ((F.lit(month_index(month)) + F.col("horizon")) % 12 + 1))
    order = [m for m in ALL_MODELS if m in manifest["models"]]
    for model_id in order:
        udf = mlflow.pyfunc.spark_udf(spark, uris[model_id], result_type="double", env_manager="local")
        entry = manifest["models"][model_id]
        cats = entry["cat_features"]
        cols = [c for c in entry["feature_cols"] if c not in cats] + cats  # the Learner's matrix layout
        out = {"paid": "p_paid", "active": "p_active"}.get(model_id, f"pred_{model_id}")
        rows = rows.withColumn(out, udf(F.struct(*[F.col(c) for c in cols])))
    start = time.perf_counter()
    rows.select(
        "subscriber_id", "horizon", "p_paid", "p_active", *[f"pred_{m}" for m in order[2:]]
    ).write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - start
    return {
        "subscribers": n,
        "predictions": n * HORIZONS * len(order),
        "seconds": seconds,
        "predictions_per_s": n * HORIZONS * len(order) / seconds,
    }


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--panel", default="work/bench/panel-1m")
    parser.add_argument("--month", default="2026-04")
    parser.add_argument("--sizes", default="250000,500000,1000000")
    parser.add_argument("--work", default="work/bench/score")
    parser.add_argument("--train-rows", type=int, default=60_000)
    parser.add_argument("--alone-subscribers", type=int, default=20_000)
    parser.add_argument("--udf-subscribers", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--result", default="work/bench/bench_score.json")
    args = parser.parse_args()
    setup_logging()
    month = parse_month(args.month)
    work = (ROOT / args.work).resolve() if not Path(args.work).is_absolute() else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    panel = str((ROOT / args.panel).resolve())
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="6g", shuffle_partitions=8))

    base_settings = bench_settings(panel, work, Path(panel) / "features")
    started = time.perf_counter()
    version = ensure_release(spark, base_settings, panel, month, args.train_rows)
    train_s = time.perf_counter() - started
    log.info("release v%s ready (%.0fs)", version, train_s)

    from spark_app.scoring import score_month

    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    for size in sizes:
        inputs = work / f"inputs-{size}"
        n = month_of_size(spark, panel, month, size, inputs)
        settings = bench_settings(panel, work, inputs / "features")
        with MemorySampler() as mem:
            start = time.perf_counter()
            summary = score_month(spark, settings, month, release="challenger")
            wall = time.perf_counter() - start
        preds = summary.rows * HORIZONS * 8
        runs.append(
            {
                "subscribers": summary.rows,
                "input_rows": n,
                "wall_seconds": round(wall, 1),
                "stage_seconds": {k: round(v, 1) for k, v in summary.seconds.items()},
                "predictions_per_s": round(preds / wall),
                "scoring_stage_predictions_per_s": round(preds / summary.seconds["score and write"]),
                "peak_memory_mb": {k: round(v) for k, v in mem.peak.items()},
            }
        )
        log.info("(a) %s", runs[-1])

    sample = (
        spark.read.parquet(str(work / f"inputs-{sizes[0]}" / "features"))
        .limit(args.alone_subscribers)
        .toPandas()
    )
    alone = catboost_alone(base_settings, sample, month, args.repeats)
    log.info("(b) %s", alone)
    udf = udf_baseline(spark, base_settings, f"{panel}/features", month, args.udf_subscribers, work)
    log.info("(c) %s", udf)

    biggest = max(runs, key=lambda r: r["subscribers"])
    smallest = min(runs, key=lambda r: r["subscribers"])
    a = biggest["predictions_per_s"]
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"local[2], {os.cpu_count()} cores (shared with other jobs: figures are noisy)",
        "release_version": version,
        "models": 8,
        "horizons": HORIZONS,
        "trees_per_model": 600,
        "depth": 6,
        "runs": runs,
        "a_end_to_end_predictions_per_s": a,
        "b_catboost_alone": alone,
        "c_spark_udf": udf,
        "ratio_a_over_b_pool": round(a / alone["pool_predictions_per_s"], 3),
        "ratio_a_over_b_dataframe": round(a / alone["dataframe_predictions_per_s"], 3),
        "ratio_a_over_c": round(a / udf["predictions_per_s"], 2),
        "scaling_wall_ratio": round(biggest["wall_seconds"] / smallest["wall_seconds"], 2),
        "scaling_size_ratio": round(biggest["subscribers"] / smallest["subscribers"], 2),
        "release_build_seconds": round(train_s, 1),
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2))
    log.info("result: %s", json.dumps(result))


if __name__ == "__main__":
    main()
