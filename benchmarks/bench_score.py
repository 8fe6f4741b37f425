"""Scoring at CatBoost's own speed? The monthly job against CatBoost alone, for two kinds of release.

    .venv/bin/python benchmarks/bench_score.py --panel work/bench/panel-1m --month 2026-04 \\
        --sizes 250000,1000000 --repeats 3

Two real releases trained here on the 1M panel (training set ending the month before): the default,
early-stopped one, and the same with early stopping off (600 trees per model). In one run, on local[2],
for each release and month size (a month of N subscribers is built from the panel's last three months,
ids suffixed so they are distinct subscribers):

  (a) `score_month`'s job stages (check inputs + score and write: the job minus loading the release and
      logging to MLflow), median of --repeats, and the peak RSS of the Python workers and the driver;
  (b) CatBoost alone on ALL the month's horizon rows (N × 24 × the release's models): the same models,
      2 threads, one process, no Spark — from prebuilt Pools (the limit), and from pandas frames (CatBoost
      converting them itself); the regressors get the survival outputs, as they do in the job;
  (c) the usual way, at --udf-subscribers: horizons exploded in Spark, one `mlflow.pyfunc.spark_udf` per
      model, survival outputs fed on;

and, at the largest size with the early-stopped release, the monthly DAG's Spark steps — validate-inputs →
score --detail → validate-output → monitor → report — beside `score --detail` alone. Fixed cost per
subscriber = (job stages − CatBoost alone from Pools) / N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import yaml
from pyspark.sql import functions as F

from spark_app import batch, tracking
from spark_app.cli import setup_logging
from spark_app.config import SparkConfig, load_settings
from spark_app.layout import workdir_layers
from spark_app.months import add_months, month_index, parse_month
from spark_app.session import get_spark

log = logging.getLogger("bench_score")
ROOT = Path(__file__).resolve().parent.parent
HORIZONS = 24
# profile overrides: "full" trains every model to its 600 iterations (no early stopping, no best-model cut)
RELEASES = {"early": {}, "full": {"fit_params": {"early_stopping_rounds": None, "use_best_model": False}}}


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

    def __init__(self, every: float = 0.5, root: int | None = None):
        self.every = every
        self.root = root  # the driver: this process, or a `cltv score` started by the benchmark
        names = ("driver_python_mb", "driver_jvm_mb", "worker_max_mb", "workers_sum_mb")
        self.peak = dict.fromkeys(names, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = self.root or os.getpid()
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

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# ---------------------------------------------------------------- settings, releases, months
def bench_settings(panel: str, work: Path, inputs: Path | None = None, **sections: dict):
    """The embedded default pointed at the bench panel (or a built month), with the bench's own outputs."""
    source = inputs or Path(panel)
    overrides = {
        **workdir_layers(work, source),
        "spark": {"master": "local[2]"},
        **sections,
    }
    return load_settings(ROOT / "conf" / "local.yaml", overrides=overrides, environ={})


def ensure_releases(spark, panel: str, work: Path, month: dt.date) -> dict[str, int]:
    """The two releases, trained on the panel for the target window ending the month before `month`,
    registered under the aliases bench-early / bench-full (reused when present)."""
    from spark_app.dataset import build_dataset
    from spark_app.training import train_release

    settings = bench_settings(panel, work)
    mlflow = tracking.client(settings.mlflow)
    name = settings.mlflow.model_name
    versions: dict[str, int] = {}
    dataset_id = None
    for kind, override in RELEASES.items():
        try:
            versions[kind] = int(mlflow.get_model_version_by_alias(name, f"bench-{kind}").version)
            continue
        except Exception:  # not trained yet
            pass
        profiles = {e.model_id: override for e in settings.models.catalog()}
        kind_settings = bench_settings(panel, work, models={"profiles": profiles}) if override else settings
        if dataset_id is None:
            dataset_id = build_dataset(spark, settings, add_months(month, -1)).dataset_id
        started = time.perf_counter()
        info = train_release(spark, kind_settings, dataset_id)
        log.info("release %s: v%s trained in %.0fs", kind, info.version, time.perf_counter() - started)
        mlflow.set_registered_model_alias(name, f"bench-{kind}", str(info.version))
        versions[kind] = info.version
    return versions


def synthetic_month(spark, panel: str, month: dt.date, subscribers: int, out: Path) -> int:
    """`out`/features (and facts) holding month `month` (and, for the DAG's backtest, the month before)
    with about `subscribers` distinct subscribers: the panel's month m, m−1 and m−2 with ids suffixed."""
    done = out / "_DONE"
    if done.exists():
        return int(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    share = None
    for table in ("features", "facts"):
        source = spark.read.parquet(f"{panel}/{table}")
        for target in (add_months(month, -1), month):
            parts = []
            for k, suffix in enumerate(("", "-b", "-c")):
                m = add_months(target, -k)
                parts.append(
                    source.where(F.col("report_month") == F.lit(m))
                    .drop("report_month")
                    .withColumn("subscriber_id", F.concat(F.col("subscriber_id"), F.lit(suffix)))
                )
            pool = parts[0].unionByName(parts[1]).unionByName(parts[2])
            if share is None:
                share = min(1.0, subscribers / pool.count())
            picked = pool.where(
                F.pmod(F.xxhash64("subscriber_id", F.lit("bench")), F.lit(1_000_000)) < int(share * 1e6)
            )
            path = out / table / f"report_month={target:%Y-%m-%d}"
            picked.repartition(max(4, subscribers // 100_000)).write.mode("overwrite").parquet(str(path))
    n = spark.read.parquet(str(out / "features" / f"report_month={month:%Y-%m-%d}")).count()
    done.write_text(str(n))
    return n


# ---------------------------------------------------------------- (b) CatBoost alone
def catboost_alone(settings, version: int, features_dir: Path, month: dt.date, repeats: int) -> dict:
    """Predict every horizon row of the month with the release's models, 2 threads: prebuilt Pools and
    pandas frames, in chunks of 100k subscribers (all rows, no scaling); survival outputs stacked in."""
    from spark_app.registry import load_release
    from spark_app.scoring import make_plan

    release = load_release(settings, str(version))
    learner = release.learner()
    learner.thread_count = 2
    plan = make_plan(settings, release.manifest, release.version, "bench", month, detail=False)
    features = pd.read_parquet(features_dir)
    catalog = learner.catalog
    pool_s = [0.0] * repeats
    frame_s = [0.0] * repeats
    chunk = 100_000
    for start in range(0, len(features), chunk):
        part = features.iloc[start : start + chunk].reset_index(drop=True)
        builder = batch.horizon_rows(batch.inputs_from_pandas(part, plan), plan)
        raw = learner.predict(builder, calibrated=False)  # fills p_<id> for the regressors
        for entry in catalog:
            layout = catalog.layout(entry)
            pool = builder.pool(layout)
            frame = builder.matrix(layout)
            model = learner.models[entry.model_id]
            kind = "Probability" if entry.is_survival else "RawFormulaVal"
            for r in range(repeats):
                t = time.perf_counter()
                model.predict(pool, prediction_type=kind, thread_count=2)
                pool_s[r] += time.perf_counter() - t
                t = time.perf_counter()
                model.predict(frame, prediction_type=kind, thread_count=2)
                frame_s[r] += time.perf_counter() - t
        del builder, raw
    n_pred = len(features) * HORIZONS * len(learner.models)
    return {
        "subscribers": len(features),
        "predictions": n_pred,
        "pool_seconds": round(statistics.median(pool_s), 2),
        "pandas_seconds": round(statistics.median(frame_s), 2),
        "pool_predictions_per_s": round(n_pred / statistics.median(pool_s)),
        "pandas_predictions_per_s": round(n_pred / statistics.median(frame_s)),
    }


# ---------------------------------------------------------------- (c) the usual way
def udf_baseline(
    spark, settings, version: int, panel: str, month: dt.date, subscribers: int, work: Path
) -> dict:
    """Horizons exploded in Spark, one mlflow.pyfunc.spark_udf per model, survival outputs fed on."""
    import mlflow
    from catboost import CatBoostClassifier, CatBoostRegressor

    from spark_app.models import log_link
    from spark_app.registry import load_release

    release = load_release(settings, str(version))
    catalog = release.learner().catalog
    model_dir = work / "pyfunc"
    shutil.rmtree(model_dir, ignore_errors=True)

    class CatBoostScore(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            spec = json.loads(Path(context.artifacts["spec"]).read_text())
            self.proba = spec["kind"] == "classification"
            self.model = CatBoostClassifier() if self.proba else CatBoostRegressor()
            self.model.load_model(context.artifacts["cbm"])
            self.kind = "Exponent" if spec["log_link"] else "RawFormulaVal"

        def predict(self, context, model_input, params=None):
            if self.proba:
                return self.model.predict_proba(model_input)[:, 1]
            return self.model.predict(model_input, prediction_type=self.kind)

    uris = {}
    for entry in catalog:
        src = work / "cbm" / entry.model_id
        src.mkdir(parents=True, exist_ok=True)
        (src / "model.cbm").write_bytes(release.files[f"{entry.model_id}.cbm"])
        (src / "spec.json").write_text(json.dumps({"kind": entry.kind, "log_link": log_link(entry)}))
        path = model_dir / entry.model_id
        mlflow.pyfunc.save_model(
            str(path),
            python_model=CatBoostScore(),
            artifacts={"cbm": str(src / "model.cbm"), "spec": str(src / "spec.json")},
        )
        uris[entry.model_id] = str(path)
    features = spark.read.parquet(f"{panel}/features").where(F.col("report_month") == F.lit(month))
    features = features.where(F.rand(5) < subscribers / features.count())
    n = features.count()
    rows = features.withColumn("horizon", F.explode(F.sequence(F.lit(1), F.lit(HORIZONS))))
    rows = rows.withColumn("target_calendar_month", ((F.lit(month_index(month)) + F.col("horizon")) % 12 + 1))
    for entry in catalog:
        udf = mlflow.pyfunc.spark_udf(spark, uris[entry.model_id], result_type="double", env_manager="local")
        num, cats = catalog.layout(entry)
        out = f"p_{entry.model_id}" if entry.is_survival else f"pred_{entry.model_id}"
        rows = rows.withColumn(out, udf(F.struct(*[F.col(c) for c in (*num, *cats)])))
    start = time.perf_counter()
    outputs = [f"p_{e.model_id}" if e.is_survival else f"pred_{e.model_id}" for e in catalog]
    rows.select("subscriber_id", "horizon", *outputs).write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - start
    n_pred = n * HORIZONS * len(catalog.ids)
    return {"subscribers": n, "predictions": n_pred, "seconds": round(seconds, 1),
            "predictions_per_s": round(n_pred / seconds)}  # fmt: skip


# ---------------------------------------------------------------- (a) the job, and the DAG
def job_stages(summary) -> float:
    return summary.seconds.get("check inputs", 0.0) + summary.seconds["score and write"]


def score_runs(spark, settings, version: int, month: dt.date, repeats: int, detail: bool = False) -> dict:
    from spark_app.scoring import score_month

    seconds, summary = [], None
    with MemorySampler() as mem:
        for _ in range(repeats):
            summary = score_month(spark, settings, month, release=str(version), detail=detail)
            seconds.append(job_stages(summary))
    return {
        "subscribers": summary.rows,
        "job_stages_seconds": [round(s, 2) for s in seconds],
        "job_stages_median": round(statistics.median(seconds), 2),
        "peak_memory_mb": {k: round(v) for k, v in mem.peak.items()},
    }


def monthly_dag(spark, settings, version: int, month: dt.date) -> dict:
    """The DAG's Spark steps in order, timed one by one; the month before is scored first (untimed) so
    the backtest has forecasts to compare."""
    from spark_app.monitoring import monitor_month
    from spark_app.monthly import validate_inputs, validate_output
    from spark_app.registry import promote
    from spark_app.report import build_report
    from spark_app.scoring import score_month

    promote(settings, version=version)  # monitor and report read the champion's reference and metrics
    score_month(spark, settings, add_months(month, -1), release=str(version), detail=True)
    steps: dict[str, float] = {}

    def step(name, fn):
        t = time.perf_counter()
        fn()
        steps[name] = round(time.perf_counter() - t, 2)

    step("validate-inputs", lambda: validate_inputs(spark, settings, month))
    step("score --detail", lambda: score_month(spark, settings, month, release=str(version), detail=True))
    step("validate-output", lambda: validate_output(spark, settings, month))
    step("monitor", lambda: monitor_month(spark, settings, month))
    step("report", lambda: build_report(spark, settings, month))
    return {"steps_seconds": steps, "dag_seconds": round(sum(steps.values()), 1)}


# ---------------------------------------------------------------- (d) the job as Argo runs it
def env_conf(work: Path, features: Path, release_work: Path) -> Path:
    """A conf directory (the packaged base layers beside an environment file) for a fresh `cltv score`:
    inputs from `features`' panel, outputs in `work`, the releases' MLflow store of `release_work`."""
    conf_dir = work / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for layer in ("base.yaml", "models.yaml"):
        shutil.copy(ROOT / "conf" / layer, conf_dir / layer)
    layers = workdir_layers(work, features)
    layers["mlflow"] = workdir_layers(release_work, features)["mlflow"]
    env = {**layers, "spark": {"master": "local[2]"}}
    (conf_dir / "bench.yaml").write_text(yaml.safe_dump(env))
    return conf_dir / "bench.yaml"


def fresh_score(conf: Path, month: dt.date, version: int) -> dict:
    """One `cltv score` in a new process, as Argo and an engineer run it: the job's own stage total (its
    closing line's `; N.Ns total`, process start-up excluded), the process's wall time, the workers'
    time by step, and the peak RSS of its driver, JVM and Python workers."""
    from spark_app.scoring import SUMMARY_TOTAL

    cmd = [str(Path(sys.executable).with_name("cltv")), "score", "--conf", str(conf),
           "--month", f"{month:%Y-%m}", "--release", str(version)]  # fmt: skip
    started = time.perf_counter()
    with open(conf.parent / "score.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        with MemorySampler(every=0.25, root=proc.pid) as memory:
            code = proc.wait()
    wall = time.perf_counter() - started
    text = (conf.parent / "score.log").read_text()
    total = SUMMARY_TOTAL.search(text)
    if code != 0 or total is None:
        raise RuntimeError(f"cltv score failed ({code}):\n{text[-3000:]}")
    steps = re.search(r"worker time by step: (.*)", text)
    return {
        "job_total_s": float(total["seconds"]),
        "process_wall_s": round(wall, 2),
        "stages": re.search(r"s total \((.*)\)", text)[1],
        "worker_steps": steps[1] if steps else "",
        "peak_memory_mb": {k: round(v) for k, v in memory.peak.items()},
    }


def fresh_runs(args: argparse.Namespace, spark, panel: str, work: Path, versions: dict[str, int]) -> dict:
    """Per release and month (--fresh-months NAME=FEATURES_PANEL:YYYY-MM): `cltv score` in fresh processes
    (median of --repeats) against CatBoost alone on the same month (prebuilt Pools, 2 threads)."""
    out: dict = {}
    for item in args.fresh_months.split(","):
        name, spec = item.split("=", 1)
        source, month_text = spec.rsplit(":", 1)
        features = (ROOT / source).resolve()
        month = parse_month(month_text)
        for kind, version in versions.items():
            run_work = work / f"fresh-{name}-{kind}"
            conf = env_conf(run_work, features, work)
            runs = [fresh_score(conf, month, version) for _ in range(args.repeats)]
            total = statistics.median(r["job_total_s"] for r in runs)
            settings = bench_settings(str(features), work)
            month_dir = features / "features" / f"report_month={month:%Y-%m-%d}"
            alone = catboost_alone(settings, version, month_dir, month, args.alone_repeats)
            n = alone["subscribers"]
            figures = {
                "subscribers": n,
                "runs": runs,
                "job_total_median_s": round(total, 2),
                "catboost_alone_s": alone["pool_seconds"],
                "ratio_alone_over_job": round(alone["pool_seconds"] / total, 3),
                "fixed_cost_us_per_subscriber": round(1e6 * (total - alone["pool_seconds"]) / n, 2),
            }
            out[f"{name}/{kind}"] = figures
            log.info("fresh %s / %s release: %s", name, kind, json.dumps(figures))
    return out


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--panel", default="work/bench/panel-1m")
    parser.add_argument("--month", default="2026-04")
    parser.add_argument("--sizes", default="250000,1000000")
    parser.add_argument("--work", default="work/bench/score")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alone-repeats", type=int, default=1)
    parser.add_argument("--udf-subscribers", type=int, default=10_000)
    parser.add_argument("--skip-dag", action="store_true")
    parser.add_argument("--dag-only", action="store_true", help="only the monthly DAG beside score alone")
    parser.add_argument("--result", default="work/bench/bench_score.json")
    parser.add_argument(
        "--fresh-months",
        default="",
        help="NAME=PANEL:YYYY-MM,...: only `cltv score` in fresh processes on these months (e.g. "
        "m335k=work/bench/gen-500k:2025-08), against CatBoost alone",
    )
    args = parser.parse_args()
    setup_logging()
    month = parse_month(args.month)
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    panel = str((ROOT / args.panel).resolve())
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="6g", shuffle_partitions=8))
    versions = ensure_releases(spark, panel, work, month)
    if args.fresh_months:
        result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "releases": versions}
        result["fresh"] = fresh_runs(args, spark, panel, work, versions)
        Path(args.result).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result).write_text(json.dumps(result, indent=2, default=str))
        for key, figures in result["fresh"].items():
            log.info("%-22s %9s subscribers: job %.1f s, CatBoost alone %.1f s → %.2f, fixed %.1f µs",
                     key, f"{figures['subscribers']:,}", figures["job_total_median_s"],
                     figures["catboost_alone_s"], figures["ratio_alone_over_job"],
                     figures["fixed_cost_us_per_subscriber"])  # fmt: skip
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    result: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"local[2], {os.cpu_count()} cores",
        "releases": {},
    }
    for kind, version in ({} if args.dag_only else versions).items():
        from spark_app.registry import load_release

        settings = bench_settings(panel, work)
        trees = {m: r["tree_count"] for m, r in load_release(settings, str(version)).manifest["fit"].items()}
        entry: dict = {"version": version, "trees": trees, "sizes": {}}
        for size in sizes:
            inputs = work / f"month-{size}"
            n = synthetic_month(spark, panel, month, size, inputs)
            sized = bench_settings(panel, work, inputs)
            run = score_runs(spark, sized, version, month, args.repeats)
            alone = catboost_alone(sized, version, inputs / "features" / f"report_month={month:%Y-%m-%d}",
                                   month, args.alone_repeats)  # fmt: skip
            run.update(
                input_rows=n,
                catboost_alone=alone,
                ratio_alone_pool_over_job=round(alone["pool_seconds"] / run["job_stages_median"], 3),
                ratio_alone_pandas_over_job=round(alone["pandas_seconds"] / run["job_stages_median"], 3),
                fixed_cost_us_per_subscriber=round(
                    1e6 * (run["job_stages_median"] - alone["pool_seconds"]) / run["subscribers"], 1
                ),
                job_predictions_per_s=round(alone["predictions"] / run["job_stages_median"]),
            )
            entry["sizes"][size] = run
            log.info("%s release, %s subscribers: %s", kind, size, json.dumps(run))
        small, big = entry["sizes"][sizes[0]], entry["sizes"][sizes[-1]]
        entry["wall_scaling"] = round(big["job_stages_median"] / small["job_stages_median"], 2)
        entry["size_scaling"] = round(big["subscribers"] / small["subscribers"], 2)
        result["releases"][kind] = entry
    if not args.dag_only:
        settings = bench_settings(panel, work)
        udf = udf_baseline(spark, settings, versions["early"], panel, month, args.udf_subscribers, work)
        result["spark_udf"] = udf
        for entry in result["releases"].values():
            big = entry["sizes"][sizes[-1]]
            entry["ratio_job_over_udf"] = round(big["job_predictions_per_s"] / udf["predictions_per_s"], 1)
    if not args.skip_dag:
        inputs = work / f"month-{sizes[-1]}"
        if not inputs.exists():
            synthetic_month(spark, panel, month, sizes[-1], inputs)
        sized = bench_settings(panel, work, inputs)
        alone = score_runs(spark, sized, versions["early"], month, args.repeats, detail=True)
        dag = monthly_dag(spark, sized, versions["early"], month)
        dag["score_detail_alone_median"] = alone["job_stages_median"]
        dag["ratio_dag_over_score"] = round(dag["dag_seconds"] / alone["job_stages_median"], 2)
        result["monthly_dag"] = dag
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2, default=str))
    log.info("result: %s", json.dumps(result, default=str))


if __name__ == "__main__":
    main()
